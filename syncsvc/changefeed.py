"""Reading the change log by cursor: filters, the record's JSON shapes, streamed in constant memory.

Consumers read `seq > cursor` in seq order; seq is allocated in commit order (design.md), so a
reader that remembers the last seq it saw never misses a row.

Every emitted row carries the `environment` of the run that captured it. It is looked up at read
time, not stored on each change row: a run's environment never changes, the `runs` table is small
(one row a run), and a column would cost bytes on every one of a million change rows and a rewrite
of the log to add. A reader loads `runs.id -> environment` once per snapshot (the run's row always
commits before its changes, so every run_id it meets is in that map) and an environment filter is
pushed down as `run_id = ANY(the runs of that environment)`, which keeps the plan an index range
scan in seq order.

The `account` is the change row's own column (migration 0007): every emitted row carries it, and
an account filter is a plain predicate on the row.
"""

from __future__ import annotations

import csv
import json
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any, TextIO

from sqlalchemy.ext.asyncio import AsyncEngine

from syncsvc.catalog import BY_ENTITY
from syncsvc.store.boundary import boundary
from syncsvc.store.db import raw_connection

COLUMNS = (
    "seq",
    "run_id",
    "environment",
    "account",
    "entity",
    "event_guid",
    "record_key",
    "client_id",
    "op",
    "changed_fields",
    "before",
    "after",
    "source_modified_at",
    "captured_at",
)
_DB_COLUMNS = tuple(c for c in COLUMNS if c != "environment")
FORMATS = ("ndjson", "csv")
ENVELOPES = ("syncsvc", "debezium")
# Filters a consumer keeps (consumers.filters): each a list, absent or empty meaning all.
CONSUMER_FILTERS = ("entity", "op", "event", "environment", "account", "client_id")


# The change record (docs/change-record.schema.json) as PostgreSQL renders it: C code rather than
# a json.dumps per field (measured: 14x less reader CPU). row_to_json keeps the column order and
# renders compactly; timestamps come out as ISO 8601 in the session's zone, which the read
# transaction sets to UTC. The environment is one primary-key lookup in `runs` per row.
_RECORD_SQL = (
    "CROSS JOIN LATERAL (SELECT "
    + ", ".join(
        "(SELECT r.environment FROM runs r WHERE r.id = changes.run_id) AS environment"
        if c == "environment"
        else f"changes.{c}"
        for c in COLUMNS
    )
    + ") AS rec"
)


@dataclass(frozen=True, slots=True)
class ChangeFilter:
    """Which rows to read: `since < seq <= until`, each list filter ANDed, empty meaning all."""

    since: int = 0
    until: int | None = None
    entity: Sequence[str] = ()
    op: Sequence[str] = ()
    event: Sequence[str] = ()
    run: Sequence[int] = ()
    client_id: Sequence[str] = ()
    environment: Sequence[str] = ()
    account: Sequence[str] = ()
    captured_after: datetime | None = None  # captured_at >= this
    captured_before: datetime | None = None  # captured_at < this
    limit: int | None = None

    @classmethod
    def from_consumer(cls, filters: dict[str, Any], since: int) -> ChangeFilter:
        return cls(
            since=since,
            entity=tuple(filters.get("entity") or ()),
            op=tuple(filters.get("op") or ()),
            event=tuple(filters.get("event") or ()),
            environment=tuple(filters.get("environment") or ()),
            account=tuple(filters.get("account") or ()),
            client_id=tuple(filters.get("client_id") or ()),
        )

    def sql(self, rendered: bool = False) -> tuple[str, list[Any]]:
        """The query and its bound parameters (never string-built values). `rendered`: select
        `seq` and the record as JSON text made by PostgreSQL (`json`) instead of the columns."""
        clauses = ["changes.seq > $1"]
        params: list[Any] = [self.since]

        def bind(value: Any) -> str:
            params.append(value)
            return f"${len(params)}"

        if self.until is not None:
            clauses.append(f"changes.seq <= {bind(self.until)}")
        for column, values in (
            ("entity", list(self.entity)),
            ("op", list(self.op)),
            ("event_guid", list(self.event)),
            ("run_id", list(self.run)),
            ("client_id", list(self.client_id)),
            ("account", list(self.account)),
        ):
            if values:
                clauses.append(f"changes.{column} = ANY({bind(values)})")
        if self.environment:
            # An init plan evaluated once: the scan stays a range scan in seq order.
            clauses.append(
                "changes.run_id = ANY(ARRAY(SELECT id FROM runs WHERE environment = ANY("
                f"{bind(list(self.environment))})))"
            )
        if self.captured_after is not None:
            clauses.append(f"changes.captured_at >= {bind(self.captured_after)}")
        if self.captured_before is not None:
            clauses.append(f"changes.captured_at < {bind(self.captured_before)}")
        source = "changes"
        if rendered:
            select = "changes.seq, row_to_json(rec)::text AS json"
            source = f"changes {_RECORD_SQL}"
        else:
            # before/after are rendered as JSON text by PostgreSQL: no decode and re-encode here.
            select = ", ".join(
                f"{c}::text AS {c}" if c in ("before", "after") else c for c in _DB_COLUMNS
            )
        where = " AND ".join(clauses)
        query = f"SELECT {select} FROM {source} WHERE {where} ORDER BY changes.seq"
        if self.limit is not None:
            query += f" LIMIT {bind(self.limit)}"
        return query, params


