"""End to end: the simulator over loopback, a real PostgreSQL, the scheduler and the CLI.

The database is compared with the simulator's ground truth (`Universe.snapshot`), read back
through the catalog's column names here in the test, not through the store's own readers.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import signal
import subprocess
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager, AbstractContextManager
from typing import Any

import asyncpg
import pytest
from sqlalchemy.engine import URL
from sqlalchemy.ext.asyncio import AsyncEngine

from syncsvc import scheduler
from syncsvc.catalog import RESOURCES, FieldKind
from syncsvc.errors import InvalidTokenError, IpNotAllowedError
from syncsvc.metrics import Metrics
from syncsvc.settings import Settings
from syncsvc.simulator import SimConfig
from syncsvc.store import db
from tests.processes import cli_env, serve_port, started

pytestmark = pytest.mark.db

SimFactory = Callable[..., AbstractAsyncContextManager[Any]]

# A full account in small: big and small events, all three resources, every kind of change.
CONFIG = SimConfig(
    seed=11,
    events=6,
    users_per_event=60,
    sessions_per_event=8,
    exhibitors_per_event=4,
    update_rate=0.1,
    delete_rate=0.04,
    insert_rate=0.05,
    recreate_rate=0.03,
    big_event_every=3,
    new_event_every=2,
)


def _cli(
    url: URL, sim: Any, *args: str, **env: str
) -> AbstractContextManager[subprocess.Popen[str]]:
    """`python -m syncsvc ARGS` against the test's database and simulator (see `started`)."""
    serving = {
        "SYNCSVC_LOG_FORMAT": "json",
        "SYNCSVC_SERVE_PORT": "0",
        "SYNCSVC_SERVE_HOST": "127.0.0.1",
    }
    return started(cli_env(url, sim.base_url, **(serving | env)), *args)


def _settings(sim: Any, **over: Any) -> Settings:
    base = Settings.load({})
    return base.replace(
        base_url=sim.base_url,
        api_token="sim-account-token",
        retry_base_delay=0.01,
        retry_max_delay=0.05,
        retry_attempts=3,
        rate_limit=200.0,
        max_concurrency=4,
        **over,
    )


def _typed(kind: FieldKind, value: Any) -> Any:
    if value is None:
        return None
    if kind is FieldKind.CUSTOM:
        return json.loads(value) if isinstance(value, str) else value
    if kind is FieldKind.REFS:
        return list(value)
    if kind is FieldKind.DATETIME:
        return value.astimezone(dt.UTC)
    return value


async def _db_state(url: URL) -> dict[str, dict[tuple[str, str], dict[str, Any]]]:
    """entity -> {(event_guid, key): typed record} of the live rows, read with plain SQL."""
    conn = await asyncpg.connect(db.libpq_url(url))
    try:
        out: dict[str, dict[tuple[str, str], dict[str, Any]]] = {}
        for r in RESOURCES:
            cols = ", ".join(f.column for f in r.fields)
            rows = await conn.fetch(f"SELECT {cols} FROM {r.table} WHERE deleted_at IS NULL")
            out[r.entity] = {
                (row["event_guid"], row[r.key_field.column]): _present(
                    {f.api: _typed(f.kind, row[f.column]) for f in r.fields}
                )
                for row in rows
            }
        return out
    finally:
        await conn.close()


def _present(record: dict[str, Any]) -> dict[str, Any]:
    """A record without its null fields: absent and null are the same "no value"."""
    return {k: v for k, v in record.items() if v is not None}


def _truth(universe: Any, day: int) -> dict[str, Any]:
    return {
        entity: {key: _present(rec) for key, rec in recs.items()}
        for entity, recs in universe.snapshot(day).items()
    }


async def _run(settings: Settings, engine: AsyncEngine, **kw: Any) -> scheduler.RunResult:
    return await scheduler.run_once(settings, engine, **kw)


