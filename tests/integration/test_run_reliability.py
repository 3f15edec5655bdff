"""A run under the faults nobody rehearses: a lost lock session, a failure while recording a
failure, oversized keys, unidentifiable records, interruptions and kills.

Every test synchronizes on state (the simulator's `hold` fault being taken, rows in `fetches`,
locks in `pg_locks`, processes in /proc), never on a sleep, and checks the bookkeeping with SQL:
no unit is left open by a finished run, and a run's counters are the sums of its committed units.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from sqlalchemy.engine import URL
from sqlalchemy.ext.asyncio import AsyncEngine

from syncsvc import catalog, scheduler, serve
from syncsvc.cvent.client import CventClient
from syncsvc.errors import InvalidTokenError, RunFencedError
from syncsvc.metrics import Metrics
from syncsvc.settings import Settings
from syncsvc.store import db
from syncsvc.store.queries import MAX_KEY_BYTES
from tests.apiserver import EVENTS, Reply, make_records, render, serve_api
from tests.integration.test_run_e2e import CONFIG, _db_state, _settings, _truth
from tests.processes import cli_env, started

pytestmark = pytest.mark.db

SimFactory = Callable[..., AbstractAsyncContextManager[Any]]
OPEN = ("pending", "running")


# --- helpers: state, not time ------------------------------------------------------------------


async def _until(probe: Callable[[], Awaitable[Any]], what: str, limit: float = 120.0) -> Any:
    """Poll a state probe until it returns something truthy (the limit only ends a broken test)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + limit
    while True:
        found = await probe()
        if found:
            return found
        if loop.time() > deadline:
            raise AssertionError(f"never saw: {what}")
        await asyncio.sleep(0.02)


async def _held(sim: Any) -> None:
    """Until the simulator has taken its (single-use) hold fault: that request is parked."""

    async def probe() -> bool:
        return not any(f.kind == "hold" for f in sim.simulator.faults)

    await _until(probe, "the hold fault taken")


def _hold(resource: str, event: str = "*") -> dict[str, Any]:
    return {"resource": resource, "event": event, "kind": "hold", "times": 1}


@contextlib.asynccontextmanager
async def _sql(url: URL) -> AsyncIterator[asyncpg.Connection]:
    conn = await asyncpg.connect(db.libpq_url(url))
    try:
        yield conn
    finally:
        await conn.close()


async def _fetch(url: URL, query: str, *args: Any) -> list[asyncpg.Record]:
    async with _sql(url) as conn:
        return list(await conn.fetch(query, *args))


async def _lock_holder(url: URL) -> int | None:
    """The backend holding the run lock (pg_locks splits a bigint key into classid/objid)."""
    key = scheduler.RUN_LOCK_KEY
    rows = await _fetch(
        url,
        "SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND granted AND objsubid = 1"
        " AND classid::bigint = $1 AND objid::bigint = $2"
        " AND database = (SELECT oid FROM pg_database WHERE datname = current_database())",
        key >> 32,
        key & 0xFFFF_FFFF,
    )
    return int(rows[0]["pid"]) if rows else None


async def _lock_waiters(url: URL) -> int:
    key = scheduler.RUN_LOCK_KEY
    rows = await _fetch(
        url,
        "SELECT count(*) AS n FROM pg_locks WHERE locktype = 'advisory' AND NOT granted"
        " AND objsubid = 1 AND classid::bigint = $1 AND objid::bigint = $2",
        key >> 32,
        key & 0xFFFF_FFFF,
    )
    return int(rows[0]["n"])


async def _unit_row(url: URL, resource: str, status: str = "running") -> bool:
    rows = await _fetch(
        url, "SELECT 1 FROM fetches WHERE resource = $1 AND status = $2", resource, status
    )
    return bool(rows)


