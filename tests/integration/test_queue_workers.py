"""Units on the task queue: `syncsvc run` with executor = queue, several `syncsvc worker`
processes, the simulator on loopback and a real PostgreSQL.

The state is read with plain SQL and compared with the simulator's ground truth; the change log
with the simulator's own list of the changes between two days. Workers are SIGKILLed mid-run and
the run must still finish with every change exactly once.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import signal
import subprocess
import sys
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import AbstractAsyncContextManager, ExitStack
from typing import Any

import asyncpg
import pytest
from sqlalchemy.engine import URL

from syncsvc.catalog import BY_ENTITY
from syncsvc.simulator import SimConfig
from syncsvc.store import db
from tests.integration.test_run_e2e import _db_state, _truth
from tests.integration.test_store_simulator import expected
from tests.processes import cli_env, run_cli

pytestmark = [pytest.mark.db, pytest.mark.timeout(900)]

SimFactory = Callable[..., AbstractAsyncContextManager[Any]]

CONFIG = SimConfig(
    seed=23,
    events=6,
    users_per_event=50,
    sessions_per_event=8,
    exhibitors_per_event=4,
    update_rate=0.1,
    delete_rate=0.04,
    insert_rate=0.05,
    recreate_rate=0.03,
    big_event_every=3,
    new_event_every=2,
)

QUEUE_ENV = {
    "SYNCSVC_EXECUTOR": "queue",
    "SYNCSVC_WORKER_HEARTBEAT": "0.5",
    "SYNCSVC_WORKER_STALLED_AFTER": "3",
    "SYNCSVC_RETRY_BASE_DELAY": "0.01",
    "SYNCSVC_RETRY_MAX_DELAY": "0.05",
    "SYNCSVC_RATE_LIMIT": "200",
    "SYNCSVC_LOG_FORMAT": "json",
    "SYNCSVC_PARSE_WORKERS": "1",
}


class Workers:
    """`syncsvc worker` processes, each in its own session (its parse workers die with it)."""

    def __init__(self, env: dict[str, str], stack: ExitStack) -> None:
        self.env = env
        self.stack = stack
        self.procs: list[subprocess.Popen[bytes]] = []

    def start(self, n: int = 1) -> None:
        for _ in range(n):
            proc = subprocess.Popen(
                [sys.executable, "-m", "syncsvc", "worker", "--concurrency", "2"],
                env=self.env,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                start_new_session=True,
            )
            self.procs.append(proc)
            self.stack.callback(self._kill, proc)

    @staticmethod
    def _kill(proc: subprocess.Popen[bytes]) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()

    def kill(self, pid: int) -> None:
        proc = next(p for p in self.procs if p.pid == pid)
        self._kill(proc)
        self.procs.remove(proc)

    def alive(self) -> list[int]:
        return [p.pid for p in self.procs if p.poll() is None]


@contextlib.contextmanager
def workers(env: dict[str, str], n: int) -> Iterator[Workers]:
    with ExitStack() as stack:
        w = Workers(env, stack)
        w.start(n)
        yield w


async def _changes(url: URL, after: int) -> tuple[list[int], Counter[tuple[Any, ...]]]:
    """The change rows after seq `after`, read with plain SQL, as the ground truth lists them."""
    conn = await asyncpg.connect(db.libpq_url(url))
    try:
        rows = await conn.fetch(
            "SELECT seq, entity, event_guid, record_key, op, changed_fields, client_id, before"
            " FROM changes WHERE seq > $1 ORDER BY seq",
            after,
        )
    finally:
        await conn.close()
    out: Counter[tuple[Any, ...]] = Counter()
    for r in rows:
        old = None
        if r["op"] == "rekey":
            old = json.loads(r["before"])[BY_ENTITY[r["entity"]].key]
        out[
            (
                r["entity"],
                r["event_guid"],
                r["record_key"],
                r["op"],
                frozenset(r["changed_fields"]),
                r["client_id"],
                old,
            )
        ] += 1
    return [r["seq"] for r in rows], out


async def _scalar(url: URL, sql: str, *args: Any) -> Any:
    conn = await asyncpg.connect(db.libpq_url(url))
    try:
        return await conn.fetchval(sql, *args)
    finally:
        await conn.close()


async def _check_day(url: URL, sim: Any, day: int, after: int) -> int:
    assert await _db_state(url) == _truth(sim.universe, day)
    seqs, got = await _changes(url, after)
    assert seqs == list(range(after + 1, after + 1 + len(seqs))), "seq has a gap"
    truth = expected(sim.universe.expected_changes(day - 1, day))
    assert got == truth, (
        f"day {day}: missing {list((truth - got).items())[:3]},"
        f" extra {list((got - truth).items())[:3]}"
    )
    return seqs[-1] if seqs else after


def _env(url: URL, sim: Any, **extra: str) -> dict[str, str]:
    return cli_env(url, sim.base_url, **(QUEUE_ENV | extra))


async def test_three_workers_sync_an_account_to_the_ground_truth_day_after_day(
    simulator: SimFactory, db_url: URL
) -> None:
    async with simulator(CONFIG) as sim:
        env = _env(db_url, sim)
        up = await asyncio.to_thread(run_cli, env, "db", "upgrade")
        assert up.returncode == 0, up.stderr
        assert "task queue schema created" in up.stdout
        seq = 0
        with workers(env, 3):
            for day in range(4):
                sim.set_day(day)
                # Days 1 and 3: one unit per event (a large account split across the workers).
                per_event = {"SYNCSVC_USE_EVENT_ALL": "false"} if day % 2 else {}
                run = await asyncio.to_thread(run_cli, _env(db_url, sim, **per_event), "run")
                assert run.returncode == 0, run.stderr[-2000:]
                seq = await _check_day(db_url, sim, day, seq)
        status = await _scalar(
            db_url, "SELECT string_agg(DISTINCT status, ',') FROM runs"
        )
        assert status == "succeeded"
        # The units ran on the workers, not in `run`'s own process.
        ran_by = await _scalar(
            db_url,
            "SELECT count(DISTINCT details->>'worker') FROM fetches"
            " WHERE details ? 'worker'",
        )
        assert ran_by >= 1
        in_run = await _scalar(
            db_url,
            "SELECT count(*) FROM fetches WHERE entity <> 'event' AND NOT details ? 'worker'"
            " AND NOT details ? 'cascade'",
        )
        assert in_run == 0


async def test_a_queued_run_without_workers_schema_says_how_to_create_it(
    simulator: SimFactory, db_url: URL
) -> None:
    async with simulator(CONFIG) as sim:
        run = await asyncio.to_thread(run_cli, _env(db_url, sim), "worker")
        assert run.returncode == 2
        assert run.stderr.strip().splitlines()[-1].endswith(
            "run `syncsvc db upgrade` with the queue extra installed"
        )
        assert "Traceback" not in run.stderr


async def _running_unit_worker(url: URL, run_id: int | None) -> tuple[int, str] | None:
    conn = await asyncpg.connect(db.libpq_url(url))
    try:
        row = await conn.fetchrow(
            "SELECT run_id, details->>'worker' AS worker FROM fetches"
            " WHERE status = 'running' AND details ? 'worker'"
            " AND ($1::bigint IS NULL OR run_id = $1) ORDER BY random() LIMIT 1",
            run_id,
        )
    finally:
        await conn.close()
    return None if row is None else (int(row["run_id"]), str(row["worker"]))


async def test_workers_sigkilled_mid_run_lose_no_change_and_double_none(
    simulator: SimFactory, db_url: URL
) -> None:
    """20 runs, one per simulated day; in each, a worker running a unit is SIGKILLed at a random
    moment (during its download, its apply or its commit) and a new worker replaces it. Every
    run finishes `succeeded` once the survivors take the dead worker's units up, and the state
    and the change log equal the ground truth after every day."""
    rng = random.Random(18)
    kills = 0
    async with simulator(CONFIG) as sim:
        env = _env(db_url, sim, SYNCSVC_USE_EVENT_ALL="false")
        up = await asyncio.to_thread(run_cli, env, "db", "upgrade")
        assert up.returncode == 0, up.stderr
        seq = 0
        with workers(env, 3) as pool:
            for day in range(20):
                sim.set_day(day)
                run = subprocess.Popen(
                    [sys.executable, "-m", "syncsvc", "run"],
                    env=env,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.PIPE,
                    text=True,
                    start_new_session=True,
                )
                try:
                    victim = None
                    while victim is None and run.poll() is None:
                        victim = await _running_unit_worker(db_url, None)
                        await asyncio.sleep(0.01)
                    if victim is not None:
                        await asyncio.sleep(rng.uniform(0, 0.3))
                        pid = int(victim[1].rsplit("-", 1)[1])
                        if pid in pool.alive():
                            pool.kill(pid)
                            kills += 1
                            pool.start(1)
                    out, err = await asyncio.to_thread(run.communicate, timeout=300)
                finally:
                    with contextlib.suppress(ProcessLookupError):
                        os.killpg(run.pid, signal.SIGKILL)
                    run.wait()
                assert run.returncode == 0, err[-2000:]
                seq = await _check_day(db_url, sim, day, seq)
    assert kills >= 15