async def test_a_full_account_equals_the_ground_truth_after_each_day(
    simulator: SimFactory, engine: AsyncEngine, db_url: URL
) -> None:
    async with simulator(CONFIG) as sim:
        settings = _settings(sim)
        seen_ops: set[str] = set()
        for day in range(4):
            sim.set_day(day)
            result = await _run(settings, engine)
            assert result.status == "succeeded", result.error
            assert await _db_state(db_url) == _truth(sim.universe, day)
            seen_ops |= {op for (_, op), n in result.totals().items() if n}
        assert seen_ops == {"inserted", "updated", "deleted", "rekeyed"}
        # event=all for users and sessions, per event for exhibitors (the catalog says no).
        scopes = {(o.unit.resource.entity, str(o.unit.scope)) for o in result.outcomes}
        assert ("user", "all") in scopes
        assert ("session", "all") in scopes
        assert not any(e == "exhibitor" and s == "all" for e, s in scopes)


async def test_event_all_refused_falls_back_to_per_event_with_the_same_state(
    simulator: SimFactory, engine: AsyncEngine, db_url: URL
) -> None:
    async with simulator(CONFIG) as sim:
        await sim.control(
            {
                "faults": [
                    {
                        "resource": "userData.do",
                        "event": "all",
                        "kind": "api_code",
                        "value": 104,
                        "times": None,
                    },
                ]
            }
        )
        result = await _run(_settings(sim), engine)
        assert result.status == "succeeded", result.error
        users = [o for o in result.outcomes if o.unit.resource.entity == "user"]
        assert [o.status for o in users if o.unit.event == "all"] == ["superseded"]
        per_event = [o for o in users if o.unit.event not in (None, "all")]
        assert len(per_event) == len(sim.universe.snapshot(0)["event"])
        assert await _db_state(db_url) == _truth(sim.universe, 0)


async def test_fallback_units_run_as_many_at_once_as_the_budget_has_places(
    simulator: SimFactory, engine: AsyncEngine, db_url: URL
) -> None:
    async with simulator(CONFIG) as sim:
        guids = sorted(g for g, _ in sim.universe.snapshot(0)["event"])
        assert len(guids) > 4
        refused = {
            "resource": "userData.do",
            "event": "all",
            "kind": "api_code",
            "value": 104,
            "times": None,
        }
        # Four per-event units stay in flight until released: the run's only planned unit is
        # the refused event=all one, so they are in flight together only if the units that
        # replace it share the run's four places.
        held = [
            {"resource": "userData.do", "event": g, "kind": "hold", "times": 1} for g in guids[:4]
        ]
        await sim.control({"faults": [refused, *held]})
        run = asyncio.create_task(_run(_settings(sim, resources=("users",)), engine))
        async with asyncio.timeout(120):  # reached only by a failure: never four at once
            await sim.wait_in_flight(4)
        await sim.control({"release": True})
        result = await run
        assert result.status == "succeeded", result.error
        users = [o for o in result.outcomes if o.unit.resource.entity == "user"]
        assert [o.status for o in users if o.unit.event == "all"] == ["superseded"]
        assert len(users) == len(guids) + 1


async def test_one_event_failing_leaves_its_state_and_the_next_run_completes_it(
    simulator: SimFactory, engine: AsyncEngine, db_url: URL
) -> None:
    async with simulator(CONFIG) as sim:
        settings = _settings(sim, use_event_all=False)
        assert (await _run(settings, engine)).status == "succeeded"
        day0 = await _db_state(db_url)
        bad = sorted(g for g, _ in sim.universe.snapshot(0)["event"])[1]
        sim.set_day(1)
        await sim.control(
            {
                "faults": [
                    {
                        "resource": "userData.do",
                        "event": bad,
                        "kind": "http_status",
                        "value": 500,
                        "times": None,
                    },
                ]
            }
        )
        result = await _run(settings, engine)
        assert result.status == "partial"
        assert result.exit_code == 3
        failed = [o for o in result.outcomes if o.status == "failed"]
        assert [(o.unit.resource.entity, o.unit.event) for o in failed] == [("user", bad)]
        state = await _db_state(db_url)
        truth = _truth(sim.universe, 1)
        # The failed event keeps its day-0 users; every other scope is at day 1.
        assert {k: v for k, v in state["user"].items() if k[0] == bad} == {
            k: v for k, v in day0["user"].items() if k[0] == bad
        }
        assert {k: v for k, v in state["user"].items() if k[0] != bad} == {
            k: v for k, v in truth["user"].items() if k[0] != bad
        }
        for entity in ("event", "session", "exhibitor"):
            assert state[entity] == truth[entity]
        await sim.control({"clear_faults": True})
        assert (await _run(settings, engine)).status == "succeeded"
        assert await _db_state(db_url) == truth