async def assert_bookkeeping(url: URL) -> None:
    """Every unit of a finished run is closed, and every run's counters are the sums of its
    committed units (whose change rows are exactly the counted changes)."""
    async with _sql(url) as conn:
        open_units = await conn.fetch(
            "SELECT f.id, f.run_id, f.resource, f.scope, f.status FROM fetches f"
            " JOIN runs r ON r.id = f.run_id WHERE r.status <> 'running' AND f.status IN"
            " ('pending', 'running')"
        )
        assert [dict(r) for r in open_units] == []
        mismatched = await conn.fetch(
            """
SELECT r.id, r.status, r.records, s.records AS unit_records, r.inserted, s.inserted AS unit_ins
FROM runs r
CROSS JOIN LATERAL (
    SELECT coalesce(sum(records), 0) AS records, coalesce(sum(bytes), 0) AS bytes,
           coalesce(sum(inserted), 0) AS inserted, coalesce(sum(updated), 0) AS updated,
           coalesce(sum(deleted), 0) AS deleted, coalesce(sum(rekeyed), 0) AS rekeyed
    FROM fetches f WHERE f.run_id = r.id AND f.status IN ('applied', 'held')
) s
CROSS JOIN LATERAL (SELECT count(*) AS n FROM changes c WHERE c.run_id = r.id) ch
WHERE r.status <> 'running'
  AND ((r.records, r.bytes, r.inserted, r.updated, r.deleted, r.rekeyed)
        IS DISTINCT FROM (s.records, s.bytes, s.inserted, s.updated, s.deleted, s.rekeyed)
       OR ch.n <> r.inserted + r.updated + r.deleted + r.rekeyed)
"""
        )
        assert [dict(r) for r in mismatched] == []


# --- item 1: fencing -------------------------------------------------------------------------


async def test_a_run_that_lost_its_lock_commits_nothing_once_a_newer_run_started(
    simulator: SimFactory, engine: AsyncEngine, db_url: URL
) -> None:
    async with simulator(CONFIG) as sim:
        settings = _settings(sim)
        assert (await scheduler.run_once(settings, engine)).status == "succeeded"
        sim.set_day(1)
        await sim.control({"faults": [_hold("userData.do", "all")]})
        async with CventClient.open(settings) as client:
            stale = scheduler.Runner(settings, engine, client)
            # The newer run must win the lock: the stale one does not look at its lock meanwhile.
            stale.lock_check_seconds = 3600.0
            stale_task = asyncio.create_task(stale.run())
            try:
                await _held(sim)  # the stale run's users unit is parked mid-fetch, day 1
                holder = await _lock_holder(db_url)
                assert holder is not None
                async with _sql(db_url) as conn:
                    assert await conn.fetchval("SELECT pg_terminate_backend($1)", holder)
                await _until(lambda: _no_lock(db_url), "the run lock released")
                sim.set_day(2)
                newer = await scheduler.run_once(settings, engine)
                assert newer.status == "succeeded", newer.error
                await sim.control({"release": True})  # the stale run's day-1 users arrive now
                with pytest.raises(RunFencedError) as info:
                    await stale_task
            finally:
                stale_task.cancel()
                with contextlib.suppress(BaseException):
                    await stale_task
        message = str(info.value)
        assert message.startswith(f"fenced: run {stale.run_id} was superseded by "), message
        assert "after its lock session was lost; it commits nothing more" in message
        assert "\n" not in message
        # The newest snapshot stands, and the next run finds nothing to change.
        assert await _db_state(db_url) == _truth(sim.universe, 2)
        again = await scheduler.run_once(settings, engine)
        assert again.status == "succeeded"
        assert all(n == 0 for n in again.totals().values()), again.totals()
        rows = await _fetch(
            db_url, "SELECT status, resource FROM fetches WHERE run_id = $1", stale.run_id
        )
        users = [r["status"] for r in rows if r["resource"] == "userData.do"]
        assert users
        assert set(users) <= {"cancelled", "abandoned"}
        (run,) = await _fetch(db_url, "SELECT status FROM runs WHERE id = $1", stale.run_id)
        assert run["status"] == "abandoned"
        late = await _fetch(
            db_url,
            "SELECT count(*) AS n FROM changes WHERE run_id = $1 AND entity = 'user'",
            stale.run_id,
        )
        assert late[0]["n"] == 0
        await assert_bookkeeping(db_url)


