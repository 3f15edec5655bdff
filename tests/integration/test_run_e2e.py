"""End to end: the simulator over loopback, a real PostgreSQL, the scheduler and the CLI.

The database is compared with the simulator's ground truth (`Universe.snapshot`), read back
through the catalog's column names here in the test, not through the store's own readers.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from typing import Any

import asyncpg
import pytest
from sqlalchemy.engine import URL
from sqlalchemy.ext.asyncio import AsyncEngine

from syncsvc import scheduler
from syncsvc.cvent.catalog import RESOURCES, FieldKind
from syncsvc.errors import InvalidTokenError, IpNotAllowedError
from syncsvc.metrics import Metrics
from syncsvc.settings import Settings
from syncsvc.simulator import SimConfig
from syncsvc.store import db

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
        scopes = {(o.unit.resource.entity, o.unit.scope) for o in result.outcomes}
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
        started = time.monotonic()
        with pytest.raises(error) as info:
            await _run(settings, engine)
        assert time.monotonic() - started < 2.0
        assert words in str(info.value)
        assert "\n" not in str(info.value)
        stats = await sim.stats()
        assert stats["total_requests"] == 1  # event.do once: no retry storm, no fan-out


def _cli(url: URL, sim: Any, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "syncsvc", *args],
        env={
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": "/tmp",
            "SYNCSVC_DATABASE_URL": db.libpq_url(url),
            "SYNCSVC_BASE_URL": sim.base_url,
            "SYNCSVC_API_TOKEN": "sim-account-token",
            "SYNCSVC_LOG_FORMAT": "json",
            "SYNCSVC_SERVE_PORT": "0",
            "SYNCSVC_SERVE_HOST": "127.0.0.1",
        },
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


async def test_a_second_concurrent_run_refuses_with_exit_5(
    simulator: SimFactory, db_url: URL
) -> None:
    async with simulator(CONFIG) as sim:
        # Hold the first run inside its fetches so the second surely overlaps it.
        await sim.control(
            {
                "faults": [
                    {
                        "resource": "sessionData.do",
                        "event": "*",
                        "kind": "latency",
                        "value": 3,
                        "times": None,
                    },
                ]
            }
        )
        first = _cli(db_url, sim, "run")
        await _wait_for_run_row(db_url)
        second = await asyncio.to_thread(_communicate, _cli(db_url, sim, "run"))
        assert second[0] == 5
        assert "another syncsvc run is in progress" in second[2]
        assert len(second[2].strip().splitlines()) == 1
        rc, _, err = await asyncio.to_thread(_communicate, first)
        assert rc == 0, err


def _communicate(proc: subprocess.Popen[str]) -> tuple[int, str, str]:
    out, err = proc.communicate(timeout=120)
    return proc.returncode, out, err


async def _wait_for_run_row(url: URL, status: str = "running") -> int:
    conn = await asyncpg.connect(db.libpq_url(url))
    try:
        for _ in range(600):
            run_id = await conn.fetchval("SELECT id FROM runs WHERE status = $1", status)
            if run_id:
                return int(run_id)
            await asyncio.sleep(0.05)
    finally:
        await conn.close()
    raise AssertionError(f"no {status} run appeared")


async def test_serve_sigterm_mid_run_exits_0_and_the_next_run_is_consistent(
    simulator: SimFactory, engine: AsyncEngine, db_url: URL
) -> None:
    async with simulator(CONFIG) as sim:
        await sim.control(
            {
                "faults": [
                    {
                        "resource": "userData.do",
                        "event": "*",
                        "kind": "latency",
                        "value": 2,
                        "times": None,
                    },
                ]
            }
        )
        proc = _cli(db_url, sim, "serve", "--run-now")
        await _wait_for_run_row(db_url)
        proc.send_signal(signal.SIGTERM)
        rc, _, err = await asyncio.to_thread(_communicate, proc)
        assert rc == 0, err
        conn = await asyncpg.connect(db.libpq_url(db_url))
        try:
            status = await conn.fetchval("SELECT status FROM runs ORDER BY id DESC LIMIT 1")
            gaps = await conn.fetchval(
                "SELECT count(*) FROM (SELECT seq, lag(seq) OVER (ORDER BY seq) AS prev "
                "FROM changes) s WHERE prev IS NOT NULL AND seq <> prev + 1"
            )
        finally:
            await conn.close()
        assert status in ("succeeded", "partial")
        assert gaps == 0
        await sim.control({"clear_faults": True})
        result = await _run(_settings(sim), engine, metrics=Metrics())
        assert result.status == "succeeded"
        assert await _db_state(db_url) == _truth(sim.universe, 0)


async def test_serve_exposes_health_and_prometheus_metrics(
    simulator: SimFactory, db_url: URL
) -> None:
    import aiohttp

    async with simulator(CONFIG) as sim:
        proc = _cli(db_url, sim, "serve", "--run-now")
        try:
            run_id = await _wait_for_run_row(db_url, "succeeded")
            assert run_id == 1
            port = await asyncio.to_thread(_serve_port, proc)
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
        finally:
            proc.send_signal(signal.SIGTERM)
            rc, _, err = await asyncio.to_thread(_communicate, proc)
        assert rc == 0, err


def _serve_port(proc: subprocess.Popen[str]) -> int:
    assert proc.stderr is not None
    for line in proc.stderr:
        if '"serve_started"' in line:
            return int(json.loads(line)["port"])
    raise AssertionError("serve never said it started")


async def test_a_second_run_with_wait_runs_after_the_first(
    simulator: SimFactory, db_url: URL
) -> None:
    async with simulator(CONFIG) as sim:
        await sim.control(
            {
                "faults": [
                    {
                        "resource": "sessionData.do",
                        "event": "*",
                        "kind": "latency",
                        "value": 2,
                        "times": 1,
                    },
                ]
            }
        )
        first = _cli(db_url, sim, "run")
        await _wait_for_run_row(db_url)
        second = _cli(db_url, sim, "run", "--wait")
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