@pytest.mark.parametrize(
    ("control", "error", "words"),
    [
        ({}, InvalidTokenError, "token"),
        ({"allow_list": ["10.255.255.0/24"]}, IpNotAllowedError, "allow-listed"),
    ],
)
async def test_bad_token_or_ip_stops_the_run_at_once_without_retries(
    simulator: SimFactory,
    engine: AsyncEngine,
    control: dict[str, Any],
    error: type,
    words: str,
) -> None:
    async with simulator(CONFIG) as sim:
        if control:
            await sim.control(control)
        token = "not-a-token" if not control else "sim-account-token"
        settings = _settings(sim).replace(api_token=token, retry_attempts=5)
        await sim.reset_stats()
        with pytest.raises(error) as info:
            await _run(settings, engine)
        assert words in str(info.value)
        assert "\n" not in str(info.value)
        stats = await sim.stats()
        assert stats["total_requests"] == 1  # event.do once: no retry storm, no fan-out


def _hold(resource: str) -> dict[str, Any]:
    """Park the next request for `resource` until the test releases it (`{"release": true}`)."""
    return {"resource": resource, "event": "*", "kind": "hold", "times": 1}


async def _until(probe: Callable[[], Any]) -> None:
    """Poll a state probe (a plain or async callable) until it is true."""
    while True:
        found = probe()
        if asyncio.iscoroutine(found):
            found = await found
        if found:
            return
        await asyncio.sleep(0.02)


async def _held(sim: Any) -> None:
    """Until the simulator has taken its single-use hold fault: that request is parked."""
    await _until(lambda: not any(f.kind == "hold" for f in sim.simulator.faults))


async def _lock_waiters(url: URL) -> int:
    """Sessions waiting for the run lock (a `run --wait` queued behind another run)."""
    key = scheduler.RUN_LOCK_KEY
    conn = await asyncpg.connect(db.libpq_url(url))
    try:
        n = await conn.fetchval(
            "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted"
            " AND objsubid = 1 AND classid::bigint = $1 AND objid::bigint = $2",
            key >> 32,
            key & 0xFFFF_FFFF,
        )
    finally:
        await conn.close()
    return int(n)


async def test_a_second_concurrent_run_refuses_with_exit_5(
    simulator: SimFactory, db_url: URL
) -> None:
    async with simulator(CONFIG) as sim:
        # The first run parks in its users fetch, holding the run lock, until released.
        await sim.control({"faults": [_hold("userData.do")]})
        with _cli(db_url, sim, "run") as first:
            await _held(sim)
            with _cli(db_url, sim, "run") as second:
                rc, _, err = await asyncio.to_thread(_communicate, second)
            assert rc == 5, err
            assert "holds this database; wait for it or pass --wait" in err
            assert len(err.strip().splitlines()) == 1
            await sim.control({"release": True})
            rc, _, err = await asyncio.to_thread(_communicate, first)
            assert rc == 0, err


def _communicate(proc: subprocess.Popen[str]) -> tuple[int, str, str]:
    out, err = proc.communicate(timeout=300)
    return proc.returncode, out, err


async def _wait_for_run_row(url: URL, status: str = "running") -> int:
    conn = await asyncpg.connect(db.libpq_url(url))
    try:
        while True:
            run_id = await conn.fetchval("SELECT id FROM runs WHERE status = $1", status)
            if run_id:
                return int(run_id)
            await asyncio.sleep(0.05)
    finally:
        await conn.close()