async def _no_lock(url: URL) -> bool:
    return await _lock_holder(url) is None


async def test_a_run_whose_lock_session_died_takes_the_lock_again_and_finishes(
    simulator: SimFactory, engine: AsyncEngine, db_url: URL
) -> None:
    async with simulator(CONFIG) as sim:
        settings = _settings(sim)
        await sim.control({"faults": [_hold("userData.do", "all")]})
        async with CventClient.open(settings) as client:
            runner = scheduler.Runner(settings, engine, client)
            runner.lock_check_seconds = 0.05
            task = asyncio.create_task(runner.run())
            try:
                await _held(sim)
                first = await _lock_holder(db_url)
                assert first is not None
                async with _sql(db_url) as conn:
                    await conn.fetchval("SELECT pg_terminate_backend($1)", first)

                async def retaken() -> bool:
                    pid = await _lock_holder(db_url)
                    return pid is not None and pid != first

                await _until(retaken, "the run lock taken again by its run")
                await sim.control({"release": True})
                result = await task
            finally:
                task.cancel()
                with contextlib.suppress(BaseException):
                    await task
        assert result.status == "succeeded", result.error
        assert await _db_state(db_url) == _truth(sim.universe, 0)
        await assert_bookkeeping(db_url)


# --- item 3: a failure while recording a failure -------------------------------------------------


async def test_an_error_code_beyond_int32_fails_its_unit_and_the_run_goes_on(
    simulator: SimFactory, engine: AsyncEngine, db_url: URL
) -> None:
    huge = 99_999_999_999_999
    async with simulator(CONFIG) as sim:
        bad = sorted(g for g, _ in sim.universe.snapshot(0)["event"])[0]
        await sim.control(
            {
                "faults": [
                    {
                        "resource": "exhibitorData.do",
                        "event": bad,
                        "kind": "api_code",
                        "value": huge,
                    }
                ]
            }
        )
        result = await scheduler.run_once(_settings(sim), engine)
        assert result.status == "partial"
        failed = [o for o in result.outcomes if o.status == "failed"]
        assert [(o.unit.resource.entity, o.unit.event) for o in failed] == [("exhibitor", bad)]
        rows = await _fetch(
            db_url,
            "SELECT status, error_code, error_message FROM fetches WHERE status = 'failed'",
        )
        assert [(r["status"], r["error_code"]) for r in rows] == [("failed", None)]
        assert str(huge) in rows[0]["error_message"]
        truth = _truth(sim.universe, 0)
        state = await _db_state(db_url)
        assert state["user"] == truth["user"]
        assert state["session"] == truth["session"]
        await assert_bookkeeping(db_url)


async def test_a_unit_whose_connections_died_fails_alone_and_the_run_records_it(
    simulator: SimFactory, engine: AsyncEngine, db_url: URL
) -> None:
    async with simulator(CONFIG) as sim:
        settings = _settings(sim, use_event_all=False)
        guids = sorted(g for g, _ in sim.universe.snapshot(0)["event"])
        bad = guids[2]
        await sim.control({"faults": [_hold("userData.do", bad)]})
        task = asyncio.create_task(scheduler.run_once(settings, engine))
        units = 1 + 3 * len(guids)  # event.do, then users, sessions, exhibitors per event

        async def only_the_held_unit_open() -> bool:
            rows = await _fetch(
                db_url,
                "SELECT count(*) FILTER (WHERE status NOT IN ('pending', 'running')) AS closed"
                " FROM fetches",
            )
            return bool(rows[0]["closed"] == units - 1)

        try:
            await _held(sim)
            # The other units are done: their connections sit idle in the pool.
            await _until(only_the_held_unit_open, "every other unit closed")
            # Every backend of the run: the unit's open transaction, the pooled idle
            # connections the failure will be recorded on, the lock session.
            async with _sql(db_url) as conn:
                killed = await conn.fetchval(
                    "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
                    " WHERE datname = current_database() AND pid <> pg_backend_pid()"
                )
            assert killed >= 2
            await sim.control({"release": True})
            result = await task
        finally:
            task.cancel()
            with contextlib.suppress(BaseException):
                await task
        assert result.status == "partial", result.error
        failed = [o for o in result.outcomes if o.status == "failed"]
        assert [(o.unit.resource.entity, o.unit.event) for o in failed] == [("user", bad)]
        rows = await _fetch(
            db_url,
            "SELECT scope, error_message FROM fetches WHERE status = 'failed'",
        )
        assert [r["scope"] for r in rows] == [bad]
        assert "\n" not in rows[0]["error_message"]
        await assert_bookkeeping(db_url)
        again = await scheduler.run_once(settings, engine)
        assert again.status == "succeeded"
        assert await _db_state(db_url) == _truth(sim.universe, 0)


