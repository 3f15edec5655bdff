"""Commit order: a reader polling `seq > cursor` during concurrent applies never skips a seq."""

from __future__ import annotations

import asyncio
import datetime as dt
from typing import Any

import asyncpg
import pytest
from sqlalchemy.engine import URL
from sqlalchemy.ext.asyncio import AsyncEngine

from syncsvc.records import Record, from_typed
from syncsvc.store import db
from syncsvc.store.runs import create_run
from syncsvc.store.unit import HoldPolicy, UnitWriter

pytestmark = pytest.mark.db

NO_HOLD = HoldPolicy(ratio=1.0, min_rows=10**9)
T0 = dt.datetime(2026, 5, 1, tzinfo=dt.UTC)


def users(event: str, version: int, n: int = 40) -> list[Record]:
    # Each version updates every user, adds 3 and drops 3: every apply writes change rows.
    return [
        from_typed(
            "user",
            {"eventGUID": event, "userRef": f"U{i}", "city": f"v{version}", "lastModified": T0},
        )
        for i in range(3 * version, 3 * version + n)
    ]


class Poller:
    """A consumer: reads seq > cursor in a loop, and records any seq it could have skipped."""

    def __init__(self, url: URL) -> None:
        self.url = url
        self.cursor = 0
        self.gaps: list[tuple[int, int]] = []
        self.polls = 0

    async def poll_once(self, conn: asyncpg.Connection) -> None:
        rows = await conn.fetch("SELECT seq FROM changes WHERE seq > $1 ORDER BY seq", self.cursor)
        self.polls += 1
        for (seq,) in rows:
            if seq != self.cursor + 1:
                self.gaps.append((self.cursor, seq))
            self.cursor = seq

    async def run(self, stop: asyncio.Event) -> None:
        conn = await asyncpg.connect(db.libpq_url(self.url))
        try:
            while not stop.is_set():
                await self.poll_once(conn)
                await asyncio.sleep(0)
            await self.poll_once(conn)
        finally:
            await conn.close()


async def _apply(engine: AsyncEngine, event: str, records: list[Record], **kw: Any) -> int:
    run_id = await create_run(engine)
    async with UnitWriter(engine, run_id=run_id, resource="user", scope=event, **kw) as unit:
        await unit.stage_records(records)
        result = await unit.apply(complete=True, hold=NO_HOLD)
    return result.changes


class PauseAt:
    """A unit's checkpoint: the unit stops at `step` (`reached` is set) until `release`."""

    def __init__(self, step: str) -> None:
        self.step = step
        self.reached = asyncio.Event()
        self.release = asyncio.Event()

    async def __call__(self, step: str) -> None:
        if step == self.step:
            self.reached.set()
            await self.release.wait()


async def test_a_poller_never_skips_a_seq_while_units_commit_concurrently(
    engine: AsyncEngine, db_url: URL
) -> None:
    poller = Poller(db_url)
    stop = asyncio.Event()
    poll_task = asyncio.create_task(poller.run(stop))

    async def writer(event: str) -> int:
        return sum([await _apply(engine, event, users(event, v)) for v in range(8)])

    written = await asyncio.gather(*(writer(e) for e in ("E1", "E2", "E3")))
    stop.set()
    await poll_task
    assert poller.gaps == []
    assert poller.cursor == sum(written) > 0
    assert poller.polls > 1


async def test_a_unit_committing_late_holds_back_the_next_seq(
    engine: AsyncEngine, db_url: URL
) -> None:
    """A has numbered its rows but not committed; B must wait, so no reader sees B's seq first."""
    await _apply(engine, "E1", users("E1", 0))
    await _apply(engine, "E2", users("E2", 0))
    reader = await asyncpg.connect(db.libpq_url(db_url))
    poller = Poller(db_url)
    await poller.poll_once(reader)
    start = poller.cursor

    pause_a = PauseAt("changes_inserted")
    task_a = asyncio.create_task(_apply(engine, "E1", users("E1", 1), checkpoint=pause_a))
    await pause_a.reached.wait()
    task_b = asyncio.create_task(_apply(engine, "E2", users("E2", 1)))
    # B reaches the seq lock and waits on it (observed in pg_locks, not assumed from a sleep).
    while not await reader.fetchval(
        "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted"
    ):
        assert not task_b.done()
        await asyncio.sleep(0.01)
    await poller.poll_once(reader)
    assert poller.cursor == start  # nothing of A (uncommitted) nor B (blocked) is visible
    pause_a.release.set()
    a_changes, b_changes = await asyncio.gather(task_a, task_b)
    await poller.poll_once(reader)
    await reader.close()
    assert poller.gaps == []
    assert poller.cursor == start + a_changes + b_changes


async def test_two_units_over_one_event_apply_one_after_the_other(engine: AsyncEngine) -> None:
    """An event=all unit and a per-event unit for the same event, at once: the second diffs
    against the first's committed result, so no change is emitted twice."""
    pause = PauseAt("diffed")
    task_a = asyncio.create_task(_apply(engine, "all", users("E1", 0), checkpoint=pause))
    await pause.reached.wait()
    task_b = asyncio.create_task(_apply(engine, "E1", users("E1", 0)))
    for _ in range(500):  # B reaches the scope lock and waits (observed, not assumed)
        async with engine.connect() as conn:
            waiting = (
                await conn.exec_driver_sql(
                    "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted"
                )
            ).scalar_one()
        if waiting:
            break
        await asyncio.sleep(0.01)
    assert waiting == 1
    pause.release.set()
    a_changes, b_changes = await asyncio.gather(task_a, task_b)
    assert (a_changes, b_changes) == (40, 0)


async def test_a_unit_without_changes_commits_while_another_holds_the_seq_lock(
    engine: AsyncEngine, db_url: URL
) -> None:
    """Nothing to number, nothing to order: a unit that found no change does not wait for the
    seq lock (held here by A, paused after numbering its rows), and A's seqs stay contiguous."""
    await _apply(engine, "E1", users("E1", 0))
    await _apply(engine, "E2", users("E2", 0))
    pause_a = PauseAt("changes_inserted")
    task_a = asyncio.create_task(_apply(engine, "E1", users("E1", 1), checkpoint=pause_a))
    try:
        await asyncio.wait_for(pause_a.reached.wait(), 60)
        async with engine.connect() as conn:
            max_run_of_a = (await conn.exec_driver_sql("SELECT max(id) FROM runs")).scalar_one()
        # E2 again, as it is: no change. It commits now, A still holding the lock.
        assert await asyncio.wait_for(_apply(engine, "E2", users("E2", 0)), 60) == 0
        assert not task_a.done()
    finally:
        pause_a.release.set()
    a_changes = await task_a
    reader = await asyncpg.connect(db.libpq_url(db_url))
    try:
        seqs = [r["seq"] for r in await reader.fetch("SELECT seq FROM changes ORDER BY seq")]
        last_run = await reader.fetchval("SELECT max(run_id) FROM changes")
    finally:
        await reader.close()
    assert a_changes > 0
    assert seqs == list(range(1, len(seqs) + 1))
    assert last_run == max_run_of_a  # the last rows are A's: the E2 unit wrote none