async def test_serve_sigterm_mid_run_exits_0_and_the_next_run_is_consistent(
    simulator: SimFactory, engine: AsyncEngine, db_url: URL
) -> None:
    async with simulator(CONFIG) as sim:
        await sim.control({"faults": [_hold("userData.do")]})
        # One unit at a time: the units after the parked one have not started at SIGTERM.
        with _cli(db_url, sim, "serve", "--run-now", SYNCSVC_MAX_CONCURRENCY="1") as proc:
            await _held(sim)
            proc.send_signal(signal.SIGTERM)
            await _until_logged_draining(proc)
            await sim.control({"release": True})  # the in-flight unit finishes within the drain
            rc, _, err = await asyncio.to_thread(_communicate, proc)
        assert rc == 0, err
        conn = await asyncpg.connect(db.libpq_url(db_url))
        try:
            status = await conn.fetchval("SELECT status FROM runs ORDER BY id DESC LIMIT 1")
            units = dict(
                await conn.fetch(
                    "SELECT status, count(*) FROM fetches GROUP BY status ORDER BY status"
                )
            )
            gaps = await conn.fetchval(
                "SELECT count(*) FROM (SELECT seq, lag(seq) OVER (ORDER BY seq) AS prev "
                "FROM changes) s WHERE prev IS NOT NULL AND seq <> prev + 1"
            )
        finally:
            await conn.close()
        # The parked unit finished and applied; the rest never started: the run did not finish.
        assert status == "interrupted"
        assert units == {"applied": 2}
        assert gaps == 0
        await sim.control({"clear_faults": True})
        result = await _run(_settings(sim), engine, metrics=Metrics())
        assert result.status == "succeeded"
        assert await _db_state(db_url) == _truth(sim.universe, 0)


async def _until_logged_draining(proc: subprocess.Popen[str]) -> None:
    """Until serve says it is draining (it took the SIGTERM), read from its JSON log."""

    def read() -> None:
        assert proc.stderr is not None
        for line in proc.stderr:
            if '"serve_draining"' in line:
                return
        raise AssertionError("serve never said it was draining")

    await asyncio.to_thread(read)


async def test_serve_exposes_health_and_prometheus_metrics(
    simulator: SimFactory, db_url: URL
) -> None:
    import aiohttp

    async with simulator(CONFIG) as sim:
        with _cli(db_url, sim, "serve", "--run-now") as proc:
            run_id = await _wait_for_run_row(db_url, "succeeded")
            assert run_id == 1
            port = await asyncio.to_thread(serve_port, proc)
            async with aiohttp.ClientSession() as http:
                async with http.get(f"http://127.0.0.1:{port}/healthz") as resp:
                    assert resp.status == 200
                    assert (await resp.json())["healthy"] is True
                async with http.get(f"http://127.0.0.1:{port}/metrics") as resp:
                    text = await resp.text()
            assert 'syncsvc_runs_total{status="succeeded"} 1.0' in text
            assert 'syncsvc_changes_total{entity="user",op="insert"}' in text
            assert "syncsvc_last_success_timestamp_seconds" in text
            assert "sim-account-token" not in text
            proc.send_signal(signal.SIGTERM)
            rc, _, err = await asyncio.to_thread(_communicate, proc)
        assert rc == 0, err


async def test_a_second_run_with_wait_runs_after_the_first(
    simulator: SimFactory, db_url: URL
) -> None:
    async with simulator(CONFIG) as sim:
        await sim.control({"faults": [_hold("sessionData.do")]})
        with _cli(db_url, sim, "run") as first:
            await _held(sim)  # the first run holds the lock, parked in a fetch
            # Only now the second: started together, either could take the lock first.
            with _cli(db_url, sim, "run", "--wait") as second:
                await _until(lambda: _lock_waiters(db_url))  # it queues behind the first
                await sim.control({"release": True})
                results = await asyncio.gather(
                    asyncio.to_thread(_communicate, first), asyncio.to_thread(_communicate, second)
                )
        assert [rc for rc, _, _ in results] == [0, 0], [err for _, _, err in results]
        conn = await asyncpg.connect(db.libpq_url(db_url))
        try:
            rows = await conn.fetch("SELECT id, started_at, finished_at FROM runs ORDER BY id")
        finally:
            await conn.close()
        assert len(rows) == 2
        # The waiting run started only once the first had finished: they never overlapped.
        assert rows[1]["started_at"] >= rows[0]["finished_at"]
