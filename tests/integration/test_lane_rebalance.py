"""A run's lanes on the task queue (store/jobs.py): a lane with no unit left waiting takes the last
unit of the run's busiest lane, and never a unit of another run or one scheduled for later.

Real PostgreSQL with procrastinate's schema; the jobs are read back with plain SQL.
"""

from __future__ import annotations

import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from syncsvc.store import jobs
from syncsvc.store import runs as run_rows

pytestmark = pytest.mark.db

pytest.importorskip("procrastinate", reason="the queue extra is not installed")


def _units(n: int) -> list[jobs.QueuedUnit]:
    return [jobs.QueuedUnit("userData.do", "user", f"E{i}", f"E{i}") for i in range(n)]


async def _jobs(engine: AsyncEngine) -> dict[int, tuple[str, str]]:
    """fetch id -> (lock, status), for every job."""
    async with engine.connect() as conn:
        rows = await conn.execute(
            sa.text("SELECT (args->>'fetch_id')::bigint AS f, lock, status FROM procrastinate_jobs")
        )
        return {int(r.f): (r.lock, r.status) for r in rows}


async def _finish(engine: AsyncEngine, fetch_ids: list[int]) -> None:
    """The jobs of these units as procrastinate leaves a job it ran (succeeded)."""
    async with engine.begin() as conn:
        await conn.execute(
            sa.text(
                "UPDATE procrastinate_jobs SET status = 'succeeded'"
                " WHERE (args->>'fetch_id')::bigint = ANY(:ids)"
            ),
            {"ids": fetch_ids},
        )


async def test_an_idle_lane_takes_the_last_unit_of_the_busiest_lane(engine: AsyncEngine) -> None:
    await jobs.apply_queue_schema(engine)
    run_id = await run_rows.create_run(engine, account="a")
    other = await run_rows.create_run(engine, account="b")
    ids = await jobs.enqueue_units(engine, run_id, _units(8), 2)
    others = await jobs.enqueue_units(engine, other, _units(4), 2)
    before = await _jobs(engine)
    lanes = sorted({before[i][0] for i in ids})
    assert len(lanes) == 2
    first, second = ([i for i in ids if before[i][0] == lane] for lane in lanes)

    # The first lane still has units waiting: it takes nothing.
    assert await jobs.rebalance(engine, run_id, lanes[0]) is None
    assert await _jobs(engine) == before

    # The first lane's units are all done; the second's four wait. The first takes the last.
    await _finish(engine, first)
    moved = await jobs.rebalance(engine, run_id, lanes[0])
    assert moved is not None
    after = await _jobs(engine)
    moved_unit = int(
        next(f for f, (lock, status) in after.items() if lock == lanes[0] and status == "todo")
    )
    assert moved_unit == max(second)
    assert {f: lock for f, (lock, _) in after.items() if f != moved_unit} == {
        f: lock for f, (lock, _) in before.items() if f != moved_unit
    }
    # The other run's jobs are untouched, and the lane now has a unit waiting: nothing more.
    assert all(after[f] == before[f] for f in others)
    assert await jobs.rebalance(engine, run_id, lanes[0]) is None


async def test_a_lane_never_takes_a_unit_scheduled_for_later_or_from_outside_the_run(
    engine: AsyncEngine,
) -> None:
    await jobs.apply_queue_schema(engine)
    run_id = await run_rows.create_run(engine, account="a")
    ids = await jobs.enqueue_units(engine, run_id, _units(4), 2)
    before = await _jobs(engine)
    lanes = sorted({before[i][0] for i in ids})
    first = [i for i in ids if before[i][0] == lanes[0]]
    second = [i for i in ids if before[i][0] == lanes[1]]
    await _finish(engine, first)
    # A retry waits for its time: it is not a unit ready to take.
    async with engine.begin() as conn:
        await conn.execute(
            sa.text(
                "UPDATE procrastinate_jobs SET scheduled_at = now() + interval '1 hour'"
                " WHERE (args->>'fetch_id')::bigint = ANY(:ids)"
            ),
            {"ids": second},
        )
    assert await jobs.rebalance(engine, run_id, lanes[0]) is None
    # A lock of another run, or none at all, is never a lane of this run.
    assert await jobs.rebalance(engine, run_id + 1000, lanes[0]) is None
    assert await jobs.rebalance(engine, run_id, None) is None
    assert await _jobs(engine) == {**before, **{f: (before[f][0], "succeeded") for f in first}}
