"""One rate budget per API token, shared through PostgreSQL by every process that uses the token.

The Conference API limits a token, not a process: request starts per period, requests in
flight, and a refusal (429, code 301) for whoever goes over. With `rate_budget = shared`, every
process (a run, a worker) takes its starts and in-flight places from the token's row in
`rate_budget`, under the rules of syncsvc/budget.py's `Budget`, which a single process keeps alone
(`rate_budget = local`, the default). `open_budget` gives the one the settings ask for.

How the rules are kept across processes (the SQL functions are migration 0008's):

- **In flight.** Each place held is a `rate_budget_lease` row naming its holder (this process)
  and an expiry the holder's heartbeat pushes on every `ttl / 3` seconds while the request runs.
  A process killed mid-request stops renewing, and its places count as free `ttl` seconds later
  (`rate_budget_lease_ttl`), whoever asks next. A freed place is announced (NOTIFY rate_budget);
  each process listens on one connection, and a caller refused for want of a place waits for it
  (or FREE_WAIT at most: an expiry announces nothing).
- **Starts.** `rate_budget_take` grants the earliest start the window and a pause allow, never
  before the last grant (first come, first served), and only if it is at most `horizon` ahead;
  else it says when to ask again. The grant is recorded in the row at once, so the window is
  counted in granted start times. A caller that wakes for its start later than LATE_SHARE of the
  window's stretch (`(safety - 1) * period`) gives it up (its start leaves the window: it was
  never made) and asks again: grants `rate` apart are `safety` periods apart, so a late start
  could otherwise put `rate + 1` arrivals into one of the server's windows; the other share is
  left for network jitter, as in `Budget`. The caller sleeps until `wait` seconds after the answer
  came (never early) and counts its lateness from `wait` seconds after the call was sent (never
  too little): the database's clock is never compared with ours, so the round trip counts as
  lateness.
- **Back off.** `back_off` pauses this process at once, then `rate_budget_backoff` pauses every
  process (the row's `paused_until`, so no start is granted inside the pause) and halves the
  rate once per pause; its NOTIFY makes each process drop a grant it holds for a start inside the
  pause. `succeeded` is counted here and sent with the next call, so the climb back costs no
  round trip of its own.

Only one caller per process asks the database at a time (arrival order, as in `Budget`), so the
row's lock sees at most one caller per process; it lets the next caller ask once it holds its
grant, and sleeps until the grant's time on its own.

The row is keyed by an HMAC-SHA256 of the token with a random salt kept in the database
(`rate_budget_salt`): never the token, and not a plain digest a table of likely tokens could be
matched against. Someone who can read the database can still test guesses of a short token
against it; Conference API tokens are long random strings.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import os
import secrets
import socket
import time
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any

import asyncpg
from sqlalchemy.ext.asyncio import AsyncEngine

from syncsvc import logs
from syncsvc.budget import RATE_SAFETY, Budget, RateBudget
from syncsvc.settings import Settings
from syncsvc.store.boundary import DB_ERRORS, boundary, one_line
from syncsvc.store.db import libpq_url

log = logs.get_logger(__name__)

CHANNEL = "rate_budget"
# A start is granted at most this far ahead (and at most a quarter period): the caller sleeps
# until it, so a short horizon keeps grants that a pause must cancel few.
HORIZON = 0.25
# Connections of the pool every budget of a process shares (one call at a time per token).
POOL_SIZE = 2
# A caller refused for want of a place waits this long at most for a `free` notification.
FREE_WAIT = 0.25
# The share of the window's stretch a start may be late by; the rest absorbs network jitter.
LATE_SHARE = 0.5


def token_key(salt: str, token: str) -> str:
    """The bucket's key for `token`: never the token itself (see the module docstring)."""
    return hmac.new(salt.encode(), token.encode(), hashlib.sha256).hexdigest()


def late_limit(period: float, safety: float = RATE_SAFETY) -> float:
    """Seconds a granted start may be late by and still keep the server's window."""
    return (safety - 1.0) * period * LATE_SHARE


