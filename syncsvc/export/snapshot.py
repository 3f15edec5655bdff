"""`syncsvc export snapshot`: the live current state of entities as typed Parquet, consistent
with one seq of the change log.

Everything is read in one REPEATABLE READ transaction: the state rows and `max(seq)` come from
the same snapshot, and a unit commits its state rows and its change records together, so the
files hold exactly the state that replaying the change log through that seq produces. A loader
can start from the snapshot and continue with `export changes --since <consistent_with_seq>`.
"""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy.ext.asyncio import AsyncEngine

from syncsvc import __version__
from syncsvc.catalog import BY_ENTITY, FieldKind, Resource
from syncsvc.export.changes import quote_filters
from syncsvc.export.dest import Destination
from syncsvc.export.parquet import Limits, PartFile, PartWriter, snapshot_session
from syncsvc.logs import get_logger
from syncsvc.store.db import libpq_url, raw_connection

log = get_logger(__name__)

FORMAT = "syncsvc.snapshot/1"
_RUN_MARKS = ("first_seen_run", "last_changed_run")


def _arrow_type(kind: FieldKind) -> Any:
    import pyarrow as pa

    return {
        FieldKind.TEXT: pa.string(),
        FieldKind.INT: pa.int64(),
        FieldKind.DATE: pa.date32(),
        FieldKind.DATETIME: pa.timestamp("us", tz="UTC"),
        FieldKind.REFS: pa.list_(pa.string()),
        FieldKind.CUSTOM: pa.json_(pa.string()),
    }[kind]


def arrow_schema(resource: Resource) -> Any:
    """The catalog's columns, typed; custom fields and extras as JSON text; two run marks."""
    import pyarrow as pa

    key = {"event_guid", resource.key_field.column}
    fields = [pa.field("account", pa.string(), nullable=False)]
    fields += [
        pa.field(f.column, _arrow_type(f.kind), nullable=f.column not in key)
        for f in resource.fields
    ]
    fields.append(pa.field("extras", pa.json_(pa.string())))
    fields += [pa.field(m, pa.int64(), nullable=False) for m in _RUN_MARKS]
    return pa.schema(fields)


def snapshot_query(resource: Resource, accounts: Sequence[str] = ()) -> str:
    """The live rows (of `accounts`, quoted literals; none: of every account), in key order."""
    cols = ["account"]
    cols += [
        f"{f.column}::text" if f.kind is FieldKind.CUSTOM else f.column for f in resource.fields
    ]
    cols += ["extras::text", *_RUN_MARKS]
    key = resource.key_field.column
    order = "account, event_guid" if key == "event_guid" else f"account, event_guid, {key}"
    where = "deleted_at IS NULL"
    if accounts:
        where += f" AND account IN ({', '.join(accounts)})"
    return f"SELECT {', '.join(cols)} FROM {resource.table} WHERE {where} ORDER BY {order}"


def directory_name(entity: str, seq: int) -> str:
    return f"snapshot_{entity}_{seq:020d}"


@dataclass(frozen=True, slots=True)
class SnapshotResult:
    entity: str
    directory: str
    consistent_with_seq: int
    rows: int
    manifest: dict[str, Any]


def _write_snapshot(
    url: str,
    dest: Destination,
    entities: Sequence[str],
    limits: Limits,
    accounts: Sequence[str] = (),
) -> tuple[int, dt.datetime, list[tuple[str, str, int, list[PartFile]]]]:
    with snapshot_session(url, limits.batch_bytes) as session:
        seq = int(session.scalar("SELECT coalesce(max(seq), 0) FROM changes"))
        taken_at = session.scalar("SELECT now()")
        written = []
        for entity in entities:
            resource = BY_ENTITY[entity]
            directory = directory_name(entity, seq)
            dest.makedirs(directory)
            writer = PartWriter(dest, directory, arrow_schema(resource), limits)
            with dest.translating_errors(directory):
                rows = session.stream(snapshot_query(resource, accounts), writer)
                written.append((entity, directory, rows, writer.finish()))
    return seq, taken_at, written


async def export_snapshot(
    engine: AsyncEngine,
    dest: Destination,
    entities: Sequence[str],
    limits: Limits | None = None,
    accounts: Sequence[str] = (),
) -> list[SnapshotResult]:
    """One directory per entity, each with its manifest; all from one snapshot; only the rows
    of `accounts` when given."""
    limits = limits or Limits()
    literals: list[str] = []
    if accounts:
        async with engine.connect() as conn:
            raw = await raw_connection(conn)
            literals = (await quote_filters(raw, {"account": list(accounts)}))["account"]
    seq, taken_at, written = await asyncio.to_thread(
        _write_snapshot, libpq_url(engine.url), dest, entities, limits, literals
    )
    results: list[SnapshotResult] = []
    for entity, directory, rows, parts in written:
        manifest = {
            "format": FORMAT,
            "kind": "snapshot",
            "entity": entity,
            "table": BY_ENTITY[entity].table,
            "consistent_with_seq": seq,
            "snapshot_taken_at": taken_at.isoformat(),
            "rows": rows,
            "accounts": list(accounts),  # empty: every account
            "files": [p.as_dict() for p in parts],
            "json_columns": [
                f.column for f in BY_ENTITY[entity].fields if f.kind is FieldKind.CUSTOM
            ]
            + ["extras"],
            "created_at": dt.datetime.now(dt.UTC).isoformat(),
            "syncsvc_version": __version__,
        }
        await asyncio.to_thread(dest.write_manifest, directory, manifest)
        results.append(SnapshotResult(entity, directory, seq, rows, manifest))
        log.info(
            "snapshot_exported",
            destination=dest.shown,
            directory=directory,
            entity=entity,
            consistent_with_seq=seq,
            rows=rows,
            files=len(parts),
        )
    return results
