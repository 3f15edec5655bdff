"""`syncsvc changes prune --older-than DAYS`: drop change rows every consumer has acknowledged.

A row goes when it was captured more than DAYS ago **and** its seq is at or below every
consumer's cursor (paused and failing consumers included), and never the newest row: seq numbers
continue from the highest one in the table, so the log always keeps it. `force` drops old rows
past the slowest consumers too, and reports which consumers that breaks (they will never see the
rows between their cursor and the new start of the log).

Safe while syncs and deliveries run: rows go in small batches, each its own short transaction,
and each batch takes the retention lock and reads the cursors afresh. Cursors only move forward
except by `consumers reset`/`add`, which take the same lock, so a batch never deletes a row a
consumer is about to read. Units allocate seq above the newest row, which prune never touches.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from sqlalchemy.ext.asyncio import AsyncEngine

from syncsvc.feed.consumers import RETENTION_LOCK
from syncsvc.store.db import raw_connection

BATCH = 10_000


@dataclass(frozen=True, slots=True)
class PruneResult:
    deleted: int
    cutoff: datetime  # rows captured before this were candidates
    bound: int  # the highest seq a row could be deleted at
    kept_old: int  # rows older than the cutoff kept for a consumer
    holding: tuple[tuple[str, int], ...]  # consumers (name, cursor) that kept old rows
    broken: tuple[tuple[str, int], ...]  # with force: consumers that will miss rows


_BOUNDS = """
SELECT coalesce((SELECT max(seq) FROM changes), 0) AS high,
       (SELECT min(cursor) FROM consumers) AS slowest
"""
_DELETE = """
WITH d AS (
    DELETE FROM changes WHERE seq IN (
        SELECT seq FROM changes WHERE seq <= $1 AND captured_at < $2 ORDER BY seq LIMIT $3
    ) RETURNING seq
)
SELECT count(*) AS n, max(seq) AS last FROM d
"""
_COUNT = """
SELECT count(*) AS n, max(seq) AS last FROM changes WHERE seq <= $1 AND captured_at < $2
"""


async def prune(
    engine: AsyncEngine,
    older_than_days: float,
    *,
    force: bool = False,
    dry_run: bool = False,
    now: datetime | None = None,
) -> PruneResult:
    """Delete what may go (see the module doc); with `dry_run`, only count."""
    cutoff = (now or datetime.now(UTC)) - timedelta(days=older_than_days)
    deleted = 0
    last_deleted = 0
    async with engine.connect() as conn:
        raw = await raw_connection(conn)
        while True:
            async with raw.transaction():
                await raw.execute("SELECT pg_advisory_xact_lock($1, $2)", *RETENTION_LOCK)
                b = await raw.fetchrow(_BOUNDS)
                high = int(b["high"])
                bound = high - 1  # the newest row always stays: seq continues from it
                if not force and b["slowest"] is not None:
                    bound = min(bound, int(b["slowest"]))
                if dry_run:
                    r = await raw.fetchrow(_COUNT, bound, cutoff)
                else:
                    r = await raw.fetchrow(_DELETE, bound, cutoff, BATCH)
            deleted += int(r["n"])
            last_deleted = max(last_deleted, int(r["last"] or 0))
            if dry_run or int(r["n"]) < BATCH:
                break
        old = await raw.fetchrow(
            "SELECT count(*) AS n, max(seq) AS last FROM changes"
            " WHERE seq < $1 AND captured_at < $2",
            high,
            cutoff,
        )
        if not dry_run:
            kept_old, last_old = int(old["n"]), int(old["last"] or 0)
        else:
            kept_old, last_old = int(old["n"]) - deleted, int(old["last"] or 0)
        rows = await raw.fetch("SELECT name, cursor FROM consumers ORDER BY cursor, name")
    cursors = [(str(r["name"]), int(r["cursor"])) for r in rows]
    # Consumers that will never see rows that went: their cursor is below a deleted seq.
    broken = tuple(c for c in cursors if c[1] < last_deleted) if force else ()
    # Consumers keeping old rows: their cursor is below an old row that stays.
    holding = tuple(c for c in cursors if c[1] < last_old) if kept_old > 0 else ()
    return PruneResult(deleted, cutoff, bound, kept_old, holding, broken)
