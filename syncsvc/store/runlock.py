"""An account's run lock: one run per account and database, a session-level advisory lock.

Two accounts' runs may run at once (their units touch disjoint rows: every key leads with the
account); two runs of one account may not.

A session lock is released when its session ends, silently: a killed backend, an idle timeout, a
pooler, a failover. `RunLock.check` finds that out and takes the lock again when no other run has
taken it meanwhile; whatever happened, a unit commits only while its run is still `running` (the
fence in store/unit.py), so a lost lock never lets two runs both write.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
from typing import Any

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


async def _drop(conn: AsyncConnection) -> None:
    """Close a connection whose state is unknown, never handing it back to the pool."""
    with contextlib.suppress(Exception):
        await conn.invalidate()
    with contextlib.suppress(Exception):
        await conn.close()


def _spawn(call: Any) -> asyncio.Future[Any]:
    # Its outcome is retrieved even when nobody awaits it (a cancelled caller's statement).
    task: asyncio.Future[Any] = asyncio.ensure_future(call)
    task.add_done_callback(lambda t: t.cancelled() or t.exception())
    return task


class LockSession:
    """One connection holding several accounts' run locks: a planner running every account at
    once (executor = queue) holds one connection for all of them, not one each (20 accounts on a
    100-connection server ran out of connections). Its users take turns on it.

    Advisory locks are re-entrant within a session, so the session itself refuses a key it
    already holds: two runs of one account never both "take" it here. Every call completes even
    when its caller is cancelled (a statement cut short leaves the connection in an unknown state,
    and discarding it would end every other account's lock too)."""

    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine
        self.conn: AsyncConnection | None = None
        # Which connection: a lock taken on an earlier one was released when that one ended.
        self.generation = 0
        self.held: set[int] = set()
        self._turn = asyncio.Lock()

    async def try_lock(self, key: int) -> int | None:
        """Take `key` if free: the generation it is held on, or None."""
        generation: int | None = await self._shielded(self._try_lock(key))
        return generation

    async def ping(self, generation: int) -> bool:
        """Whether the connection of `generation` is still this session's, and alive."""
        alive: bool = await self._shielded(self._ping(generation))
        return alive

    async def unlock(self, key: int, generation: int) -> None:
        await self._shielded(self._unlock(key, generation))

    async def _shielded(self, call: Any) -> Any:
        return await asyncio.shield(_spawn(call))

    async def _try_lock(self, key: int) -> int | None:
        async with self._turn:
            if key in self.held:
                return None
            if self.conn is None:
                self.conn = await self.engine.connect()
                self.generation += 1
            got = await self._scalar(sa.select(sa.func.pg_try_advisory_lock(key)))
            if not got:
                return None
            self.held.add(key)
            return self.generation

    async def _ping(self, generation: int) -> bool:
        async with self._turn:
            if self.conn is None or generation != self.generation:
                return False
            await self._scalar(PING)
            return True

    async def _unlock(self, key: int, generation: int) -> None:
        async with self._turn:
            if self.conn is None or generation != self.generation or key not in self.held:
                return
            self.held.discard(key)
            await self._scalar(sa.select(sa.func.pg_advisory_unlock(key)))

    async def _scalar(self, stmt: Any) -> Any:
        assert self.conn is not None
        try:
            value = await self.conn.scalar(stmt)
            await self.conn.commit()
        except BaseException:
            # Dead, or its state unknown: every lock on it ends with it (each RunLock finds out
            # by the generation).
            self._discard()
            raise
        return value

    def _discard(self) -> None:
        conn, self.conn = self.conn, None
        self.held.clear()
        if conn is not None:
            _spawn(_drop(conn))

    async def close(self) -> None:
        """End the session: every lock still on it is released with it."""
        async with self._turn:
            conn, self.conn = self.conn, None
            self.held.clear()
            if conn is not None:
                with contextlib.suppress(Exception):
                    await conn.close()


class RunLock:
    """`account`'s run lock on a connection of its own, or on a LockSession shared with other
    accounts' runs (see the module doc)."""

    def __init__(
        self,
        engine: AsyncEngine,
        account: str = DEFAULT_ACCOUNT,
        session: LockSession | None = None,
    ) -> None:
        self.engine = engine
        self.account = account
        self.session = session
        self.key = key = run_lock_key(account)
        self._wait = sa.select(sa.func.pg_advisory_lock(key))
        self._try = sa.select(sa.func.pg_try_advisory_lock(key))
        self._unlock = sa.select(sa.func.pg_advisory_unlock(key))
        self.conn: AsyncConnection | None = None  # held on a connection of its own
        self._generation: int | None = None  # held on the session's connection of this generation

    def _locked(self) -> RunLockedError:
        whose = "" if self.account == DEFAULT_ACCOUNT else f" of account {self.account}"
        return RunLockedError(
            f"another syncsvc run{whose} is in progress on this database; wait for it"
            " or pass --wait"
        )

    async def acquire(self, *, wait: bool) -> None:
        if self.session is not None and not wait:
            # Waiting would block the shared connection for every other account: a run that
            # waits for its lock waits on a connection of its own.
            with boundary("could not take the run lock"):
                generation = await self.session.try_lock(self.key)
            if generation is None:
                raise self._locked()
            self._generation = generation
            return
        with boundary("could not take the run lock"):
            conn = await self.engine.connect()
            try:
                if wait:
                    await conn.execute(self._wait)
                elif not await conn.scalar(self._try):
                    raise self._locked()
                await conn.commit()
            except BaseException:
                await conn.close()
                raise
        self.conn = conn

    async def _alive(self, run_id: int) -> bool:
        """Whether the session this lock was taken on is still the one holding it."""
        conn = self.conn
        if conn is not None:
            try:
                await conn.execute(PING)
                await conn.commit()
                return True
            except DB_ERRORS:
                log.warning("run_lock_session_lost", run_id=run_id)
                await _drop(conn)
                self.conn = None
                return False
        if self.session is not None and self._generation is not None:
            try:
                if await self.session.ping(self._generation):
                    return True
            except DB_ERRORS:
                pass
            log.warning("run_lock_session_lost", run_id=run_id)
            self._generation = None
        return False

    async def check(self, run_id: int) -> bool:
        """True while this run may go on writing: its lock session is alive, or the lock was
        free to take again and the run is still `running`. A database error is a StoreError
        (ask again)."""
        if await self._alive(run_id):
            return True
        try:
            await self.acquire(wait=False)
        except RunLockedError:
            return False  # another run holds it now
        with boundary("could not read the run's status"):
            async with self.engine.connect() as conn:
                status = await conn.scalar(RUN_STATUS, {"id": run_id})
        if status == "running":
            log.warning("run_lock_retaken", run_id=run_id)
            return True
        await self.release()
        return False

    async def release(self) -> None:
        conn, self.conn = self.conn, None
        generation, self._generation = self._generation, None
        if conn is not None:
            with contextlib.suppress(Exception):
                await conn.execute(self._unlock)
                await conn.commit()
            with contextlib.suppress(Exception):
                await conn.close()
        elif self.session is not None and generation is not None:
            with contextlib.suppress(Exception):
                await self.session.unlock(self.key, generation)
