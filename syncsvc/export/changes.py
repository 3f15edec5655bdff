"""`syncsvc export changes`: a seq range of the change log as Parquet parts plus a manifest.

An export covers the range (after_seq, through_seq]: every change in it that matches the filters
is in exactly one part file, and the manifest, written last, names the range, the files, their
row counts and checksums. `through_seq` is never beyond the last seq committed when the export's
snapshot was taken, so the next export (from `through_seq`) misses nothing and repeats nothing.
A consumer's cursor moves to `through_seq` only after its manifest is written.

`before` and `after` are JSON text (Parquet's JSON logical type): one schema for every entity,
so a warehouse loads one table; the typed, per-entity form is the snapshot export and the
history views.
"""

from __future__ import annotations

import asyncio
import datetime as dt
from dataclasses import dataclass
from typing import Any

from sqlalchemy.ext.asyncio import AsyncEngine

from syncsvc import __version__
from syncsvc.errors import ConfigError
from syncsvc.export.consumer import FILTER_KEYS, advance_cursor, read_consumer
from syncsvc.export.dest import Destination
from syncsvc.export.parquet import Limits, PartFile, PartWriter, snapshot_session
from syncsvc.feed.consumers import consumer_lock
from syncsvc.logs import get_logger
from syncsvc.store.db import libpq_url, raw_connection

log = get_logger(__name__)

FORMAT = "syncsvc.changes/1"

# (column, SQL expression, Arrow type name): the Parquet file's columns in order.
_COLUMNS = (
    ("seq", "c.seq", "int64"),
    ("run_id", "c.run_id", "int64"),
    ("fetch_id", "c.fetch_id", "int64"),
    ("environment", "r.environment", "string"),
    ("account", "c.account", "string"),
    ("entity", "c.entity", "string"),
    ("event_guid", "c.event_guid", "string"),
    ("record_key", "c.record_key", "string"),
    ("client_id", "c.client_id", "string"),
    ("op", "c.op", "string"),
    ("changed_fields", "c.changed_fields", "list<string>"),
    ("before", "c.before::text", "json"),
    ("after", "c.after::text", "json"),
    ("source_modified_at", "c.source_modified_at", "timestamp"),
    ("captured_at", "c.captured_at", "timestamp"),
)
_FILTER_COLUMNS = {
    "entity": "c.entity",
    "op": "c.op",
    "event": "c.event_guid",
    "environment": "r.environment",
    "account": "c.account",
    "client_id": "c.client_id",
}


def arrow_schema() -> Any:
    import pyarrow as pa

    types = {
        "int64": pa.int64(),
        "string": pa.string(),
        "list<string>": pa.list_(pa.string()),
        "json": pa.json_(pa.string()),
        "timestamp": pa.timestamp("us", tz="UTC"),
    }
    not_null = {
        "seq",
        "run_id",
        "account",
        "entity",
        "event_guid",
        "record_key",
        "op",
        "captured_at",
    }
    return pa.schema(
        [pa.field(name, types[kind], nullable=name not in not_null) for name, _, kind in _COLUMNS]
    )


def directory_name(after_seq: int, through_seq: int) -> str:
    """Zero-padded, so directories sort in seq order."""
    return f"changes_{after_seq:020d}_{through_seq:020d}"


def changes_query(after_seq: int, through_seq: int, literals: dict[str, list[str]]) -> str:
    """The range query. `literals` are filter values already quoted by PostgreSQL
    (`quote_literal`); the seq bounds are integers."""
    clauses = [f"c.seq > {int(after_seq)}", f"c.seq <= {int(through_seq)}"]
    for key in FILTER_KEYS:
        values = literals.get(key)
        if values:
            clauses.append(f"{_FILTER_COLUMNS[key]} IN ({', '.join(values)})")
    select = ", ".join(f"{expr} AS {name}" for name, expr, _ in _COLUMNS)
    # LEFT JOIN: the change log has no foreign keys (migration 0002); a row whose run is
    # gone still exports, with a null environment.
    return (
        f"SELECT {select} FROM changes c LEFT JOIN runs r ON r.id = c.run_id "
        f"WHERE {' AND '.join(clauses)} ORDER BY c.seq"
    )


