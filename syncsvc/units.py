"""The units of a run: one fetch of one resource for one scope, and how a run's units are planned.

A plan is data: `plan` lists the units of the resources and events a run syncs (`event=all` where
the resource and the token allow it, one unit per event otherwise), `fallback` the per-event units
that replace a refused or failed `event=all` unit. The scheduler (syncsvc/scheduler.py) runs them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from syncsvc.catalog import EVENT_ALL, Resource, resolve
from syncsvc.errors import NoAccountAccessError, SyncError
from syncsvc.scope import Scope
from syncsvc.settings import Settings
from syncsvc.store.jobs import QueuedUnit
from syncsvc.store.unit import ApplyResult
from syncsvc.vocab import RunStatus, UnitStatus


@dataclass(frozen=True, slots=True)
class Unit:
    """One fetch of one resource for one scope."""

    resource: Resource
    event: str | None  # the `event` parameter: "all", a GUID, or None (the home event)
    covered: tuple[str, ...] = ()  # events an `event=all` dump speaks for
    # The account-wide `event=all` unit. Set, not inferred from `event`: an event's GUID may
    # itself be "all", and that per-event unit must never be read as every event.
    account_wide: bool = False

    @property
    def scope(self) -> Scope:
        """What the unit's dump speaks for (its str() is recorded on the fetch row)."""
        if not self.resource.per_event:
            return Scope.account()
        if self.account_wide:
            return Scope.every_event()
        return Scope.home() if self.event is None else Scope.of_event(self.event)

    @property
    def name(self) -> str:
        return f"{self.resource.entity}:{self.scope}"

    def queued(self) -> QueuedUnit:
        """The unit as a queued job's row records it."""
        return QueuedUnit(
            resource=self.resource.path,
            entity=self.resource.entity,
            scope=str(self.scope),
            event=self.event,
            covered=self.covered,
            account_wide=self.account_wide,
        )

    @classmethod
    def from_queued(cls, q: QueuedUnit) -> Unit:
        return cls(resolve(q.resource), q.event, q.covered, account_wide=q.account_wide)


@dataclass(slots=True)
class UnitOutcome:
    unit: Unit
    status: UnitStatus  # final once the unit is done: applied, held, failed, superseded, ...
    fetch_id: int | None = None
    result: ApplyResult | None = None
    records: int = 0
    bytes: int = 0
    attempts: int = 0
    seconds: float = 0.0
    error: SyncError | None = None


def run_status(
    units: Sequence[tuple[UnitStatus, str]], error: str | None
) -> tuple[RunStatus, str | None]:
    """A run's status and message from its units' final states (and names): the same rules for
    a run whose units ran in its own process and for one whose units ran on workers."""
    final = [(s, n) for s, n in units if s != UnitStatus.SUPERSEDED]
    failed = [n for s, n in final if s == UnitStatus.FAILED]
    skipped = [n for s, n in final if s in (UnitStatus.SKIPPED, UnitStatus.CANCELLED)]
    held = [n for s, n in final if s == UnitStatus.HELD]
    applied = [n for s, n in final if s == UnitStatus.APPLIED]
    status: RunStatus
    if error is not None or (failed and not applied):
        status = RunStatus.FAILED
    elif skipped:
        # Units are skipped or cancelled only once the run was told to stop (a signal to
        # serve) or lost its lock: it did not finish.
        status = RunStatus.INTERRUPTED
    elif failed:
        status = RunStatus.PARTIAL
    elif held:
        status = RunStatus.HELD
    else:
        status = RunStatus.SUCCEEDED
    if error is None and (failed or skipped or held):
        parts = []
        if failed:
            parts.append(f"{len(failed)} unit(s) failed: " + ", ".join(failed[:5]))
        if held:
            parts.append(f"{len(held)} unit(s) held for mass deletes (re-run with --override-hold)")
        if skipped:
            parts.append(f"{len(skipped)} unit(s) not started (stopped)")
        error = "; ".join(parts)
    return status, error


def plan(
    resources: Sequence[Resource],
    events: Sequence[str],
    *,
    use_event_all: bool = True,
    account_level: bool = True,
) -> list[Unit]:
    """The data units of a run: `event=all` where allowed, otherwise one unit per event."""
    units: list[Unit] = []
    for resource in resources:
        if use_event_all and account_level and resource.allows_event_all:
            units.append(Unit(resource, EVENT_ALL, tuple(events), account_wide=True))
        elif not account_level:
            units.append(Unit(resource, None))
        else:
            units.extend(Unit(resource, guid) for guid in events)
    return units


def fallback(unit: Unit, error: SyncError) -> list[Unit]:
    """The units replacing a failed `event=all` unit."""
    if isinstance(error, NoAccountAccessError):
        # Without account-level access only the endpoint's own event can be read.
        return [Unit(unit.resource, None)]
    return [Unit(unit.resource, guid) for guid in unit.covered]


def select_events(settings: Settings, guids: Sequence[str]) -> list[str]:
    include = set(settings.events_include)
    exclude = set(settings.events_exclude)
    return [g for g in guids if (not include or g in include) and g not in exclude]
