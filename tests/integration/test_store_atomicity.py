"""Atomicity: a unit killed with SIGKILL at any step leaves the state and the change log as they
were, and the next run emits exactly what a clean run would (no gap, no duplicate).

Run as a script, this file is the child process: it applies day 1 and kills itself at a step.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import random
import signal
import subprocess
import sys
from typing import Any

import pytest

from syncsvc.records import Record, from_typed
from syncsvc.store import db
from syncsvc.store.runs import create_run
from syncsvc.store.unit import STEPS as UNIT_STEPS
from syncsvc.store.unit import HoldPolicy, UnitWriter

pytestmark = pytest.mark.db

NO_HOLD = HoldPolicy(ratio=1.0, min_rows=10**9)
STEPS = tuple(s for s in UNIT_STEPS if s != "committed")


def day(n: int) -> list[dict[str, Any]]:
    """Day 0: 300 users in two events; day 1: updates, deletes, inserts, re-creations."""
    rng = random.Random(7)
    base = [
        {
            "eventGUID": f"E{i % 2}",
            "userRef": f"U{i:04}",
            "clientID": f"C{i:04}" if i % 3 else None,
            "firstName": rng.choice(["Ada", "Bob", "Cy"]),
            "lastModified": dt.datetime(2026, 5, 1, tzinfo=dt.UTC),
            "customFields": {"tier": rng.choice(["1", "2"])},
        }
        for i in range(300)
    ]
    if n == 0:
        return base
    out = []
    for i, rec in enumerate(base):
        if i % 17 == 0:
            continue  # deleted
        if i % 29 == 1 and rec["clientID"]:
            rec = {**rec, "userRef": f"R{i:04}"}  # re-created: same clientID, new userRef
        elif i % 7 == 0:
            rec = {**rec, "city": "Oslo", "customFields": {"tier": "3"}}
        out.append(rec)
    out += [{"eventGUID": "E1", "userRef": f"N{i:03}", "clientID": f"N{i}"} for i in range(12)]
    return out


def records(n: int) -> list[Record]:
    return [from_typed("user", r) for r in day(n)]


async def apply_day(url: str, n: int, kill_at: str | None = None) -> int:
    engine = db.make_engine(db.sqlalchemy_url(url))

    def checkpoint(step: str) -> None:
        if step == kill_at:
            os.kill(os.getpid(), signal.SIGKILL)

    try:
        run_id = await create_run(engine)
        async with UnitWriter(
            engine,
            run_id=run_id,
            resource="user",
            scope="all",
            batch_rows=50,
            checkpoint=checkpoint,
        ) as unit:
            await unit.stage_records(records(n))
            result = await unit.apply(complete=True, covered_events=["E0", "E1"], hold=NO_HOLD)
        return result.changes
    finally:
        await engine.dispose()


async def _dump(url: str, with_runs: bool = True) -> tuple[list[Any], list[Any]]:
    """The users table and the change log (run ids left out when comparing two databases)."""
    import asyncpg

    conn = await asyncpg.connect(url)
    try:
        state = await conn.fetch(
            "SELECT user_ref, event_guid, client_id, first_name, city, custom_fields::text,"
            " row_hash, deleted_at IS NULL,"
            + (" deleted_run, last_changed_run, deleted_at" if with_runs else " 0")
            + " FROM users ORDER BY 1, 2"
        )
        log = await conn.fetch(
            "SELECT seq, entity, event_guid, record_key, op, changed_fields, before::text,"
            " after::text FROM changes ORDER BY seq"
        )
    finally:
        await conn.close()
    return [tuple(r) for r in state], [tuple(r) for r in log]


def _child(url: str, kill_at: str) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [sys.executable, __file__, url, kill_at],
        capture_output=True,
        timeout=120,
        check=False,
    )


async def test_sigkill_at_every_step_leaves_everything_untouched_then_a_clean_rerun(
    db_url: Any, empty_db_url: Any
) -> None:
    url = db.libpq_url(db_url)
    await apply_day(url, 0)
    before = await _dump(url)

    for step in STEPS:
        proc = await asyncio.to_thread(_child, url, step)
        assert proc.returncode == -signal.SIGKILL, (step, proc.stderr.decode()[-2000:])
        assert await _dump(url) == before, f"killed at {step!r}: something leaked"

    await apply_day(url, 1)
    after_kills = await _dump(url, with_runs=False)

    # The reference: the same two days on a fresh database, never interrupted.
    ref_engine = db.make_engine(empty_db_url)
    try:
        await db.upgrade(ref_engine)
    finally:
        await ref_engine.dispose()
    ref_url = db.libpq_url(empty_db_url)
    await apply_day(ref_url, 0)
    changes = await apply_day(ref_url, 1)
    reference = await _dump(ref_url, with_runs=False)
    assert changes > 0
    assert after_kills == reference


def test_the_child_really_dies_at_the_step_it_is_given(db_url: Any) -> None:
    """The kill switch is not vacuous: a child told to die at a step exits by SIGKILL, and one
    told an unknown step completes normally."""
    url = db.libpq_url(db_url)
    assert _child(url, "diffed").returncode == -signal.SIGKILL
    done = _child(url, "no-such-step")
    assert done.returncode == 0, done.stderr.decode()[-2000:]


if __name__ == "__main__":
    asyncio.run(apply_day(sys.argv[1], 1, kill_at=sys.argv[2]))
