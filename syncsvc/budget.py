"""The run's rate and concurrency budget: one object, built once, shared by client and scheduler.

The Conference API limits each token twice, request starts per period and requests in flight,
and answers a caller over either with HTTP 429 or code 301 (docs/conference-api.md). A run keeps
under both with one `Budget`, made by `Budget.from_settings` and handed to the client (every
request is `async with budget.request(): ...`) and to the scheduler (which runs at most
`max_in_flight` units at once, so a unit never waits for an in-flight place; it waits only for
the start rate and a pause).

The rules, as one process keeps them (scale-out, docs/task-queue.md, moves them into
PostgreSQL, shared by every worker, with the same semantics):

- **In flight.** At most `max_in_flight` requests hold a place at once, from before their start
  to the end of their body (`request()`'s block).
- **Starts.** At most `rate` request starts in any window of `period * safety` seconds, a sliding
  window: the (k + rate)-th start comes no sooner than one window after the k-th. The window is
  stretched by `safety` because the server counts arrivals, and network jitter can move a start
  from one of our windows into the server's previous one. Waiters start in arrival order.
- **Back off.** `back_off(seconds)` after a refusal (429, code 301): no request starts before the
  pause ends, however many were waiting. The pause lasts the given seconds and at least one
  `period` (the server's window is likely as long as ours and has not passed). The start rate
  halves, once per pause (refusals of requests already in flight when the budget backed off say
  nothing new), and climbs back by one per `rate` calls reported by `succeeded()`, up to the
  configured rate (AIMD, as TCP does per round trip).

A place is taken before the start is waited for: a start taken while queueing for a place would
be stale by the time the request really starts, and starts would bunch up.
"""

from __future__ import annotations

import asyncio
import collections
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Protocol

from syncsvc import logs
from syncsvc.settings import Settings

log = logs.get_logger(__name__)

# The start window is this much longer than the configured period (see the module docstring).
RATE_SAFETY = 1.05


class RateBudget(Protocol):
    """What the client and the scheduler use of a budget: this module's `Budget` (one process),
    or the one shared through PostgreSQL by every process of a token (syncsvc/store/ratebudget.py),
    which keeps the same rules."""

    @property
    def max_in_flight(self) -> int: ...

    def request(self) -> AbstractAsyncContextManager[float]: ...

    def back_off(self, seconds: float) -> None: ...

    def succeeded(self) -> None: ...


class StartWindow:
    """The request starts of the last `length` seconds: how long until another may start."""

    def __init__(self, length: float) -> None:
        self.length = length
        self._starts: collections.deque[float] = collections.deque()

    def delay(self, now: float, limit: int) -> float:
        """Seconds from `now` until a start keeps at most `limit` starts in any window; 0: now."""
        starts = self._starts
        while starts and starts[0] <= now - self.length:
            starts.popleft()
        if len(starts) < limit:
            return 0.0
        # The start that must leave the window first; with a lowered limit, not the oldest.
        return max(0.0, starts[len(starts) - limit] + self.length - now)

    def take(self, now: float) -> None:
        """Record a start at `now` (the caller saw `delay(now, ...)` return 0)."""
        self._starts.append(now)


class Budget:
    """Requests in flight, request starts per period, and the back-off after a refusal.

    See the module docstring for the rules. `rate` is the start rate in force (lowered by
    `back_off`, raised by `succeeded`); `configured_rate` the one it climbs back to.
    """

    def __init__(
        self,
        rate: int,
        period: float,
        max_in_flight: int,
        *,
        safety: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        if rate < 1 or max_in_flight < 1 or period <= 0 or safety < 1.0:
            raise ValueError("a budget needs rate >= 1, max_in_flight >= 1, period > 0")
        self.configured_rate = rate
        self.rate = rate
        self.period = period
        self.max_in_flight = max_in_flight
        self._clock = clock  # `sleep` must wait in its time: tests pass a clock they advance
        self._sleep = sleep
        self._window = StartWindow(period * safety)
        self._places = asyncio.Semaphore(max_in_flight)
        self._next = asyncio.Lock()  # the one waiter whose start comes next: arrival order
        self._paused_until = 0.0  # no request starts before this (clock): a refusal's pause
        self._successes = 0  # successful calls since the start rate last changed

    @classmethod
    def from_settings(cls, settings: Settings) -> Budget:
        # Starts are whole: a fractional rate_limit rounds down (at least 1).
        return cls(
            max(1, int(settings.rate_limit)),
            settings.rate_period,
            settings.max_concurrency,
            safety=RATE_SAFETY,
        )

    def delay(self) -> float:
        """Seconds until the next request may start, places aside (the pause, the window)."""
        now = self._clock()
        return max(self._paused_until - now, self._window.delay(now, self.rate))

    @asynccontextmanager
    async def request(self) -> AsyncIterator[float]:
        """Hold an in-flight place for the block, which starts within the start budget.

        Yields the seconds waited for the start once the place was taken (a pause, the window),
        for the caller's statistics.
        """
        async with self._places:
            started = self._clock()
            async with self._next:
                # Re-read after every sleep: a refusal may push the pause further meanwhile.
                while (wait := self.delay()) > 0:
                    await self._sleep(wait)
                self._window.take(self._clock())
            yield self._clock() - started

    def back_off(self, seconds: float) -> None:
        """A refusal (429, code 301): pause every start, and halve the start rate once."""
        now = self._clock()
        already_paused = now < self._paused_until
        pause = max(seconds, self.period)
        self._paused_until = max(self._paused_until, now + pause)
        self._successes = 0
        lowered = max(1, self.rate // 2)
        if lowered < self.rate and not already_paused:
            self.rate = lowered
            log.warning(
                "rate_limit_lowered",
                starts_per_period=lowered,
                period=self.period,
                paused=round(pause, 3),
            )

    def succeeded(self) -> None:
        """A call went through: the start rate climbs back by one per `rate` of these."""
        if self.rate >= self.configured_rate:
            return
        self._successes += 1
        if self._successes >= self.rate:
            self.rate += 1
            self._successes = 0