# --- item 4: oversized keys ----------------------------------------------------------------------


async def test_oversized_keys_are_rejected_and_everything_else_syncs(
    engine: AsyncEngine, db_url: URL
) -> None:
    long_guid = "G" * 5120
    long_ref = "R" * 3000
    async with serve_api(records_per_event=3) as api:
        events = make_records(catalog.EVENTS, "", len(EVENTS))
        api.push(
            Reply(
                body=render(catalog.EVENTS, [*events, {"eventGUID": long_guid, "eventCode": "X"}])
            ),
            resource="event.do",
        )
        users = [r for e in EVENTS for r in make_records(catalog.USERS, e, 3)]
        users.append({"userRef": long_ref, "eventGUID": EVENTS[0], "lastName": "Long"})
        users.append({"userRef": "ok-1", "eventGUID": EVENTS[0], "clientID": "C" * 1500})
        api.push(Reply(body=render(catalog.USERS, users)), resource="userData.do")
        settings = Settings.load({}).replace(
            base_url=api.base_url,
            api_token="test-account-token",
            retry_base_delay=0.01,
            retry_max_delay=0.05,
            resources=("users",),
        )
        result = await scheduler.run_once(settings, engine)
    assert result.status == "succeeded", result.error
    by_entity = {o.unit.resource.entity: o for o in result.outcomes}
    assert by_entity["event"].result is not None
    assert by_entity["event"].result.rejected == 1
    assert by_entity["event"].result.inserted == len(EVENTS)
    assert by_entity["user"].result is not None
    assert by_entity["user"].result.rejected == 2
    assert by_entity["user"].result.inserted == 3 * len(EVENTS)
    stored = await _fetch(
        db_url,
        "SELECT max(octet_length(event_guid)) AS g, max(octet_length(user_ref)) AS r,"
        " count(*) AS n FROM users",
    )
    assert stored[0]["n"] == 3 * len(EVENTS)
    assert stored[0]["r"] <= MAX_KEY_BYTES
    await assert_bookkeeping(db_url)


# --- item 7: unidentifiable records --------------------------------------------------------------


async def test_a_record_without_its_key_never_deletes_a_stored_row(
    engine: AsyncEngine, db_url: URL
) -> None:
    async with serve_api(records_per_event=3) as api:
        settings = Settings.load({}).replace(
            base_url=api.base_url,
            api_token="test-account-token",
            resources=("users",),
            delete_hold_min_rows=1000,  # the hold would hide the delete on so few rows
        )
        assert (await scheduler.run_once(settings, engine)).status == "succeeded"
        users = [r for e in EVENTS for r in make_records(catalog.USERS, e, 3)]
        gone = users.pop(0)  # its userRef is missing from this dump: it cannot be identified
        changed = dict(users[0], lastName="Changed")
        users[0] = changed
        users.append({k: v for k, v in gone.items() if k != "userRef"})
        api.push(Reply(body=render(catalog.USERS, users)), resource="userData.do")
        result = await scheduler.run_once(settings, engine)
    user_unit = next(o for o in result.outcomes if o.unit.resource.entity == "user")
    assert user_unit.result is not None
    assert (user_unit.result.deleted, user_unit.result.updated) == (0, 1)
    assert user_unit.result.unidentified == 1
    rows = await _fetch(db_url, "SELECT deleted_at FROM users WHERE user_ref = $1", gone["userRef"])
    assert rows[0]["deleted_at"] is None
    (note,) = await _fetch(
        db_url, "SELECT error_message FROM fetches WHERE id = $1", user_unit.fetch_id
    )
    assert "without their key" in note["error_message"]
    await assert_bookkeeping(db_url)


