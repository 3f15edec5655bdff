"""An account's run lock: one run per account and database, a session-level advisory lock.

Two accounts' runs may run at once (their units touch disjoint rows: every key leads with the
account); two runs of one account may not.

A session lock is released when its session ends, silently: a killed backend, an idle timeout, a
pooler, a failover. `RunLock.check` finds that out and takes the lock again when no other run has
taken it meanwhile; whatever happened, a unit commits only while its run is still `running` (the
fence in store/unit.py), so a lost lock never lets two runs both write.
"""

from __future__ import annotations

import contextlib
import hashlib

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from syncsvc.errors import RunLockedError
from syncsvc.logs import get_logger
from syncsvc.settings import DEFAULT_ACCOUNT
from syncsvc.store.boundary import DB_ERRORS, boundary

log = get_logger(__name__)

# pg_advisory_lock key of the implicit account's runs: the first 8 bytes of sha1("syncsvc.run"),
# the key of "one run per database" before there were accounts (a tool watching pg_locks for it
# keeps working for a single-account deployment).
RUN_LOCK_KEY = 0x2A5F_1B3C_9D4E_7061

PING = sa.select(1)
RUN_STATUS = sa.text("SELECT status FROM runs WHERE id = :id")


def run_lock_key(account: str = DEFAULT_ACCOUNT) -> int:
    """The advisory lock key of `account`'s runs (a signed bigint, as PostgreSQL takes it)."""
    if account == DEFAULT_ACCOUNT:
        return RUN_LOCK_KEY
    digest = hashlib.sha1(f"syncsvc.run:{account}".encode()).digest()  # noqa: S324 (a key, no MAC)
    return int.from_bytes(digest[:8], "big", signed=True)


class RunLock:
    """`account`'s run lock on a connection of its own (see the module doc)."""

    def __init__(self, engine: AsyncEngine, account: str = DEFAULT_ACCOUNT) -> None:
        self.engine = engine
        self.account = account
        key = run_lock_key(account)
        self._wait = sa.select(sa.func.pg_advisory_lock(key))
        self._try = sa.select(sa.func.pg_try_advisory_lock(key))
        self._unlock = sa.select(sa.func.pg_advisory_unlock(key))
        self.conn: AsyncConnection | None = None

    async def acquire(self, *, wait: bool) -> None:
        with boundary("could not take the run lock"):
            conn = await self.engine.connect()
            try:
                if wait:
                    await conn.execute(self._wait)
                elif not await conn.scalar(self._try):
                    whose = "" if self.account == DEFAULT_ACCOUNT else f" of account {self.account}"
                    raise RunLockedError(
                        f"another syncsvc run{whose} is in progress on this database; wait for it"
                        " or pass --wait"
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
            await conn.execute(self._unlock)
            await conn.commit()
        with contextlib.suppress(Exception):
            await conn.close()
