"""The retry policy: backoff with full jitter, Retry-After, an attempt limit and a time budget."""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field

from syncsvc.errors import RateLimitedError
from syncsvc.settings import Settings


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """When to try a failed call again, as data; `next_delay` is pure given `random`.

    `max_attempts` counts the first call. `budget` bounds the total seconds spent waiting
    between attempts of one call: a delay that would cross it is not taken.
    """

    max_attempts: int = 5
    base: float = 1.0
    cap: float = 60.0
    budget: float = 300.0
    # The jitter source (a uniform float in [0, 1)); injected so tests are deterministic.
    random: Callable[[], float] = field(default=random.random, compare=False, repr=False)

    @classmethod
    def from_settings(
        cls, settings: Settings, random: Callable[[], float] | None = None
    ) -> RetryPolicy:
        kw = {} if random is None else {"random": random}
        return cls(
            max_attempts=settings.retry_attempts,
            base=settings.retry_base_delay,
            cap=settings.retry_max_delay,
            budget=settings.retry_budget,
            **kw,
        )

    def backoff_ceiling(self, attempt: int) -> float:
        """The upper bound of the jittered delay after failed attempt number `attempt` (1-based)."""
        # min() before the power would overflow for absurd attempt numbers; cap the exponent.
        return min(self.cap, self.base * 2.0 ** min(attempt - 1, 64))

    def next_delay(self, attempt: int, error: BaseException, spent: float = 0.0) -> float | None:
        """Seconds to wait before attempt `attempt + 1`, or None to give up.

        None when `error` is not retryable (no class-level `retryable = True`), when `attempt`
        reached `max_attempts`, or when waiting would take the call past `budget` (`spent` is
        what it already waited). With ceiling = min(cap, base * 2 ** (attempt - 1)): a rate
        limit (RateLimitedError) waits uniform(ceiling / 2, ceiling), or the server's
        Retry-After when that is longer (honoured as given, never shortened by the cap); any
        other retryable error waits uniform(0, ceiling) (full jitter). An error whose class
        sets `retry_at_once` (SegmentRefused: the next attempt parses the dump another way) is
        retried at once, whatever the attempt count and budget.
        """
        if not getattr(error, "retryable", False):
            return None
        if getattr(error, "retry_at_once", False):
            return 0.0
        if attempt >= self.max_attempts:
            return None
        ceiling = self.backoff_ceiling(attempt)
        if isinstance(error, RateLimitedError):
            # Never sooner than half the ceiling: a `Retry-After: 0` (or a full-jitter draw
            # near 0) would otherwise send the retry at once, into the same limit.
            floor = ceiling / 2
            delay = max(error.retry_after or 0.0, floor + self.random() * floor)
        else:
            delay = self.random() * ceiling
        if spent + delay > self.budget:
            return None
        return delay