async def test_a_namespaced_container_fails_its_unit_and_deletes_nothing(
    engine: AsyncEngine, db_url: URL
) -> None:
    async with serve_api(records_per_event=3) as api:
        settings = Settings.load({}).replace(
            base_url=api.base_url,
            api_token="test-account-token",
            resources=("users",),
            delete_hold_min_rows=1000,
            use_event_all=False,
        )
        assert (await scheduler.run_once(settings, engine)).status == "succeeded"
        users = make_records(catalog.USERS, EVENTS[0], 3)
        body = render(catalog.USERS, users).replace(b"<users>", b'<users xmlns="urn:x">')
        api.push(Reply(body=body), resource="userData.do")
        result = await scheduler.run_once(settings, engine)
    assert result.status == "partial"
    (failed,) = [o for o in result.outcomes if o.status == "failed"]
    assert "<users>" in str(failed.error)
    live = await _fetch(db_url, "SELECT count(*) AS n FROM users WHERE deleted_at IS NULL")
    assert live[0]["n"] == 3 * len(EVENTS)
    await assert_bookkeeping(db_url)


# --- item 6 and interruptions: every unit ends in a final state ---------------------------------


async def test_a_101_stop_leaves_no_unit_running(
    simulator: SimFactory, engine: AsyncEngine, db_url: URL
) -> None:
    async with simulator(CONFIG) as sim:
        bad = sorted(g for g, _ in sim.universe.snapshot(0)["event"])[0]
        await sim.control(
            {
                "faults": [
                    {"resource": "exhibitorData.do", "event": bad, "kind": "api_code", "value": 101}
                ]
            }
        )
        with pytest.raises(InvalidTokenError):
            await scheduler.run_once(_settings(sim), engine)
    rows = await _fetch(db_url, "SELECT status FROM runs")
    assert [r["status"] for r in rows] == ["failed"]
    await assert_bookkeeping(db_url)


async def test_a_101_in_a_fallback_unit_stops_the_run_with_that_error_alone(
    simulator: SimFactory, engine: AsyncEngine, db_url: URL
) -> None:
    async with simulator(CONFIG) as sim:
        bad = sorted(g for g, _ in sim.universe.snapshot(0)["event"])[0]
        fault = {"resource": "userData.do", "kind": "api_code"}
        refused = fault | {"event": "all", "value": 104}
        revoked = fault | {"event": bad, "value": 101}
        await sim.control({"faults": [refused, revoked]})
        # Not an ExceptionGroup: the per-event units run in a group of their own.
        with pytest.raises(InvalidTokenError):
            await scheduler.run_once(_settings(sim), engine)
    await assert_bookkeeping(db_url)


async def test_serve_cancelling_at_its_drain_limit_stores_an_interrupted_run(
    simulator: SimFactory, engine: AsyncEngine, db_url: URL
) -> None:
    async with simulator(CONFIG) as sim:
        await sim.control({"faults": [_hold("userData.do", "all")]})
        settings = _settings(sim).replace(serve_port=0, serve_host="127.0.0.1")
        metrics = Metrics()

        async def one_run(stop: asyncio.Event) -> scheduler.RunResult:
            return await scheduler.run_once(settings, engine, metrics=metrics, stop=stop)

        served = asyncio.create_task(
            serve.serve(settings, one_run, metrics, run_now=True, drain_seconds=0.2, engine=engine)
        )
        try:
            await _held(sim)  # the run is in flight; the held unit never finishes by itself
            os.kill(os.getpid(), signal.SIGTERM)  # serve's own handler takes it
            assert await served == 0
        finally:
            served.cancel()
            with contextlib.suppress(BaseException):
                await served
    (run,) = await _fetch(db_url, "SELECT status, error_message FROM runs")
    assert run["status"] == "interrupted"
    users = await _fetch(db_url, "SELECT status FROM fetches WHERE resource = 'userData.do'")
    assert [r["status"] for r in users] == ["cancelled"]
    await assert_bookkeeping(db_url)