class SharedBudget:
    """`Budget`'s rules for every process of one token; see the module docstring.

    Made by `SharedBudget.open` (one pool, one listening connection, one heartbeat per budget).
    The counters are this process's, for statistics: grants taken, grants given up for a late
    wake-up or a pause, calls of `rate_budget_take`, and the last grant's time.
    """

    def __init__(
        self,
        pool: asyncpg.Pool,
        key: str,
        *,
        rate: int,
        period: float,
        max_in_flight: int,
        ttl: float,
        safety: float = RATE_SAFETY,
    ) -> None:
        self._pool = pool
        self._key = key
        self.configured_rate = rate
        self.period = period
        self.max_in_flight = max_in_flight
        self.ttl = ttl
        self.safety = safety
        self.holder = f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"
        self.horizon = min(HORIZON, period / 4)
        self.late_limit = late_limit(period, safety)
        self._places = asyncio.Semaphore(max_in_flight)
        self._next = asyncio.Lock()  # the one caller of this process asking the database
        self._freed = asyncio.Event()  # a `free` notification since the last refusal
        self._paused_until = 0.0  # time.monotonic(): this process's view of the pause
        self._successes = 0  # successes not yet sent to the database
        self._live: set[int] = set()  # leases this process holds (the heartbeat renews them)
        self._tasks: set[asyncio.Task[None]] = set()  # back-offs on their way to the database
        self._beat: asyncio.Task[None] | None = None
        self.grants = 0
        self.given_up_late = 0
        self.given_up_paused = 0
        self.take_calls = 0
        self.last_grant = 0.0  # the database's clock (epoch seconds): the last start granted here

    @classmethod
    @asynccontextmanager
    async def open(cls, settings: Settings, dsn: str) -> AsyncIterator[SharedBudget]:
        """The budget of `settings`' token in the database at `dsn`, for the block."""
        _, token = settings.require_api()
        rate = max(1, int(settings.rate_limit))  # as Budget.from_settings
        async with AsyncExitStack() as stack:
            with boundary("cannot open the shared rate budget"):
                # One pool and one listening connection per process and database, whatever
                # the number of tokens (a worker serving 20 accounts would hold 80 otherwise).
                pool, listener = await stack.enter_async_context(_connections(dsn))
                await pool.execute(
                    "INSERT INTO rate_budget_salt (salt) VALUES ($1) ON CONFLICT (one) DO NOTHING",
                    secrets.token_hex(32),
                )
                salt = await pool.fetchval("SELECT salt FROM rate_budget_salt")
                key = token_key(salt, token)
                # The settings of the process that opened last are the token's: processes of
                # one token are meant to share them. A lowered rate stays lowered.
                await pool.execute(
                    "INSERT INTO rate_budget AS b"
                    " (token_key, configured, rate_limit, rate_period, max_in_flight)"
                    " VALUES ($1, $2, $2, $3, $4) ON CONFLICT (token_key) DO UPDATE"
                    " SET configured = $2, rate_limit = least(b.rate_limit, $2),"
                    " rate_period = $3, max_in_flight = $4",
                    key,
                    rate,
                    settings.rate_period,
                    settings.max_concurrency,
                )
            budget = cls(
                pool,
                key,
                rate=rate,
                period=settings.rate_period,
                max_in_flight=settings.max_concurrency,
                ttl=settings.rate_budget_lease_ttl,
            )
            with boundary("cannot open the shared rate budget"):
                await listener.listen(budget._heard)
            stack.push_async_callback(_quietly, listener.unlisten(budget._heard))
            stack.push_async_callback(budget._close)
            budget._beat = asyncio.get_running_loop().create_task(budget._heartbeat())
            yield budget

    # --- the Budget interface ------------------------------------------------------------------

    @asynccontextmanager
    async def request(self) -> AsyncIterator[float]:
        """Hold an in-flight place for the block, which starts within the token's start budget.

        Yields the seconds waited once this process's place was taken, as `Budget` does.
        """
        async with self._places:
            started = time.monotonic()
            lease = await self._start()
            try:
                yield time.monotonic() - started
            finally:
                await self._release(lease)

    def back_off(self, seconds: float) -> None:
        """A refusal (429, code 301): pause this process now, every process of the token soon."""
        self._paused_until = max(self._paused_until, time.monotonic() + max(seconds, self.period))
        self._successes = 0
        self._spawn(self._back_off(seconds))

    def succeeded(self) -> None:
        """A call went through: counted toward the climb, sent with the next call."""
        self._successes += 1

    # --- the database --------------------------------------------------------------------------

    async def _start(self) -> int:
        """Wait for a place and a start, and return the lease once the start is due."""
        while True:
            # One caller of this process asks at a time; it lets the next one ask as soon as it
            # holds a grant, so grants close together are taken one round trip apart.
            async with self._next:
                lease, due, earliest, granted = await self._grant()
            try:
                await asyncio.sleep(max(0.0, due - time.monotonic()))
            except BaseException:
                await self._release(lease, unused=granted)
                raise
            now = time.monotonic()
            if now < self._paused_until:
                self.given_up_paused += 1
            elif now - earliest > self.late_limit:
                self.given_up_late += 1
            else:
                self.grants += 1
                self.last_grant = granted
                return lease
            # Given up: the start was never made, so it leaves the window for the next caller.
            await self._release(lease, unused=granted)

    async def _grant(self) -> tuple[int, float, float, float]:
        """(lease, when to start, the earliest the grant can be, the grant in the database's
        clock), once the database grants a start and a place."""
        while True:
            pause = self._paused_until - time.monotonic()
            if pause > 0:
                await asyncio.sleep(pause)
                continue
            successes, self._successes = self._successes, 0
            self._freed.clear()  # before the call: a place freed during it is heard
            sent = time.monotonic()
            with boundary("the shared rate budget"):
                row = await self._pool.fetchrow(
                    "SELECT * FROM rate_budget_take($1, $2, $3, $4, $5, $6)",
                    self._key,
                    self.holder,
                    self.horizon,
                    self.ttl,
                    self.safety,
                    successes,
                )
            answered = time.monotonic()
            self.take_calls += 1
            lease, wait = row["lease_id"], row["wait"]
            if lease is None and wait is None:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._freed.wait(), FREE_WAIT)
                continue
            if lease is None:
                await asyncio.sleep(wait)
                continue
            self._live.add(lease)
            # The database granted the start `wait` seconds after some instant between the call
            # and the answer: never start before the latest it can be, and count lateness from
            # the earliest.
            return int(lease), answered + wait, sent + wait, float(row["start_at"])

    async def _release(self, lease: int, unused: float | None = None) -> None:
        """Give the place back (and an `unused` grant's start); on a database error the place
        frees itself after the lease's ttl, and an unused start only costs rate."""
        self._live.discard(lease)
        successes, self._successes = self._successes, 0
        try:
            # Shielded: a cancelled request still returns its place at once.
            await asyncio.shield(
                self._pool.execute(
                    "SELECT rate_budget_done($1, $2, $3, $4)", self._key, lease, successes, unused
                )
            )
        except DB_ERRORS as exc:
            log.warning("rate_budget_release_failed", error=one_line(exc), ttl=self.ttl)

    async def _back_off(self, seconds: float) -> None:
        try:
            row = await self._pool.fetchrow(
                "SELECT * FROM rate_budget_backoff($1, $2)", self._key, seconds
            )
        except DB_ERRORS as exc:
            log.warning("rate_budget_back_off_failed", error=one_line(exc))
            return
        if row is not None and row["lowered"] is not None:
            log.warning(
                "rate_limit_lowered",
                starts_per_period=row["lowered"],
                period=self.period,
                paused=round(row["pause"], 3),
                shared=True,
            )

    def _heard(self, _conn: Any, _pid: int, _channel: str, payload: str) -> None:
        kind, _, rest = payload.partition(" ")
        key, _, arg = rest.partition(" ")
        if key != self._key:
            return  # another token's budget
        if kind == "free":
            self._freed.set()
        elif kind == "pause":
            # From now, not from the database's instant: the pause ends no sooner here.
            self._paused_until = max(self._paused_until, time.monotonic() + float(arg))

    async def _heartbeat(self) -> None:
        while True:
            await asyncio.sleep(self.ttl / 3)
            if not self._live:
                continue
            try:
                await self._pool.execute(
                    "SELECT rate_budget_renew($1, $2)", list(self._live), self.ttl
                )
            except DB_ERRORS as exc:
                log.warning("rate_budget_renew_failed", error=one_line(exc), ttl=self.ttl)

    def _spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _close(self) -> None:
        if self._beat is not None:
            self._beat.cancel()
            await asyncio.gather(self._beat, return_exceptions=True)
        # A back-off still on its way is for the other processes: it is let arrive.
        await asyncio.gather(*self._tasks, return_exceptions=True)
        with contextlib.suppress(*DB_ERRORS):
            # Places still held (a request that outlived its client) go back now, not at expiry.
            await self._pool.execute("DELETE FROM rate_budget_lease WHERE holder = $1", self.holder)


