"""Vanished events: when an event's deletion is applied, its users, sessions and exhibitors go too.

A complete `event.do` that no longer lists an event deletes that event like any record, but no
later dump speaks for the event's own records, so they would stay live forever under a deleted
event. Each run therefore plans, for every (resource, event) with live rows under a deleted
event, a unit whose complete dump is empty (the scheduler applies it): the ordinary diff/apply
path deletes every live row of that scope, one change record each, in one transaction, under the
mass-delete hold like any other delete (a held scope is retried by every run until it is applied
with --override-hold).
"""

from __future__ import annotations

from sqlalchemy.ext.asyncio import AsyncEngine

from syncsvc.catalog import Resource
from syncsvc.settings import DEFAULT_ACCOUNT
from syncsvc.store import read
from syncsvc.units import Unit

REASON = "the event was deleted: its records go with it"


async def plan(engine: AsyncEngine, account: str = DEFAULT_ACCOUNT) -> list[Unit]:
    """One unit per (resource, deleted event of `account`) that still has live records."""
    return units(await read.orphaned_scopes(engine, account))


def units(orphaned: list[tuple[Resource, str]]) -> list[Unit]:
    """The units for `read.orphaned_scopes` (or `read.plan_inputs`): one per scope."""
    return [Unit(resource, guid) for resource, guid in orphaned]