def _cli_env(url: URL, sim: Any) -> dict[str, str]:
    return cli_env(url, sim.base_url, SYNCSVC_LOG_FORMAT="json", SYNCSVC_RETRY_BASE_DELAY="0.01")


def _descendants(pid: int) -> set[int]:
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(entry.name))
    out: set[int] = set()
    todo = [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            out.add(child)
            todo.append(child)
    return out


def _parse_workers(pid: int) -> set[int]:
    """The descendants of `pid` that are parse workers (`python -m syncsvc.parse.worker`)."""
    out = set()
    for child in _descendants(pid):
        with contextlib.suppress(OSError):  # gone meanwhile
            if b"syncsvc.parse.worker" in Path(f"/proc/{child}/cmdline").read_bytes().split(b"\0"):
                out.add(child)
    return out


@pytest.mark.parametrize(
    ("how", "exit_code", "line"),
    [
        ("ctrl-c", 130, "syncsvc: interrupted"),
        ("sigterm", 143, "syncsvc: interrupted (SIGTERM)"),
    ],
)
async def test_an_interrupted_run_is_stored_as_interrupted_and_says_one_line(
    simulator: SimFactory, db_url: URL, how: str, exit_code: int, line: str
) -> None:
    async with simulator(CONFIG) as sim:
        await sim.control({"faults": [_hold("userData.do", "all")]})
        with started(_cli_env(db_url, sim), "run") as proc:
            await _held(sim)
            # The parse workers exist (event.do was parsed in them) and sit idle.
            await _until(
                lambda: _async(len(_parse_workers(proc.pid)) >= 2), "the parse worker processes"
            )
            if how == "ctrl-c":
                os.killpg(proc.pid, signal.SIGINT)  # what a terminal's Ctrl-C does
            else:
                proc.send_signal(signal.SIGTERM)
            _, err = await asyncio.to_thread(proc.communicate, timeout=120)
            assert proc.returncode == exit_code, err
        assert "Traceback" not in err
        assert "KeyboardInterrupt" not in err
        assert err.strip().splitlines()[-1] == line
    (run,) = await _fetch(db_url, "SELECT status, error_message FROM runs")
    assert run["status"] == "interrupted"
    users = await _fetch(db_url, "SELECT status FROM fetches WHERE resource = 'userData.do'")
    assert [r["status"] for r in users] == ["cancelled"]
    await assert_bookkeeping(db_url)


async def _async(value: Any) -> Any:
    return value


async def test_units_of_a_killed_run_are_closed_as_abandoned_by_the_next_run(
    simulator: SimFactory, engine: AsyncEngine, db_url: URL
) -> None:
    async with simulator(CONFIG) as sim:
        await sim.control({"faults": [_hold("userData.do", "all")]})
        with started(_cli_env(db_url, sim), "run") as proc:
            await _held(sim)
            await _until(lambda: _unit_row(db_url, "userData.do"), "the users unit running")
            os.killpg(proc.pid, signal.SIGKILL)
            await asyncio.to_thread(proc.wait)
        await sim.control({"release": True, "clear_faults": True})
        result = await scheduler.run_once(_settings(sim), engine, wait_lock=True)
        assert result.status == "succeeded"
        assert await _db_state(db_url) == _truth(sim.universe, 0)
    runs = await _fetch(db_url, "SELECT id, status FROM runs ORDER BY id")
    assert [r["status"] for r in runs] == ["abandoned", "succeeded"]
    killed = await _fetch(
        db_url,
        "SELECT status FROM fetches WHERE run_id = $1 AND resource = 'userData.do'",
        runs[0]["id"],
    )
    assert [r["status"] for r in killed] == ["abandoned"]
    await assert_bookkeeping(db_url)