class _Listener:
    """The process's listening connection, shared by its budgets. asyncpg runs one operation at a
    time on a connection: budgets opening or closing at once (a planner of 20 accounts) would
    send LISTEN and UNLISTEN over each other ("another operation is in progress"), so they take
    turns."""

    def __init__(self, conn: asyncpg.Connection) -> None:
        self.conn = conn
        self._turn = asyncio.Lock()
        self.waiting = 0  # callers waiting for their turn (a test synchronizes on it)

    @asynccontextmanager
    async def _turn_taken(self) -> AsyncIterator[None]:
        self.waiting += 1
        try:
            await self._turn.acquire()
        finally:
            self.waiting -= 1
        try:
            yield
        finally:
            self._turn.release()

    async def listen(self, callback: Any) -> None:
        async with self._turn_taken():
            await self.conn.add_listener(CHANNEL, callback)

    async def unlisten(self, callback: Any) -> None:
        async with self._turn_taken():
            await self.conn.remove_listener(CHANNEL, callback)


# dsn and event loop -> [pool, listener, users]: the connections every budget of the process
# on that database shares.
_SHARED: dict[tuple[str, int], list[Any]] = {}


@asynccontextmanager
async def _connections(dsn: str) -> AsyncIterator[tuple[Any, _Listener]]:
    key = (dsn, id(asyncio.get_running_loop()))
    entry = _SHARED.get(key)
    if entry is None:
        pool = await asyncpg.create_pool(dsn, min_size=1, max_size=POOL_SIZE, reset=_reset)
        try:
            listener = await asyncpg.connect(dsn)
        except BaseException:
            await pool.close()
            raise
        entry = _SHARED.get(key)
        if entry is None:  # no other budget opened them meanwhile
            entry = _SHARED[key] = [pool, _Listener(listener), 0]
        else:
            await listener.close()
            await pool.close()
    entry[2] += 1
    try:
        yield entry[0], entry[1]
    finally:
        entry[2] -= 1
        if entry[2] == 0 and _SHARED.get(key) is entry:
            del _SHARED[key]
            with contextlib.suppress(*DB_ERRORS):
                await entry[1].conn.close()
            with contextlib.suppress(*DB_ERRORS):
                await entry[0].close()


async def _reset(conn: Any) -> None:
    """Nothing more on a budget connection's way back to the pool.

    asyncpg first drops the connection's listeners and rolls back an open transaction, then
    calls this in place of its reset query (unlock advisory locks, close cursors, UNLISTEN, RESET
    ALL): one round trip per budget call (measured: 1,112 of the 12,878 statements of a
    20-account, 260-unit run on 4 workers), for state the budget's calls never leave. They are
    single calls of its SQL functions, which take no advisory lock and set nothing, and its
    LISTEN is on the listener's own connection."""


async def _quietly(awaitable: Any) -> None:
    with contextlib.suppress(*DB_ERRORS):
        await awaitable


@asynccontextmanager
async def open_budget(settings: Settings, engine: AsyncEngine) -> AsyncIterator[RateBudget]:
    """The budget `settings.rate_budget` asks for: this process's own, or the token's shared one
    in the database `engine` is on."""
    if settings.rate_budget == "shared":
        async with SharedBudget.open(settings, libpq_url(engine.url)) as budget:
            yield budget
    else:
        yield Budget.from_settings(settings)
