"""Who holds an account's run lock: the run, since when, which process on which host."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from syncsvc.settings import DEFAULT_ACCOUNT
from syncsvc.store.runlock import run_lock_key
from syncsvc.store.schema import runs


@dataclass(frozen=True, slots=True)
class Holder:
    """The run holding the lock (its row may not exist yet in the instant after the lock)."""

    run_id: int | None
    started_at: datetime | None
    pid: int | None
    hostname: str | None

    def describe(self) -> str:
        if self.run_id is None:
            return "another syncsvc run (starting)"
        where = f"pid {self.pid} on {self.hostname}" if self.pid else "another process"
        since = f"{self.started_at:%Y-%m-%d %H:%M:%S}Z" if self.started_at else "?"
        return f"run {self.run_id} (started {since}, {where})"


async def holder(engine: AsyncEngine, account: str = DEFAULT_ACCOUNT) -> Holder | None:
    """The run holding `account`'s lock now, or None when nobody does."""
    key = run_lock_key(account) & 0xFFFF_FFFF_FFFF_FFFF  # pg_locks shows the halves unsigned
    hi, lo = key >> 32, key & 0xFFFF_FFFF
    async with engine.connect() as conn:
        held = await conn.scalar(
            sa.text(
                "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted"
                " AND classid::bigint = :hi AND objid::bigint = :lo AND objsubid = 1"
                " AND database = (SELECT oid FROM pg_database WHERE datname = current_database())"
            ),
            {"hi": hi, "lo": lo},
        )
        if not held:
            return None
        row = (
            await conn.execute(
                sa.select(runs.c.id, runs.c.started_at, runs.c.pid, runs.c.hostname)
                .where(runs.c.status == "running", runs.c.account == account)
                .order_by(runs.c.id.desc())
                .limit(1)
            )
        ).first()
    if row is None:
        return Holder(None, None, None, None)
    return Holder(row[0], row[1], row[2], row[3])
