"""The first load (an empty scope) writes exactly what the diff would: state rows, change rows.

Each entity's dump goes into two fresh databases. In A its scope is empty: the first-load path.
In B one record of the dump was stored by an earlier run, so the unit diffs (that record is
unchanged: no change row). Everything else must be equal, compared in plain SQL: every state
column, every change column but seq and captured_at, and the seq order.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import pytest
from sqlalchemy.engine import URL
from sqlalchemy.ext.asyncio import AsyncEngine

from syncsvc.catalog import BY_ENTITY
from syncsvc.records import Record, from_typed
from syncsvc.store import db
from syncsvc.store.runs import create_fetch, create_run
from syncsvc.store.unit import ApplyResult, HoldPolicy, apply_records

pytestmark = pytest.mark.db

T0 = dt.datetime(2026, 5, 1, 10, 0, 30, 123000, tzinfo=dt.UTC)
NO_HOLD = HoldPolicy(ratio=1.0, min_rows=10**9)
LONG = "K" * 1001  # a key too long to store: rejected on both paths


def _dump(entity: str) -> list[dict[str, Any]]:
    """Every kind of value, nulls, extras, a duplicate key (the last wins), a key too long."""
    if entity == "event":
        rows = [
            {
                "eventGUID": f"G{i}",
                "eventCode": f"C{i}" if i % 3 else None,
                "eventName": f"Event {i} æøå",
                "startDate": dt.date(2026, 6, 1 + i),
                "timeZone": "Europe/Oslo",
                "extras": {"venue": f"V{i}"} if i % 2 else None,
            }
            for i in range(8)
        ]
        rows += [{"eventGUID": "G3", "eventName": "G3 again"}, {"eventGUID": LONG}]
        return rows
    key = BY_ENTITY[entity].key_field.api
    rows = []
    for i in range(30):
        row: dict[str, Any] = {
            key: f"K{(i * 7) % 30:03}",  # not in key order: seq order is the database's sort
            "eventGUID": f"E{i % 3}",
            "lastModified": T0 + dt.timedelta(minutes=i),
            "customFields": {"tier": str(i % 4), "note": "x y"} if i % 5 else None,
        }
        if entity == "user":
            row |= {
                "clientID": f"C{i}" if i % 4 else None,
                "firstName": f"Ådne {i}",
                "registrationDate": T0,
            }
        elif entity == "session":
            row |= {"title": f"Talk {i}", "capacity": i * 10, "speakers": ["S1", f"S{i}"]}
        else:
            row |= {"clientID": f"X{i}", "name": f"Booth {i}", "contacts": [f"c{i}"]}
        if i % 6 == 1:
            row["extras"] = {"unknown": f"u{i}", "n": "1"}
        rows.append(row)
    rows.append({**rows[4], "lastModified": T0 - dt.timedelta(days=1)})  # duplicate, last wins
    rows.append({key: LONG, "eventGUID": "E1"})
    return rows


async def _apply(engine: AsyncEngine, entity: str, dump: list[Record], scope: str) -> ApplyResult:
    run_id = await create_run(engine)
    fetch_id = await create_fetch(engine, run_id=run_id, resource=BY_ENTITY[entity], scope=scope)
    return await apply_records(
        engine,
        run_id=run_id,
        fetch_id=fetch_id,
        resource=entity,
        scope=scope,
        records=dump,
        hold=NO_HOLD,
    )


async def _rows(url: URL, sql: str) -> list[tuple[Any, ...]]:
    conn = await asyncpg.connect(db.libpq_url(url))
    try:
        return [tuple(r) for r in await conn.fetch(sql)]
    finally:
        await conn.close()


@pytest.fixture
async def second_engine(empty_db_url: URL) -> AsyncIterator[AsyncEngine]:
    engine = db.make_engine(empty_db_url)
    await db.upgrade(engine)
    try:
        yield engine
    finally:
        await engine.dispose()


@pytest.mark.parametrize("entity", ["event", "user", "session", "exhibitor"])
async def test_the_first_load_writes_what_the_diff_would(
    entity: str,
    engine: AsyncEngine,
    db_url: URL,
    second_engine: AsyncEngine,
    empty_db_url: URL,
) -> None:
    resource = BY_ENTITY[entity]
    dump = [from_typed(entity, r) for r in _dump(entity)]
    seed = dump[0]
    scope = "all"

    # A: run 1 stores nothing (an empty dump); run 2 loads the dump into an empty scope.
    await _apply(engine, entity, [], scope)
    fast = await _apply(engine, entity, dump, scope)
    # B: run 1 stores one record of the dump; run 2 diffs the dump against it.
    await _apply(second_engine, entity, [seed], scope)
    diffed = await _apply(second_engine, entity, dump, scope)

    assert fast.first_load
    assert not diffed.first_load
    assert fast.inserted == diffed.inserted + 1 == (8 if entity == "event" else 30)
    assert (fast.updated, fast.deleted, fast.rekeyed) == (diffed.updated, 0, 0) == (0, 0, 0)
    for figure in ("status", "records", "rejected", "duplicates", "held", "overridden"):
        assert getattr(fast, figure) == getattr(diffed, figure), figure
    assert (fast.rejected, fast.duplicates) == (1, 1)
    assert fast.first_seq is not None
    assert fast.last_seq is not None
    assert fast.last_seq - fast.first_seq + 1 == fast.inserted

    key = resource.key_field.column
    seed_key = seed[resource.fields.index(resource.key_field)]
    other = f"{key} <> '{seed_key}'"
    keys = "event_guid" if not resource.per_event else f"event_guid, {key}"
    state = f"SELECT t::text FROM {resource.table} t WHERE {other} ORDER BY {keys}"
    assert await _rows(db_url, state) == await _rows(empty_db_url, state)
    assert len(await _rows(db_url, state)) == fast.inserted - 1

    changes = (
        "SELECT run_id, fetch_id, entity, event_guid, record_key, client_id, op,"
        " changed_fields, before::text, after::text, source_modified_at"
        " FROM changes WHERE run_id = 2 AND record_key <> '{}' ORDER BY seq"
    )
    fast_changes = await _rows(db_url, changes.format(seed_key))
    assert fast_changes == await _rows(empty_db_url, changes.format(seed_key))
    assert len(fast_changes) == fast.inserted - 1
    # The seeded record's own change row in A is where B's run 1 put it: first in seq order.
    seqs = await _rows(db_url, "SELECT seq, record_key FROM changes ORDER BY seq")
    assert [s for s, _ in seqs] == list(range(fast.first_seq, fast.last_seq + 1))
    assert seqs[0][1] == seed_key  # the seed is the dump's first key in (event, key) order


async def test_a_scope_with_only_deleted_rows_is_diffed(engine: AsyncEngine) -> None:
    """A deleted row coming back merges into its old row (first_seen_run stays): the diff's job."""
    user = from_typed("user", {"userRef": "U1", "eventGUID": "E1", "firstName": "Ada"})
    first = await _apply(engine, "user", [user], "E1")
    gone = await _apply(engine, "user", [], "E1")
    back = await _apply(engine, "user", [user], "E1")
    assert (first.first_load, gone.first_load, back.first_load) == (True, False, False)
    assert (gone.deleted, back.inserted) == (1, 1)
    async with engine.connect() as conn:
        row = (
            await conn.exec_driver_sql(
                "SELECT first_seen_run, last_stored_run, deleted_at FROM users"
            )
        ).one()
    assert tuple(row) == (1, 3, None)
