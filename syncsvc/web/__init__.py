"""The status pages of `syncsvc serve`: runs, a run's units, trends, consumers and now.

Read-only HTML rendered on the server (jinja2 with autoescaping on every template, charts as
inline SVG from pygal); nothing is loaded from outside the service and no page runs a script, so
the pages work air-gapped and a Content-Security-Policy forbids scripts outright. With a
`status_page_token` the pages require it (HTTP Basic password, or `Authorization: Bearer`);
/healthz and /metrics stay open for probes and scrapers.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import inspect
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

import jinja2
from aiohttp import web
from croniter import croniter
from sqlalchemy.ext.asyncio import AsyncEngine

from syncsvc import logs
from syncsvc.settings import Settings
from syncsvc.vocab import RunStatus, UnitStatus
from syncsvc.web import charts, queries

# What the Now page asks for health: serve's judgement (sync or async), (healthy, reason).
HealthFn = Callable[[], tuple[bool, str] | Awaitable[tuple[bool, str]]]
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

# No scripts at all; styles are inline (one <style> per page, pygal's inside its SVG).
CSP = (
    "default-src 'none'; style-src 'unsafe-inline'; img-src 'self' data:; "
    "base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)

# A status's word on the pages (base.html colours each by its `s-<status>` class); run and unit
# statuses from syncsvc/vocab.py, then the feed consumers'.
STATUS_WORDS: dict[str, str] = {
    **{s: s.value for s in RunStatus},
    **{s: s.value for s in UnitStatus},
    "active": "active",
    "failing": "failing",
    "paused": "paused",
}

# Why a run ended as it did, in an operator's words (the details come from its units).
STATUS_MEANING = {
    RunStatus.PARTIAL: "some units failed; the others applied",
    RunStatus.HELD: "a unit would delete too much; that scope was not applied",
    RunStatus.FAILED: "the run stopped",
    RunStatus.INTERRUPTED: "stopped by a signal; units not committed were cancelled",
    RunStatus.ABANDONED: "the process died mid-run",
}

OVERRIDE_COMMAND = "syncsvc run --override-hold"


def _environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.PackageLoader("syncsvc.web", "templates"),
        autoescape=True,  # every template, whatever its name: API values may carry markup
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters.update(
        when=_when,
        ago=_ago,
        age=_age,
        duration=_duration,
        num=_num,
        size=_size,
        pct=lambda v: f"{v * 100:.1f}%",
        redact=logs.redact,
    )
    env.globals.update(
        STATUS_WORDS=STATUS_WORDS,
        STATUS_MEANING=STATUS_MEANING,
        OVERRIDE_COMMAND=OVERRIDE_COMMAND,
    )
    return env


def _when(value: datetime | None) -> str:
    if value is None:
        return "–"
    return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S")


def _age(value: datetime | None) -> str:
    if value is None:
        return "–"
    return _duration((datetime.now(UTC) - value).total_seconds())


def _ago(value: datetime | None) -> str:
    return "–" if value is None else _age(value) + " ago"


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "–"
    if seconds < 10:
        return f"{seconds:.1f} s"
    s = round(seconds)
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60} min {s % 60:02d} s"
    if s < 86400:
        return f"{s // 3600} h {s % 3600 // 60:02d} min"
    return f"{s // 86400} d {s % 86400 // 3600} h"


def _num(value: int | None) -> str:
    return "–" if value is None else f"{value:,}"


def _size(n: int | None) -> str:
    if not n:
        return "–"
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    raise AssertionError("unreachable")


class Pages:
    """The handlers, bound to one engine, the settings and serve's health."""

    def __init__(self, engine: AsyncEngine, settings: Settings, health: HealthFn) -> None:
        self.engine = engine
        self.settings = settings
        self.health = health
        self.env = _environment()
        # The charts are a pure function of the window's finished runs, whose figures never
        # change: re-drawn (a few hundred ms of pygal) only when a run enters or leaves it.
        self._charts: tuple[tuple[int, int, int], list[charts.Chart]] | None = None

    def render(self, template: str, **context: Any) -> web.Response:
        html = self.env.get_template(template).render(
            environment=self.settings.environment, **context
        )
        return web.Response(text=html, content_type="text/html", charset="utf-8")

    async def runs(self, request: web.Request) -> web.Response:
        before = _int_param(request, "before")
        async with self.engine.connect() as conn:
            rows = await queries.latest_runs(conn, before=before)
        older = rows[-1].id if len(rows) == queries.RUNS_PER_PAGE else None
        return self.render("runs.html", page="runs", runs=rows, before=before, older=older)

    async def run(self, request: web.Request) -> web.Response:
        run_id = _int_param(request, "run_id", match=True)
        async with self.engine.connect() as conn:
            row = await queries.run(conn, run_id) if run_id is not None else None
            if row is None:
                raise web.HTTPNotFound(text=f"no run {run_id}\n")
            units = await queries.run_units(conn, row.id)
        held = [(u, h) for u in units for h in u.held]
        return self.render(
            "run.html",
            page="runs",
            run=row,
            units=units,
            held=held,
            # The threshold the run was held at (runs record it); older runs: today's setting.
            ratio=float(row.options.get("delete_hold_ratio", self.settings.delete_hold_ratio)),
            min_rows=int(
                row.options.get("delete_hold_min_rows", self.settings.delete_hold_min_rows)
            ),
            overridden=[(u, h) for u in units for h in u.overridden],
            sampled=[u for u in units if u.samples],
        )

    async def trends(self, _: web.Request) -> web.Response:
        async with self.engine.connect() as conn:
            points = await queries.trend(conn)
        key = (len(points), points[0].id, points[-1].id) if points else (0, 0, 0)
        if self._charts is None or self._charts[0] != key:
            self._charts = (key, charts.trend_charts(points) if points else [])
        return self.render(
            "trends.html",
            page="trends",
            points=points,
            days=queries.TREND_DAYS,
            charts=self._charts[1],
            merged=len(points) > charts.MAX_POINTS,
        )

    async def consumers(self, _: web.Request) -> web.Response:
        async with self.engine.connect() as conn:
            rows = await queries.consumers(conn)
        return self.render("consumers.html", page="consumers", consumers=rows)

    async def now(self, _: web.Request) -> web.Response:
        async with self.engine.connect() as conn:
            running = await queries.running_run(conn)
            progress = await queries.unit_progress(conn, running.id) if running else []
            in_flight = await queries.running_units(conn, running.id) if running else []
            last = await queries.last_finished_run(conn)
        verdict = self.health()
        healthy, reason = await verdict if inspect.isawaitable(verdict) else verdict
        next_run = croniter(self.settings.schedule, datetime.now(UTC)).get_next(datetime)
        return self.render(
            "now.html",
            page="now",
            running=running,
            progress=progress,
            in_flight=in_flight,
            last=last,
            healthy=healthy,
            reason=reason,
            schedule=self.settings.schedule,
            next_run=next_run,
            next_in=(next_run - datetime.now(UTC)).total_seconds(),
        )


