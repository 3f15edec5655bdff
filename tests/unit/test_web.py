"""The status pages' pure parts: the token check, the figures' formatting, the charts' SVG."""

from __future__ import annotations

import base64
from datetime import UTC, datetime, timedelta

import pytest
from lxml import etree

from syncsvc import web
from syncsvc.web import charts
from syncsvc.web.queries import TrendPoint

TOKEN = "s3cret-page-token"


def _basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


@pytest.mark.parametrize(
    ("header", "ok"),
    [
        (f"Bearer {TOKEN}", True),
        (f"bearer {TOKEN}", True),
        (_basic("anyone", TOKEN), True),
        (_basic("", TOKEN), True),
        ("", False),
        ("Bearer ", False),
        (f"Bearer {TOKEN}x", False),
        (_basic(TOKEN, "nope"), False),  # the token as the user name is not the password
        ("Basic not-base64!", False),
        ("Basic " + base64.b64encode(b"\xff\xfe:x").decode(), False),
        (f"Token {TOKEN}", False),
    ],
)
def test_only_the_configured_token_opens_the_pages(header: str, ok: bool) -> None:
    assert web.authorized(header, TOKEN) is ok


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (None, "–"),
        (0.34, "0.3 s"),
        (42.4, "42 s"),
        (61, "1 min 01 s"),
        (3600 * 5 + 60 * 7, "5 h 07 min"),
        (86400 * 2 + 3600 * 3, "2 d 3 h"),
    ],
)
def test_durations_read_as_an_operator_says_them(seconds: float | None, text: str) -> None:
    assert web._duration(seconds) == text


def test_sizes_and_counts() -> None:
    assert web._size(0) == "–"
    assert web._size(848) == "848 B"
    assert web._size(1536) == "1.5 KiB"
    assert web._size(5 * 1024**3) == "5.0 GiB"
    assert web._num(1234567) == "1,234,567"


def test_every_template_escapes_what_it_is_given() -> None:
    env = web._environment()
    html = env.from_string("<td>{{ v }}</td>").render(v="<script>x()</script>")
    assert html == "<td>&lt;script&gt;x()&lt;/script&gt;</td>"


def test_trend_charts_are_plain_svg_without_script_or_outside_references() -> None:
    now = datetime(2026, 11, 30, 2, tzinfo=UTC)
    points = [
        TrendPoint(i, "succeeded", now - timedelta(days=30 - i), 90.0 + i, 1000 + i, i, 2 * i, 3, 0)
        for i in range(30)
    ]
    rendered = charts.trend_charts(points)
    assert [c.title for c in rendered] == ["Changes per run", "Records per run", "Run duration"]
    for chart in rendered:
        tree = etree.fromstring(str(chart.svg).encode())
        tags = {el.tag.rpartition("}")[2] for el in tree.iter() if isinstance(el.tag, str)}
        assert "script" not in tags
        refs = [
            v
            for el in tree.iter()
            for k, v in el.attrib.items()
            if k.rpartition("}")[2] in ("href", "src")
        ]
        assert all(not r.startswith(("http", "//")) for r in refs)
    assert "minutes" not in str(rendered[2].svg)  # runs under two minutes are charted in seconds