@dataclass(slots=True)
class Window:
    """What one read covered: every row with seq <= `until` that matches was read (or, when the
    read stopped at its limit, `until` is the last row's seq). A cursor may move to `until`."""

    high: int = 0  # the newest seq committed when the read began
    until: int = 0


async def stream_changes(
    engine: AsyncEngine,
    flt: ChangeFilter,
    batch: int = 2000,
    window: Window | None = None,
    rendered: bool = False,
) -> AsyncIterator[dict[str, Any]]:
    """Rows in seq order through a server-side cursor, in one snapshot: memory stays flat.

    `window`, when given, is filled in: `high` at once, `until` as rows arrive and at the end.
    `rendered`: rows are `{"seq": ..., "json": the record as JSON text}` (see `_RECORD_SQL`).
    A database error ends the stream as a StoreError (store/boundary.py).
    """
    window = window if window is not None else Window()
    # A connection lost mid-read (a restart, a terminated backend) is one line, not a traceback.
    with boundary("reading the change log failed"):
        async with engine.connect() as conn:
            raw = await raw_connection(conn)
            async with raw.transaction(readonly=True, isolation="repeatable_read"):
                await raw.execute("SET LOCAL TimeZone = 'UTC'")
                window.high = int(await raw.fetchval("SELECT coalesce(max(seq), 0) FROM changes"))
                bound = window.high if flt.until is None else min(window.high, flt.until)
                window.until = max(flt.since, 0)
                if bound <= flt.since:
                    return
                envs = (
                    {}
                    if rendered
                    else {r[0]: r[1] for r in await raw.fetch("SELECT id, environment FROM runs")}
                )
                query, params = replace(flt, until=bound).sql(rendered)
                n = 0
                async for row in raw.cursor(query, *params, prefetch=batch):
                    out = dict(row)
                    if not rendered:
                        out["environment"] = envs.get(out["run_id"])
                    n += 1
                    window.until = out["seq"]
                    yield out
                if flt.limit is None or n < flt.limit:
                    window.until = bound  # everything up to the bound was seen, matching or not


def _iso(value: Any) -> Any:
    return value.isoformat() if hasattr(value, "isoformat") else value


def render_json(row: dict[str, Any]) -> str:
    """One change record as a JSON object (docs/change-record.schema.json), no newline."""
    # before/after arrive as JSON text; splice them in raw rather than parse and re-dump.
    parts = []
    for key in COLUMNS:
        value = row[key]
        if key in ("before", "after"):
            parts.append(f'"{key}":{value if value is not None else "null"}')
        else:
            parts.append(f'"{key}":{json.dumps(_iso(value), ensure_ascii=False)}')
    return "{" + ",".join(parts) + "}"


_DEBEZIUM_OP = {"insert": "c", "update": "u", "delete": "d"}


def _ms(value: datetime | None) -> int | None:
    return None if value is None else int(value.timestamp() * 1000)


