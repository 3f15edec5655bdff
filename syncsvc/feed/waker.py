"""LISTEN for committed changes on a connection of its own, with a poll fallback.

Readers subscribe and wait; a notification (the unit's commit) wakes every subscriber at once. The
listening connection is re-opened when it drops; until then, and for any notification that never
arrives, readers wake every `poll` seconds anyway and look for themselves, so a missed
notification costs at most that long, never a row (readers always read `seq > cursor`).
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import asyncpg

from syncsvc.feed.notify import CHANNEL
from syncsvc.logs import get_logger

log = get_logger(__name__)


class Subscription:
    """One reader's wake-up flag."""

    def __init__(self) -> None:
        self._event = asyncio.Event()

    def wake(self) -> None:
        self._event.set()

    async def wait(self, seconds: float) -> bool:
        """Until woken or `seconds` pass; True when woken. Clears the flag."""
        try:
            await asyncio.wait_for(self._event.wait(), timeout=seconds)
            return True
        except TimeoutError:
            return False
        finally:
            self._event.clear()


class Waker:
    """`async with Waker(dsn) as waker:`; `sub = waker.subscribe()`; `await sub.wait(poll)`."""

    def __init__(self, dsn: str, *, reconnect_delay: float = 1.0) -> None:
        self._dsn = dsn
        self._subs: list[Subscription] = []
        self._conn: Any = None
        self._task: asyncio.Task[None] | None = None
        self._lost = asyncio.Event()
        self._reconnect_delay = reconnect_delay
        self.high = 0  # the highest seq notified so far
        self.listening = asyncio.Event()

    def subscribe(self) -> Subscription:
        sub = Subscription()
        self._subs.append(sub)
        return sub

    def unsubscribe(self, sub: Subscription) -> None:
        with contextlib.suppress(ValueError):
            self._subs.remove(sub)

    def _notified(self, _conn: Any, _pid: int, _channel: str, payload: str) -> None:
        with contextlib.suppress(ValueError):
            self.high = max(self.high, int(payload))
        for sub in self._subs:
            sub.wake()

    def _terminated(self, _conn: Any) -> None:
        self._lost.set()

    async def _connect(self) -> None:
        conn = await asyncpg.connect(self._dsn)
        await conn.add_listener(CHANNEL, self._notified)
        conn.add_termination_listener(self._terminated)
        self._conn = conn
        self.listening.set()
        # Anything committed while we were not listening: let every reader look.
        for sub in self._subs:
            sub.wake()

    async def _keep(self) -> None:
        while True:
            await self._lost.wait()
            self._lost.clear()
            self.listening.clear()
            log.warning("feed_listen_lost", retry_seconds=self._reconnect_delay)
            while True:
                await asyncio.sleep(self._reconnect_delay)
                try:
                    await self._connect()
                    log.info("feed_listen_restored")
                    break
                except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError):
                    continue

    async def __aenter__(self) -> Waker:
        try:
            await self._connect()
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            # Polling alone still delivers everything: start without LISTEN and keep trying.
            log.warning("feed_listen_failed", error=type(exc).__name__)
            self._lost.set()
        self._task = asyncio.create_task(self._keep(), name="feed-listen")
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._conn is not None:
            with contextlib.suppress(Exception):
                await self._conn.close(timeout=2)
