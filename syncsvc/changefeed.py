"""Reading the change log by cursor: `syncsvc changes`, streamed in constant memory.

Consumers poll `seq > cursor` in seq order; seq is allocated in commit order (design.md), so a
reader that remembers the last seq it saw never misses a row.
"""

from __future__ import annotations

import csv
import json
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any, TextIO

from sqlalchemy.ext.asyncio import AsyncEngine

from syncsvc.store.db import raw_connection

COLUMNS = (
    "seq",
    "run_id",
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
FORMATS = ("ndjson", "csv")


@dataclass(frozen=True, slots=True)
class ChangeFilter:
    since: int = 0
    entity: Sequence[str] = ()
    op: Sequence[str] = ()
    event: Sequence[str] = ()
    run: Sequence[int] = ()
    limit: int | None = None

    def sql(self) -> tuple[str, list[Any]]:
        """The query and its bound parameters (never string-built values)."""
        clauses = ["seq > $1"]
        params: list[Any] = [self.since]
        for column, values in (
            ("entity", list(self.entity)),
            ("op", list(self.op)),
            ("event_guid", list(self.event)),
            ("run_id", list(self.run)),
        ):
            if values:
                params.append(values)
                clauses.append(f"{column} = ANY(${len(params)})")
        # before/after are rendered as JSON text by PostgreSQL: no decode and re-encode here.
        select = ", ".join(f"{c}::text AS {c}" if c in ("before", "after") else c for c in COLUMNS)
        query = f"SELECT {select} FROM changes WHERE {' AND '.join(clauses)} ORDER BY seq"
        if self.limit is not None:
            params.append(self.limit)
            query += f" LIMIT ${len(params)}"
        return query, params


async def stream_changes(
    engine: AsyncEngine, flt: ChangeFilter, batch: int = 2000
) -> AsyncIterator[dict[str, Any]]:
    """Rows in seq order through a server-side cursor: memory stays flat for any count."""
    query, params = flt.sql()
    async with engine.connect() as conn:
        raw = await raw_connection(conn)
        async with raw.transaction(readonly=True, isolation="repeatable_read"):
            async for row in raw.cursor(query, *params, prefetch=batch):
                yield dict(row)


def _iso(value: Any) -> Any:
    return value.isoformat() if hasattr(value, "isoformat") else value


def write_ndjson(row: dict[str, Any], out: TextIO) -> None:
    # before/after arrive as JSON text; splice them in raw rather than parse and re-dump.
    parts = []
    for key in COLUMNS:
        value = row[key]
        if key in ("before", "after"):
            parts.append(f'"{key}":{value if value is not None else "null"}')
        else:
            parts.append(f'"{key}":{json.dumps(_iso(value), ensure_ascii=False)}')
    out.write("{" + ",".join(parts) + "}\n")


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


async def export(engine: AsyncEngine, flt: ChangeFilter, fmt: str, out: TextIO) -> int:
    """Write the matching changes to `out`; returns how many were written."""
    n = 0
    if fmt == "csv":
        writer = CsvWriter(out)
        async for row in stream_changes(engine, flt):
            writer.write(row)
            n += 1
    else:
        async for row in stream_changes(engine, flt):
            write_ndjson(row, out)
            n += 1
    out.flush()
    return n
