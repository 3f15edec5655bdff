"""A multi-day simulated account for the status pages: real runs of the simulator into a database.

Eight runs, one per simulated day (the last two on the same day):

  day 0 succeeded · day 1 succeeded · day 2 partial (one event's exhibitors answer HTTP 500) ·
  day 3 succeeded · day 4 held (the hold threshold lowered to 1%, so the simulator's ordinary daily
  deletes trip it) · day 5 interrupted · day 6 succeeded · day 6 again through a proxy that puts
  `<script>` into every user's `type_business` custom value (succeeded: updates only)

The interrupted run is a real run stopped after its first unit (the scheduler's `stop` event, as
SIGTERM sets it); the scheduler itself records it `interrupted`, its other units not started.

The runs take seconds; afterwards each run's timestamps (runs, fetches, changes) move back to its
simulated day, so the Trends page spans days the way a real account's history does.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import aiohttp
import asyncpg
from aiohttp import web
from sqlalchemy.engine import URL
from sqlalchemy.ext.asyncio import AsyncEngine

from syncsvc import scheduler, serve
from syncsvc import web as status_pages
from syncsvc.metrics import Metrics
from syncsvc.settings import Settings
from syncsvc.simulator import RunningSimulator, SimConfig
from syncsvc.store import db

CONFIG = SimConfig(
    seed=16,
    events=5,
    users_per_event=50,
    sessions_per_event=8,
    exhibitors_per_event=5,
    update_rate=0.08,
    delete_rate=0.04,
    insert_rate=0.05,
    recreate_rate=0.02,
    big_event_every=3,
    new_event_every=3,
)
SCRIPT = "<script>window.__pwned=1</script>"
_TYPE_BUSINESS = re.compile(rb"<type_business>[^<]*</type_business>")
_PAYLOAD = b"<type_business>&lt;script&gt;window.__pwned=1&lt;/script&gt;</type_business>"


@dataclass(frozen=True, slots=True)
class Scenario:
    runs: dict[str, int]  # "ok0", "partial", "held", "interrupted", "script", ... -> run id
    failing_event: str  # the event whose exhibitors failed in the partial run


def settings_for(base_url: str, **over: Any) -> Settings:
    base = Settings.load({})
    return base.replace(
        base_url=base_url,
        api_token="sim-account-token",
        retry_base_delay=0.01,
        retry_max_delay=0.05,
        retry_attempts=2,
        rate_limit=500.0,
        max_concurrency=4,
        **over,
    )


@contextlib.asynccontextmanager
async def script_proxy(sim: RunningSimulator) -> AsyncIterator[str]:
    """A loopback proxy in front of the simulator that rewrites every user's type_business
    custom value to a `<script>` element (escaped in the XML, as an API would send it).
    Yields the base URL to sync from."""
    session = aiohttp.ClientSession()

    async def forward(request: web.Request) -> web.Response:
        body = await request.read()
        async with session.post(
            sim.root_url + request.path_qs,
            data=body,
            headers={"Content-Type": request.headers.get("Content-Type", "")},
        ) as resp:
            data = await resp.read()
            content_type = resp.headers.get("Content-Type", "text/xml")
            status = resp.status
        if request.path.endswith("userData.do"):
            data = _TYPE_BUSINESS.sub(_PAYLOAD, data)
        return web.Response(body=data, status=status, headers={"Content-Type": content_type})

    app = web.Application()
    app.router.add_post("/{tail:.*}", forward)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        port = runner.addresses[0][1]
        yield sim.base_url.replace(sim.root_url, f"http://127.0.0.1:{port}")
    finally:
        await runner.cleanup()
        await session.close()


async def build(sim: RunningSimulator, engine: AsyncEngine, url: URL) -> Scenario:
    """Run the eight runs against `sim` into the database behind `engine`/`url`."""
    runs: dict[str, int] = {}
    settings = settings_for(sim.base_url)

    async def day(name: str, n: int, expect: str, **kw: Any) -> scheduler.RunResult:
        sim.set_day(n)
        result = await scheduler.run_once(kw.pop("settings", settings), engine, **kw)
        assert result.status == expect, (name, result.status, result.error)
        runs[name] = result.run_id
        return result

    await day("ok0", 0, "succeeded")
    await day("ok1", 1, "succeeded")
    events = sorted(g for g, _ in sim.universe.snapshot(2)["event"])
    failing = events[0]
    await sim.control(
        {
            "faults": [
                {
                    "resource": "exhibitorData.do",
                    "event": failing,
                    "kind": "http_status",
                    "value": 500,
                    "times": None,
                }
            ]
        }
    )
    await day("partial", 2, "partial")
    await sim.control({"clear_faults": True})
    await day("ok3", 3, "succeeded")
    await day("held", 4, "held", settings=settings.replace(delete_hold_ratio=0.01))

    stop = asyncio.Event()
    await day(
        "interrupted",
        5,
        "interrupted",
        settings=settings.replace(max_concurrency=1),
        stop=stop,
        on_unit=lambda _: stop.set(),
    )
    await day("ok6", 6, "succeeded")
    async with script_proxy(sim) as proxied:
        await day("script", 6, "succeeded", settings=settings_for(proxied))

    conn = await asyncpg.connect(db.libpq_url(url))
    try:
        await _backdate(conn, runs)
    finally:
        await conn.close()
    return Scenario(runs=runs, failing_event=failing)


async def _backdate(conn: asyncpg.Connection, runs: dict[str, int]) -> None:
    """Move each run back to its simulated day: day n is (7 - n) days ago, at 02:00 UTC."""
    shifts = {
        "ok0": 7,
        "ok1": 6,
        "partial": 5,
        "ok3": 4,
        "held": 3,
        "interrupted": 2,
        "ok6": 1,
        "script": 1,
    }
    for name, days in shifts.items():
        run_id = runs[name]
        hours = 2 if name != "script" else 5
        delta = (
            f"(SELECT date_trunc('day', now()) - interval '{days} days' + interval '{hours} hours'"
        )
        delta += " - started_at FROM runs WHERE id = $1)"
        await conn.execute(
            f"""
WITH d AS (SELECT {delta} AS shift)
UPDATE fetches f SET started_at = f.started_at + d.shift, finished_at = f.finished_at + d.shift
FROM d WHERE f.run_id = $1
""",
            run_id,
        )
        await conn.execute(
            f"UPDATE changes SET captured_at = captured_at + {delta} WHERE run_id = $1", run_id
        )
        await conn.execute(
            f"""
WITH d AS (SELECT {delta} AS shift)
UPDATE runs r SET started_at = r.started_at + d.shift, finished_at = r.finished_at + d.shift
FROM d WHERE r.id = $1
""",
            run_id,
        )


@contextlib.asynccontextmanager
async def pages_server(
    engine: AsyncEngine,
    settings: Settings,
    health: serve.Health | None = None,
) -> AsyncIterator[str]:
    """serve's app (make_app with the status pages hooked in) on a loopback port; yields its URL."""
    health = health or serve.Health(engine, settings.schedule, 0.0, 3600.0)

    def pages(app: web.Application, h: serve.Health) -> None:
        status_pages.register(app, engine, settings, h.check)

    app = serve.make_app(health, Metrics(), pages=pages)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        yield f"http://127.0.0.1:{runner.addresses[0][1]}"
    finally:
        await runner.cleanup()


Waiter = Callable[[], Awaitable[bool]]
