"""Vanished events: when an event's deletion is applied, its users, sessions and exhibitors go too.

A complete `event.do` that no longer lists an event deletes that event like any record, but no
later dump speaks for the event's own records, so they would stay live forever under a deleted
event. Each run therefore plans, for every (resource, event) with live rows under a deleted
event, a unit whose complete dump is empty: the ordinary diff/apply path deletes every live row
of that scope, one change record each, in one transaction, under the mass-delete hold like any
other delete (a held scope is retried by every run until it is applied with --override-hold).
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from sqlalchemy.ext.asyncio import AsyncEngine

from syncsvc import logs
from syncsvc.errors import RunFencedError, SyncError
from syncsvc.store import read
from syncsvc.store import runs as run_rows
from syncsvc.store.unit import UnitWriter
from syncsvc.vocab import UnitStatus

if TYPE_CHECKING:
    from syncsvc.scheduler import Runner, Unit

log = logs.get_logger(__name__)

REASON = "the event was deleted: its records go with it"


async def plan(engine: AsyncEngine) -> list[Unit]:
    """One unit per (resource, deleted event) that still has live records."""
    from syncsvc.scheduler import Unit

    return [Unit(resource, guid) for resource, guid in await read.orphaned_scopes(engine)]


async def apply(runner: Runner, units: list[Unit]) -> None:
    """Apply each unit as an empty complete dump of its event, recorded like any unit."""
    from syncsvc.scheduler import UnitOutcome

    for unit in units:
        outcome = UnitOutcome(unit, UnitStatus.PENDING)
        if runner.stopping:
            outcome.status = UnitStatus.SKIPPED
            runner._done(outcome)
            continue
        outcome.fetch_id = await run_rows.create_fetch(
            runner.engine, run_id=runner.run_id, resource=unit.resource, scope=unit.scope
        )
        started = time.monotonic()
        try:
            async with UnitWriter(
                runner.engine,
                run_id=runner.run_id,
                fetch_id=outcome.fetch_id,
                resource=unit.resource,
                scope=unit.scope,
            ) as writer:
                result = await writer.apply(
                    complete=True, hold=runner.hold, override_hold=runner.override_hold
                )
            outcome.result = result
            outcome.status = UnitStatus(result.status)
            outcome.seconds = time.monotonic() - started
            await run_rows.finish_fetch(
                runner.engine,
                outcome.fetch_id,
                status=result.status,
                attempts=0,
                bytes_read=0,
                details={"cascade": REASON},
            )
            runner._count_applied(unit, result, 0)
            log.info(
                "event_records_deleted",
                unit=unit.name,
                status=result.status,
                deleted=result.deleted,
            )
        except RunFencedError:
            raise  # a newer run owns the database: the run stops (see scheduler)
        except SyncError as exc:
            outcome.status = UnitStatus.FAILED
            outcome.error = exc
            await runner._record_failure(outcome, exc)
            log.warning("unit_failed", unit=unit.name, error=str(exc))
        runner._done(outcome)
