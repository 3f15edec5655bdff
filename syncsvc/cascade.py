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

from syncsvc.catalog import Resource
from syncsvc.units import Unit

REASON = "the event was deleted: its records go with it"


def units(orphaned: list[tuple[Resource, str]]) -> list[Unit]:
    """One unit per (resource, deleted event) that still has live records: the scopes
    `read.plan_inputs` finds."""
    return [Unit(resource, guid) for resource, guid in orphaned]
