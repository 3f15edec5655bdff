"""The database's run lock: one run per database, a session-level advisory lock.

A session lock is released when its session ends, silently: a killed backend, an idle timeout, a
pooler, a failover. `RunLock.check` finds that out and takes the lock again when no other run has
taken it meanwhile; whatever happened, a unit commits only while its run is still `running` (the
fence in store/unit.py), so a lost lock never lets two runs both write.
"""

from __future__ import annotations

import contextlib

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from syncsvc.errors import RunLockedError
from syncsvc.logs import get_logger
from syncsvc.store.boundary import DB_ERRORS, boundary

log = get_logger(__name__)

# pg_advisory_lock key of "one run per database": the first 8 bytes of sha1("syncsvc.run").
RUN_LOCK_KEY = 0x2A5F_1B3C_9D4E_7061

WAIT_FOR_LOCK = sa.select(sa.func.pg_advisory_lock(RUN_LOCK_KEY))
TRY_LOCK = sa.select(sa.func.pg_try_advisory_lock(RUN_LOCK_KEY))
UNLOCK = sa.select(sa.func.pg_advisory_unlock(RUN_LOCK_KEY))
PING = sa.select(1)
RUN_STATUS = sa.text("SELECT status FROM runs WHERE id = :id")


class RunLock:
    """The run lock on a connection of its own (see the module doc)."""

    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine
        self.conn: AsyncConnection | None = None

    async def acquire(self, *, wait: bool) -> None:
        with boundary("could not take the run lock"):
            conn = await self.engine.connect()
            try:
                if wait:
                    await conn.execute(WAIT_FOR_LOCK)
                elif not await conn.scalar(TRY_LOCK):
                    raise RunLockedError(
                        "another syncsvc run is in progress on this database; wait for it or"
                        " pass --wait"
                    )
                await conn.commit()
            except BaseException:
                await conn.close()
                raise
        self.conn = conn

    async def check(self, run_id: int) -> bool:
        """True while this run may go on writing: its lock session is alive, or the lock was
        free to take again and the run is still `running`. A database error is a StoreError
        (ask again)."""
        conn = self.conn
        if conn is not None:
            try:
                await conn.execute(PING)
                await conn.commit()
                return True
            except DB_ERRORS:
                log.warning("run_lock_session_lost", run_id=run_id)
                with contextlib.suppress(Exception):
                    await conn.invalidate()
                with contextlib.suppress(Exception):
                    await conn.close()
                self.conn = None
        try:
            await self.acquire(wait=False)
        except RunLockedError:
            return False  # another run holds it now
        assert self.conn is not None
        with boundary("could not read the run's status"):
            status = await self.conn.scalar(RUN_STATUS, {"id": run_id})
            await self.conn.commit()
        if status == "running":
            log.warning("run_lock_retaken", run_id=run_id)
            return True
        await self.release()
        return False

    async def release(self) -> None:
        conn, self.conn = self.conn, None
        if conn is None:
            return
        with contextlib.suppress(Exception):
            await conn.execute(UNLOCK)
            await conn.commit()
        with contextlib.suppress(Exception):
            await conn.close()
