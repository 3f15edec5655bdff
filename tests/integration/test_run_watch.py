"""The planner's watch over its queued runs (store/jobs.py RunWatch): every watched run in one
statement, and a run's event set only when that run's status or count of final units moved.

Synchronized on state: each step waits for an event the watch sets, never for a time.
"""

from __future__ import annotations

import asyncio

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from syncsvc.catalog import USERS
from syncsvc.store import jobs
from syncsvc.store import runs as run_rows
from syncsvc.vocab import RunStatus, UnitStatus

pytestmark = pytest.mark.db

WAIT = 60  # a ceiling for a hung watch, never reached when it works


async def _run_with_unit(engine: AsyncEngine, account: str) -> tuple[int, int]:
    run_id = await run_rows.create_run(engine, account=account)
    fetch_id = await run_rows.create_fetch(
        engine, run_id=run_id, resource=USERS, scope="E1", status="pending"
    )
    return run_id, fetch_id


async def test_a_runs_event_is_set_by_its_own_moves_only(engine: AsyncEngine) -> None:
    run_a, unit_a = await _run_with_unit(engine, "watch-a")
    run_b, _ = await _run_with_unit(engine, "watch-b")
    watch = jobs.RunWatch(engine, interval=0.01)
    moved_a, moved_b = watch.changed(run_a), watch.changed(run_b)
    try:
        # The first look marks both: each waiter reads its run once.
        await asyncio.wait_for(asyncio.gather(moved_a.wait(), moved_b.wait()), WAIT)
        moved_a.clear()
        moved_b.clear()

        # A unit of run a ends: run a's event only. One look sets every event it sets before
        # its next await, so once a's is set, b's would be too had the look found b moved.
        await run_rows.finish_fetch(engine, unit_a, status=UnitStatus.APPLIED)
        await asyncio.wait_for(moved_a.wait(), WAIT)
        assert not moved_b.is_set()
        moved_a.clear()

        # Run b ends (its open unit closed with it): b's event, not a's.
        await run_rows.finish_run(engine, run_b, status=RunStatus.FAILED, error_message="x")
        await asyncio.wait_for(moved_b.wait(), WAIT)
        assert not moved_a.is_set()
    finally:
        watch.forget(run_a)
        watch.forget(run_b)


async def test_progress_reads_the_ended_units_not_yet_reported_and_counts_the_open(
    engine: AsyncEngine,
) -> None:
    run_id = await run_rows.create_run(engine, account="watch-c")
    units = [
        await run_rows.create_fetch(
            engine, run_id=run_id, resource=USERS, scope=f"E{i}", status="pending"
        )
        for i in range(3)
    ]
    await run_rows.finish_fetch(engine, units[1], status=UnitStatus.FAILED, error_message="x")

    first = await jobs.progress(engine, run_id, set())
    assert first is not None
    assert (first.status, first.still_open) == ("running", 2)
    assert [(u.id, u.status) for u in first.units] == [(units[1], "failed")]

    # Reported once: the next read leaves it out; with the open ones, those come instead.
    again = await jobs.progress(engine, run_id, {units[1]})
    assert again is not None
    assert (again.units, again.still_open) == ([], 2)
    last = await jobs.progress(engine, run_id, {units[1]}, with_open=True)
    assert last is not None
    assert [(u.id, u.status) for u in last.units] == [(units[0], "pending"), (units[2], "pending")]