async def quote_filters(raw: Any, filters: dict[str, list[str]]) -> dict[str, list[str]]:
    """Each filter value as an SQL literal, quoted by the server (asyncpg connection)."""
    out = {}
    for key, values in filters.items():
        if values:
            rows = await raw.fetch(
                "SELECT quote_literal(v) AS q FROM unnest($1::text[]) WITH ORDINALITY AS u(v, i) "
                "ORDER BY i",
                list(values),
            )
            out[key] = [r["q"] for r in rows]
    return out


@dataclass(frozen=True, slots=True)
class ExportResult:
    directory: str | None  # None: nothing in the range
    after_seq: int
    through_seq: int
    rows: int
    files: int
    manifest: dict[str, Any] | None


async def export_changes(
    engine: AsyncEngine,
    dest: Destination,
    *,
    since: int | None = None,
    until: int | None = None,
    consumer: str | None = None,
    filters: dict[str, list[str]] | None = None,
    limits: Limits | None = None,
) -> ExportResult:
    """Export (since, until] (or from a consumer's cursor) to `dest`; see the module docstring."""
    if (consumer is None) == (since is None):
        raise ConfigError("give exactly one of --consumer NAME or --since SEQ", setting="since")
    limits = limits or Limits()
    url = libpq_url(engine.url)
    if consumer is None:
        assert since is not None
        async with engine.connect() as conn:
            raw = await raw_connection(conn)
            return await _export(raw, url, dest, since, until, None, filters or {}, limits)
    # The feed's reader lock: one reader of a consumer at a time (an export, `changes
    # --consumer`, a webhook delivery), or two would deliver the same range twice.
    async with consumer_lock(engine, consumer) as raw:
        if raw is None:
            raise ConfigError(
                f"consumer {consumer!r} is being read by another process", setting="consumer"
            )
        state = await read_consumer(raw, consumer)
        if state.webhook_url is not None:
            raise ConfigError(
                f"consumer {consumer!r} is delivered by webhook; export a pull consumer",
                setting="consumer",
            )
        return await _export(raw, url, dest, state.cursor, until, consumer, state.filters, limits)


def _write_range(
    url: str,
    dest: Destination,
    since: int,
    until: int | None,
    literals: dict[str, list[str]],
    limits: Limits,
) -> tuple[int, str | None, int, list[PartFile]]:
    """(through_seq, directory or None when the range is empty, rows, parts)."""
    with snapshot_session(url, limits.batch_bytes) as session:
        # seq is allocated in commit order under a lock held to commit, so this snapshot
        # holds every seq up to its max and none beyond: the range is complete.
        last = int(session.scalar("SELECT coalesce(max(seq), 0) FROM changes"))
        through = last if until is None else min(until, last)
        if through <= since:
            return max(through, since), None, 0, []
        directory = directory_name(since, through)
        dest.makedirs(directory)
        writer = PartWriter(dest, directory, arrow_schema(), limits, seq_column="seq")
        with dest.translating_errors(directory):
            rows = session.stream(changes_query(since, through, literals), writer)
            parts = writer.finish()
    return through, directory, rows, parts


async def _export(
    raw: Any,
    url: str,
    dest: Destination,
    since: int,
    until: int | None,
    consumer: str | None,
    filters: dict[str, list[str]],
    limits: Limits,
) -> ExportResult:
    literals = await quote_filters(raw, filters)
    through, directory, rows, parts = await asyncio.to_thread(
        _write_range, url, dest, since, until, literals, limits
    )
    if directory is None:
        log.info("changes_export_empty", after_seq=since, through_seq=through)
        return ExportResult(None, since, through, 0, 0, None)
    manifest = {
        "format": FORMAT,
        "kind": "changes",
        "after_seq": since,
        "through_seq": through,
        "consumer": consumer,
        "filters": filters,
        "rows": rows,
        "files": [p.as_dict() for p in parts],
        "columns": [name for name, _, _ in _COLUMNS],
        "json_columns": ["before", "after"],
        "created_at": dt.datetime.now(dt.UTC).isoformat(),
        "syncsvc_version": __version__,
    }
    await asyncio.to_thread(dest.write_manifest, directory, manifest)
    if consumer is not None:
        await advance_cursor(raw, consumer, since, through)
    log.info(
        "changes_exported",
        destination=dest.shown,
        directory=directory,
        after_seq=since,
        through_seq=through,
        rows=rows,
        files=len(parts),
        consumer=consumer,
    )
    return ExportResult(directory, since, through, rows, len(parts), manifest)
