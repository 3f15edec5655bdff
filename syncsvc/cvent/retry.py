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
        what it already waited). A Retry-After the server sent (RateLimitedError.retry_after)
        is honoured as given, never shortened by the cap; otherwise full jitter:
        uniform(0, min(cap, base * 2 ** (attempt - 1))).
        """
        if not getattr(error, "retryable", False) or attempt >= self.max_attempts:
            return None
        retry_after = error.retry_after if isinstance(error, RateLimitedError) else None
        if retry_after is not None:
            delay = max(0.0, retry_after)
        else:
            delay = self.random() * self.backoff_ceiling(attempt)
        if spent + delay > self.budget:
            return None
        return delay
