"""Read the store back in the typed form: live current-state records and the change log."""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass
from typing import Any, cast

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from syncsvc.catalog import BY_ENTITY, DATA_RESOURCES, FieldKind, Resource
from syncsvc.records import EXTRAS
from syncsvc.settings import DEFAULT_ACCOUNT
from syncsvc.store.boundary import guarded
from syncsvc.store.db import autocommit
from syncsvc.store.schema import changes, events, metadata, state_tables

Key = tuple[str, str]


def _json(value: Any) -> Any:
    return json.loads(value) if isinstance(value, str) else value


def typed_from_row(resource: Resource, row: Any) -> dict[str, Any]:
    """A current-state row -> the typed form (API names, extras)."""
    out: dict[str, Any] = {}
    for f in resource.fields:
        value = row[f.column]
        if f.kind is FieldKind.CUSTOM:
            value = _json(value)
        elif f.kind is FieldKind.REFS and value is not None:
            value = list(value)
        out[f.api] = value
    out[EXTRAS] = _json(row["extras"])
    return out


def typed_from_image(entity: str, image: dict[str, Any] | None) -> dict[str, Any] | None:
    """A change record's before/after JSON image -> the typed form (dates parsed back)."""
    if image is None:
        return None
    resource = BY_ENTITY[entity]
    out: dict[str, Any] = {}
    for f in resource.fields:
        value = image.get(f.api)
        if value is not None and f.kind is FieldKind.DATE:
            value = dt.date.fromisoformat(value)
        elif value is not None and f.kind is FieldKind.DATETIME:
            value = dt.datetime.fromisoformat(value).astimezone(dt.UTC)
        out[f.api] = value
    out[EXTRAS] = image.get(EXTRAS)
    return out


def record_key_of(resource: Resource, typed: dict[str, Any]) -> Key:
    return typed["eventGUID"], typed[resource.key]


async def live_records(
    engine: AsyncEngine,
    entity: str,
    event_guid: str | None = None,
    *,
    account: str = DEFAULT_ACCOUNT,
) -> dict[Key, dict[str, Any]]:
    """(eventGUID, key) -> typed record, for `account`'s live (not soft-deleted) rows of
    `entity`."""
    resource = BY_ENTITY[entity]
    table = state_tables[entity]
    query = sa.select(table).where(table.c.deleted_at.is_(None), table.c.account == account)
    if event_guid is not None:
        query = query.where(table.c.event_guid == event_guid)
    async with engine.connect() as conn:
        rows = (await conn.execute(query)).mappings().all()
    out = {}
    for row in rows:
        typed = typed_from_row(resource, row)
        out[record_key_of(resource, typed)] = typed
    return out


@dataclass(frozen=True, slots=True)
class ChangeRow:
    """One change record, images in the typed form."""

    seq: int
    run_id: int
    fetch_id: int | None
    entity: str
    event_guid: str
    record_key: str
    client_id: str | None
    op: str
    changed_fields: frozenset[str]
    before: dict[str, Any] | None
    after: dict[str, Any] | None
    source_modified_at: dt.datetime | None
    account: str = DEFAULT_ACCOUNT


async def read_changes(
    engine: AsyncEngine,
    after_seq: int = 0,
    run_id: int | None = None,
    *,
    account: str | None = None,
) -> list[ChangeRow]:
    """Change records with seq > after_seq (optionally of one run, of one account), in seq
    order."""
    query = sa.select(changes).where(changes.c.seq > after_seq).order_by(changes.c.seq)
    if run_id is not None:
        query = query.where(changes.c.run_id == run_id)
    if account is not None:
        query = query.where(changes.c.account == account)
    async with engine.connect() as conn:
        rows = (await conn.execute(query)).mappings().all()
    return [
        ChangeRow(
            seq=r["seq"],
            run_id=r["run_id"],
            fetch_id=r["fetch_id"],
            entity=r["entity"],
            event_guid=r["event_guid"],
            record_key=r["record_key"],
            client_id=r["client_id"],
            op=r["op"],
            changed_fields=frozenset(r["changed_fields"]),
            before=typed_from_image(r["entity"], r["before"]),
            after=typed_from_image(r["entity"], r["after"]),
            source_modified_at=r["source_modified_at"],
            account=r["account"],
        )
        for r in rows
    ]


def _live_events(account: str) -> sa.Select[Any]:
    return sa.select(events.c.event_guid).where(
        events.c.deleted_at.is_(None), events.c.account == account
    )


def _orphans(resource: Resource, account: str) -> sa.Select[Any]:
    table = metadata.tables[resource.table]
    return (
        sa.select(table.c.event_guid)
        .distinct()
        .join(
            events,
            sa.and_(
                events.c.account == table.c.account,
                events.c.event_guid == table.c.event_guid,
            ),
        )
        .where(
            table.c.account == account,
            table.c.deleted_at.is_(None),
            events.c.deleted_at.is_not(None),
        )
    )


@guarded("could not read the account's events")
async def plan_inputs(
    engine: AsyncEngine, account: str = DEFAULT_ACCOUNT
) -> tuple[list[str], list[tuple[Resource, str]]]:
    """`account`'s live events, and (resource, event GUID) for every deleted event of `account`
    that still has live records of it (another account's event of the same GUID is another
    event), each in the database's order of the GUIDs, the resources in catalog order.

    One statement and no transaction: a run reads them between its event.do and its plan, while
    every other account's run of the process does the same."""
    # `part`: -1 for the live events, else the resource's place in DATA_RESOURCES.
    parts = [_live_events(account).add_columns(sa.literal(-1).label("part"))]
    parts += [
        _orphans(r, account).add_columns(sa.literal(i).label("part"))
        for i, r in enumerate(DATA_RESOURCES)
    ]
    union = sa.union_all(*parts).subquery()
    async with autocommit(engine) as conn:
        result = await conn.execute(sa.select(union).order_by(union.c.part, union.c.event_guid))
        rows = [(str(g), cast(int, part)) for g, part in result]
    guids = [g for g, part in rows if part < 0]
    orphaned = [(DATA_RESOURCES[part], g) for g, part in rows if part >= 0]
    return guids, orphaned