def _int_param(request: web.Request, name: str, *, match: bool = False) -> int | None:
    raw = request.match_info.get(name) if match else request.query.get(name)
    if raw is None or raw == "":
        return None
    try:
        value = int(raw)
    except ValueError:
        raise web.HTTPBadRequest(text=f"{name} must be a whole number\n") from None
    if not 0 < value < 2**63:
        raise web.HTTPBadRequest(text=f"{name} is out of range\n")
    return value


def authorized(header: str, token: str) -> bool:
    """Whether an Authorization header carries the token (Bearer, or Basic with any user)."""
    scheme, _, value = header.partition(" ")
    given = ""
    if scheme.lower() == "bearer":
        given = value.strip()
    elif scheme.lower() == "basic":
        try:
            decoded = base64.b64decode(value.strip(), validate=True).decode("utf-8")
        except (binascii.Error, UnicodeDecodeError):
            return False
        given = decoded.partition(":")[2]  # any user name; the password is the token
    return bool(given) and hmac.compare_digest(given.encode(), token.encode())


def _guard(handler: Handler, token: str | None) -> Handler:
    """The page's headers on every answer, and the token check when one is configured."""

    async def guarded(request: web.Request) -> web.StreamResponse:
        if token is not None and not authorized(request.headers.get("Authorization", ""), token):
            response: web.StreamResponse = web.Response(
                status=401,
                text="this page needs the status page token\n",
                headers={"WWW-Authenticate": 'Basic realm="syncsvc", charset="UTF-8"'},
            )
        else:
            try:
                response = await handler(request)
            except web.HTTPException as exc:  # 400/404: plain text, with the same headers
                response = web.Response(status=exc.status, text=exc.text)
        response.headers["Content-Security-Policy"] = CSP
        response.headers["X-Content-Type-Options"] = "nosniff"
        response.headers["Referrer-Policy"] = "no-referrer"
        response.headers["Cache-Control"] = "no-store"
        return response

    return guarded


def register(
    app: web.Application, engine: AsyncEngine, settings: Settings, health: HealthFn
) -> None:
    """Add the pages to serve's app: `/`, `/runs/{id}`, `/trends`, `/consumers`, `/now`."""
    pages = Pages(engine, settings, health)
    token = settings.status_page_token or None
    for path, handler in (
        ("/", pages.runs),
        ("/runs/{run_id}", pages.run),
        ("/trends", pages.trends),
        ("/consumers", pages.consumers),
        ("/now", pages.now),
    ):
        app.router.add_get(path, _guard(handler, token))
