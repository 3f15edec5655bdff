"""The mass-delete hold: which scopes of a diffed unit are held back (pure, no database).

A unit's diff gives, per scope (an event, or the account for event.do), the distinct rows the
dump staged and the inserts and deletes it would apply. The scope's live rows before the unit
are derived from those (staged - inserts + deletes): no scan of the current-state table. A
scope whose deletes trip the policy is held, nothing of it applied, unless the run overrides the
hold, in which case it is applied and reported as overridden.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from syncsvc.settings import Settings


@dataclass(frozen=True, slots=True)
class HoldPolicy:
    """The mass-delete hold: a scope with at least `min_rows` live rows is held when the unit
    would delete more than `ratio` of them."""

    ratio: float = 0.5
    min_rows: int = 20

    @classmethod
    def from_settings(cls, settings: Settings) -> HoldPolicy:
        return cls(ratio=settings.delete_hold_ratio, min_rows=settings.delete_hold_min_rows)

    def holds(self, live: int, deletes: int) -> bool:
        return live >= self.min_rows and deletes > self.ratio * live


@dataclass(frozen=True, slots=True)
class HeldScope:
    """One event (or '*' for event.do) whose deletes tripped the hold."""

    event_guid: str
    live: int
    deletes: int


@dataclass(frozen=True, slots=True)
class ScopeDiff:
    """One scope's figures from a unit's diff."""

    name: str  # an event GUID, or '*' for event.do
    staged: int  # distinct rows the dump holds for it (duplicates and rejects gone)
    inserts: int
    deletes: int

    @property
    def live(self) -> int:
        """Live rows before the unit: every staged row is live after it, but the inserts."""
        return self.staged - self.inserts + self.deletes


@dataclass(frozen=True, slots=True)
class HoldDecision:
    held: tuple[HeldScope, ...] = ()  # not applied
    overridden: tuple[HeldScope, ...] = ()  # would have been held; applied by override


def decide_holds(
    policy: HoldPolicy, scopes: Iterable[ScopeDiff], *, override: bool
) -> HoldDecision:
    """The scopes the policy holds (by name), held or, with `override`, reported overridden."""
    tripped = sorted(
        (
            HeldScope(s.name, s.live, s.deletes)
            for s in scopes
            if s.deletes and policy.holds(s.live, s.deletes)
        ),
        key=lambda h: h.event_guid,
    )
    if override:
        return HoldDecision(overridden=tuple(tripped))
    return HoldDecision(held=tuple(tripped))