def render_debezium(row: dict[str, Any]) -> list[str]:
    """The Debezium-shaped envelope: one object per change, two for a rekey (a delete of the old
    key, then a create of the new one, both with the same seq); the field-level diff and
    syncsvc's own op stay in the `syncsvc` field."""
    op = row["op"]
    base_source = {
        "connector": "syncsvc",
        "table": row["entity"],
        "environment": row["environment"],
        "account": row["account"],
        "run_id": row["run_id"],
        "seq": row["seq"],
        "event_guid": row["event_guid"],
        "client_id": row["client_id"],
        "ts_ms": _ms(row["source_modified_at"]),
    }
    parts: list[tuple[str, Any, Any, dict[str, Any], str | None]]
    extra = {"op": op, "changed_fields": list(row["changed_fields"] or ())}
    if op == "rekey":
        resource = BY_ENTITY.get(row["entity"])
        old_key = row["record_key"]
        if resource is not None and row["before"] is not None:
            old_key = json.loads(row["before"]).get(resource.key, old_key)
        parts = [
            ("d", row["before"], None, {**base_source, "record_key": old_key}, "delete"),
            ("c", None, row["after"], {**base_source, "record_key": row["record_key"]}, "create"),
        ]
    else:
        parts = [
            (
                _DEBEZIUM_OP[op],
                row["before"],
                row["after"],
                {**base_source, "record_key": row["record_key"]},
                None,
            )
        ]
    out = []
    for dop, before, after, source, part in parts:
        meta = dict(extra) if part is None else {**extra, "rekey_part": part}
        out.append(
            "{"
            f'"before":{before if before is not None else "null"},'
            f'"after":{after if after is not None else "null"},'
            f'"source":{json.dumps(source, ensure_ascii=False)},'
            f'"op":"{dop}",'
            f'"ts_ms":{_ms(row["captured_at"])},'
            f'"syncsvc":{json.dumps(meta, ensure_ascii=False)}'
            "}"
        )
    return out


def render(row: dict[str, Any], envelope: str = "syncsvc") -> list[str]:
    """The JSON objects one change row becomes in an envelope."""
    if envelope == "debezium":
        return render_debezium(row)
    return [row["json"] if "json" in row else render_json(row)]


def write_ndjson(row: dict[str, Any], out: TextIO, envelope: str = "syncsvc") -> None:
    if "json" in row:
        out.write(row["json"] + "\n")
    elif envelope == "syncsvc":
        out.write(render_json(row) + "\n")
    else:
        for line in render_debezium(row):
            out.write(line + "\n")


class CsvWriter:
    """CSV with a header; list and JSON columns as JSON text."""

    def __init__(self, out: TextIO) -> None:
        self._w = csv.writer(out, lineterminator="\n")
        self._w.writerow(COLUMNS)

    def write(self, row: dict[str, Any]) -> None:
        self._w.writerow(
            [
                json.dumps(v) if k == "changed_fields" else ("" if v is None else _iso(v))
                for k, v in ((k, row[k]) for k in COLUMNS)
            ]
        )


class Output:
    """Writes rows to a text stream in a format and envelope."""

    def __init__(self, out: TextIO, fmt: str = "ndjson", envelope: str = "syncsvc") -> None:
        self.out = out
        self._csv = CsvWriter(out) if fmt == "csv" else None
        self.envelope = envelope
        # NDJSON in the plain envelope: PostgreSQL renders each line (stream_changes(rendered)).
        self.rendered = fmt == "ndjson" and envelope == "syncsvc"

    def write(self, row: dict[str, Any]) -> None:
        if self._csv is not None:
            self._csv.write(row)
        else:
            write_ndjson(row, self.out, self.envelope)


async def export(
    engine: AsyncEngine, flt: ChangeFilter, fmt: str, out: TextIO, envelope: str = "syncsvc"
) -> int:
    """Write the matching changes to `out`; returns how many were written."""
    n = 0
    writer = Output(out, fmt, envelope)
    async for row in stream_changes(engine, flt, rendered=writer.rendered):
        writer.write(row)
        n += 1
    out.flush()
    return n
