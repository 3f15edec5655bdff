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


async def _update(engine: AsyncEngine, fetch_ids: list[int], assignment: str) -> None:
    """SET `assignment` on these units' jobs (a test's own SQL, constants only)."""
    async with engine.begin() as conn:
        await conn.execute(
            sa.text(
                f"UPDATE procrastinate_jobs SET {assignment}"
                " WHERE (args->>'fetch_id')::bigint = ANY(:ids)"
            ),
            {"ids": fetch_ids},
        )


async def _set(engine: AsyncEngine, fetch_ids: list[int], status: str) -> None:
    """These units' jobs as procrastinate leaves them: succeeded (ran) or doing (running)."""
    await _update(engine, fetch_ids, f"status = '{status}'")


async def _queued(
    engine: AsyncEngine, account: str, units: int, lanes: int
) -> tuple[int, list[list[int]], dict[int, tuple[str, str]]]:
    """A run with `units` units queued on `lanes` lanes: its id, the units of each lane (lanes in
    lock order, units in id order), and every job as it stands."""
    run_id = await run_rows.create_run(engine, account=account)
    ids = await jobs.enqueue_units(engine, run_id, _units(units), lanes)
    now = await _jobs(engine)
    locks = sorted({now[i][0] for i in ids})
    return run_id, [sorted(i for i in ids if now[i][0] == lock) for lock in locks], now


async def test_an_idle_lane_takes_the_last_unit_of_its_runs_busiest_lane(
    engine: AsyncEngine,
) -> None:
    await jobs.apply_queue_schema(engine)
    # Another account's run first, with more units waiting in each lane than this run has.
    _, other_lanes, _ = await _queued(engine, "b", 16, 2)
    others = [f for lane in other_lanes for f in lane]
    run_id, (idle, smaller, busiest), before = await _queued(engine, "a", 9, 3)
    lane = before[idle[0]][0]
    assert [len(x) for x in (idle, smaller, busiest)] == [3, 3, 3]

    # The lane still has units waiting: it takes nothing.
    assert await jobs.rebalance(engine, run_id, lane) is None
    assert await _jobs(engine) == before

    # Its units are done; one of the second lane's ran, none of the third's.
    await _set(engine, idle + smaller[:1], "succeeded")
    done = await _jobs(engine)
    moved = await jobs.rebalance(engine, run_id, lane)
    assert moved is not None
    after = await _jobs(engine)
    taken = [f for f, (lock, status) in after.items() if lock == lane and status == "todo"]
    assert taken == [max(busiest)]
    assert {f: v for f, v in after.items() if f != taken[0]} == {
        f: v for f, v in done.items() if f != taken[0]
    }
    assert all(after[f] == before[f] for f in others)
    # Now the lane has a unit waiting: nothing more.
    assert await jobs.rebalance(engine, run_id, lane) is None


async def test_a_unit_that_can_start_now_stays_in_its_lane(engine: AsyncEngine) -> None:
    """A lane's one waiting unit with nothing running before it is taken by the next worker
    that looks; moved, it would wait behind the idle lane's own running job."""
    await jobs.apply_queue_schema(engine)
    run_id, (idle, other), before = await _queued(engine, "a", 4, 2)
    lane = before[idle[0]][0]
    await _set(engine, idle + other[:1], "succeeded")
    assert await jobs.rebalance(engine, run_id, lane) is None
    # With the other lane's first unit still running, its second would wait: it is taken.
    await _set(engine, other[:1], "doing")
    assert await jobs.rebalance(engine, run_id, lane) == (await _job_ids(engine, other[1:]))[0]
    assert (await _jobs(engine))[other[1]] == (lane, "todo")


async def _job_ids(engine: AsyncEngine, fetch_ids: list[int]) -> list[int]:
    async with engine.connect() as conn:
        rows = await conn.execute(
            sa.text(
                "SELECT id FROM procrastinate_jobs WHERE (args->>'fetch_id')::bigint = ANY(:ids)"
                " ORDER BY id"
            ),
            {"ids": fetch_ids},
        )
        return [int(r.id) for r in rows]


async def test_a_lane_never_takes_a_unit_scheduled_for_later_or_from_outside_the_run(
    engine: AsyncEngine,
) -> None:
    await jobs.apply_queue_schema(engine)
    run_id, (idle, other), before = await _queued(engine, "a", 6, 2)
    lane = before[idle[0]][0]
    await _set(engine, idle, "succeeded")
    # A retry waits for its time: it is not a unit ready to take.
    await _update(engine, other, "scheduled_at = now() + interval '1 hour'")
    assert await jobs.rebalance(engine, run_id, lane) is None
    # A lock of another run, or none at all, is never a lane of this run.
    assert await jobs.rebalance(engine, run_id + 1000, lane) is None
    assert await jobs.rebalance(engine, run_id, None) is None
    assert await _jobs(engine) == {**before, **{f: (before[f][0], "succeeded") for f in idle}}
