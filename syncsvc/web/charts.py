"""The Trends page's charts: pygal line charts over time, rendered to inline SVG on the server.

pygal writes a small configuration <script> into every SVG for its optional tooltips; it is
removed here (the pages run no script, and their Content-Security-Policy forbids one), so the
charts are plain SVG with a <title> per point for the browser's own tooltip.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import pygal
from lxml import etree
from markupsafe import Markup
from pygal.style import Style

from syncsvc.web.queries import TrendPoint

# pygal appends an import hook for its map plugins (pygal.maps.*) that has only the old
# find_module: every later import that reaches it raises ImportWarning on Python 3.11 (an error
# under the tests' filterwarnings) and it does nothing on 3.12. No map is used here: take it out.
sys.meta_path[:] = [f for f in sys.meta_path if type(f).__module__ != "pygal"]

BLUE, GREEN, RED, PURPLE = "#2563eb", "#16a34a", "#dc2626", "#7c3aed"


def _style(*colors: str) -> Style:
    return Style(
        background="white",
        plot_background="white",
        foreground="#1f2933",
        foreground_strong="#1f2933",
        foreground_subtle="#9aa5b1",
        font_family="system-ui, -apple-system, 'Segoe UI', sans-serif",
        label_font_size=12,
        major_label_font_size=12,
        legend_font_size=13,
        guide_stroke_color="#e4e7eb",
        guide_stroke_dasharray="0",
        major_guide_stroke_color="#e4e7eb",
        major_guide_stroke_dasharray="0",
        stroke_width=2,
        colors=colors,
    )


@dataclass(frozen=True, slots=True)
class Chart:
    title: str
    note: str
    svg: Markup


def _day_labels(points: Sequence[TrendPoint]) -> list[datetime]:
    """Midnights across the points' span, at most 10 of them: ticks that fall on whole days."""
    first = points[0].started_at.astimezone(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    last = points[-1].started_at.astimezone(UTC)
    days = max(1, (last - first).days + 1)
    step = -(-days // 10)
    return [first + timedelta(days=d) for d in range(0, days + 1, step)]


def _line(
    points: Sequence[TrendPoint],
    series: dict[str, Callable[[TrendPoint], float]],
    colors: tuple[str, ...],
) -> Markup:
    chart = pygal.DateTimeLine(
        width=1160,
        height=300,
        style=_style(*colors),
        js=[],
        show_dots=len(points) <= 60,
        dots_size=3,
        x_value_formatter=lambda d: d.strftime("%b %d"),
        x_label_rotation=0,
        truncate_label=-1,
        show_legend=len(series) > 1,
        legend_at_bottom=True,
        legend_at_bottom_columns=len(series),
        x_labels=_day_labels(points),
        min_scale=3,
        max_scale=6,
        margin=8,
        spacing=12,
        disable_xml_declaration=True,
        explicit_size=False,
    )
    chart.config.css = [*chart.config.css]  # pygal's own file:// styles, inlined by render
    for name, value in series.items():
        chart.add(name, [_point(p, value(p)) for p in points])
    tree = chart.render_tree()
    if not isinstance(tree, etree._Element):  # pygal uses lxml whenever it is installed
        raise TypeError("pygal rendered without lxml")
    # pygal's tooltip configuration script and its credit comments (links to its site) go.
    for node in list(tree.iter()):
        name = node.tag if isinstance(node.tag, str) else ""
        if name.rpartition("}")[2] == "script" or isinstance(node, etree._Comment):
            parent = node.getparent()
            if parent is not None:
                parent.remove(node)
    svg = etree.tostring(tree, encoding="unicode")
    # The SVG is pygal's, from numbers and our own labels: nothing from the API reaches it.
    return Markup(svg)  # noqa: S704


def _point(p: TrendPoint, value: float) -> tuple[datetime, float]:
    return (p.started_at, value)


MAX_POINTS = 180  # a point every ~6 px of a 1160 px chart: more would draw nothing new


def bucketed(points: Sequence[TrendPoint], limit: int = MAX_POINTS) -> list[TrendPoint]:
    """At most `limit` points: consecutive runs merged, each figure the largest of its runs,
    so a spike (a jump in deletes, a slow run) survives the merge instead of being averaged."""
    if len(points) <= limit:
        return list(points)
    size = -(-len(points) // limit)
    out = []
    for i in range(0, len(points), size):
        group = points[i : i + size]
        out.append(
            TrendPoint(
                id=group[-1].id,
                status=group[-1].status,
                started_at=group[0].started_at,
                seconds=max((p.seconds or 0.0) for p in group),
                records=max(p.records for p in group),
                inserted=max(p.inserted for p in group),
                updated=max(p.updated for p in group),
                deleted=max(p.deleted for p in group),
                rekeyed=max(p.rekeyed for p in group),
            )
        )
    return out


def trend_charts(runs: Sequence[TrendPoint]) -> list[Chart]:
    """The three charts of the Trends page, from the window's runs (oldest first)."""
    points = bucketed(runs)
    return [
        Chart(
            "Changes per run",
            "inserts, updates, deletes and rekeys written to the change log by each run",
            _line(
                points,
                {
                    "inserts": lambda p: p.inserted,
                    "updates": lambda p: p.updated,
                    "deletes": lambda p: p.deleted,
                    "rekeys": lambda p: p.rekeyed,
                },
                (GREEN, BLUE, RED, PURPLE),
            ),
        ),
        Chart(
            "Records per run",
            "records in the dumps each run read (every resource, every event)",
            _line(points, {"records": lambda p: p.records}, (BLUE,)),
        ),
        _duration_chart(points),
    ]


def _duration_chart(points: Sequence[TrendPoint]) -> Chart:
    longest = max((p.seconds or 0.0) for p in points)
    unit, per = ("minutes", 60.0) if longest >= 120 else ("seconds", 1.0)
    return Chart(
        "Run duration",
        f"{unit} from each run's start to its end",
        _line(points, {unit: lambda p: round((p.seconds or 0.0) / per, 2)}, (PURPLE,)),
    )
