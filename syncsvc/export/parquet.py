"""Streaming query results into size-bounded Parquet part files, Arrow all the way.

Rows leave PostgreSQL through the ADBC PostgreSQL driver, which runs the query as a binary
`COPY (...) TO STDOUT` and decodes it straight into Arrow record batches of about
`batch_bytes`: no Python object per value (measured: 2x the rows/s of asyncpg rows turned into
Arrow arrays in Python, and PostgreSQL's own output becomes the limit). Memory stays flat: one
batch is held at a time and each becomes a row group.

ADBC is blocking, so an export runs its session in a worker thread. The driver streams only
queries without bound parameters (a parameterized query is fetched whole), so the few values an
export puts in its SQL are quoted by PostgreSQL itself (`quote_literal`) before they go in.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from syncsvc.errors import ConfigError, StoreError
from syncsvc.export.dest import Destination, HashingStream


@dataclass(frozen=True, slots=True)
class Limits:
    """A part file holds at most `max_rows` rows and closes once past `max_bytes` (checked
    after each row group, so it exceeds `max_bytes` by at most one row group)."""

    max_rows: int = 1_000_000
    max_bytes: int = 256 * 1024 * 1024
    batch_bytes: int = 4 * 1024 * 1024


@dataclass(slots=True)
class PartFile:
    path: str
    rows: int = 0
    bytes: int = 0
    sha256: str = ""
    min_seq: int | None = None
    max_seq: int | None = None

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "path": self.path,
            "rows": self.rows,
            "bytes": self.bytes,
            "sha256": self.sha256,
        }
        if self.min_seq is not None:
            out["min_seq"], out["max_seq"] = self.min_seq, self.max_seq
        return out


@dataclass(slots=True)
class PartWriter:
    """Writes record batches into `directory/part-NNNNN.parquet`, starting a new part at the
    limits. `seq_column` names the column whose min/max each part records (if any)."""

    dest: Destination
    directory: str
    schema: Any
    limits: Limits
    seq_column: str | None = None
    dictionary_columns: tuple[str, ...] = ()
    parts: list[PartFile] = field(default_factory=list)
    _writer: Any = None
    _stream: HashingStream | None = None

    def write(self, batch: Any) -> None:
        while batch.num_rows:
            if self._writer is None:
                self._open()
            assert self._writer is not None
            assert self._stream is not None
            part = self.parts[-1]
            room = self.limits.max_rows - part.rows
            piece, batch = batch.slice(0, room), batch.slice(room)
            self._writer.write_batch(piece)
            part.rows += piece.num_rows
            if self.seq_column is not None:
                seqs = piece.column(self.seq_column)
                if part.min_seq is None:
                    part.min_seq = seqs[0].as_py()
                part.max_seq = seqs[-1].as_py()
            if part.rows >= self.limits.max_rows or self._stream.size >= self.limits.max_bytes:
                self._close()

    def finish(self) -> list[PartFile]:
        self._close()
        return self.parts

    def _open(self) -> None:
        import pyarrow.parquet as pq

        name = f"part-{len(self.parts):05d}.parquet"
        self.parts.append(PartFile(name))
        self._stream = self.dest.open_output(self.directory, name)
        # Dictionary-encode only the repetitive text columns: a dictionary over unique values
        # (keys, JSON images) costs memory and falls back to plain pages anyway.
        repetitive = [
            f.name
            for f in self.schema
            if f.name in ("environment", "entity", "op", "event_guid", "changed_fields")
            or f.name in self.dictionary_columns
        ]
        self._writer = pq.ParquetWriter(
            self._stream,
            self.schema,
            compression="zstd",
            write_statistics=True,
            use_dictionary=repetitive,
        )

    def _close(self) -> None:
        if self._writer is None or self._stream is None:
            return
        self._writer.close()
        self._stream.close()
        part = self.parts[-1]
        self.dest.sync(self.directory, part.path)
        part.bytes, part.sha256 = self._stream.size, self._stream.sha256
        self._writer = self._stream = None


def conform(batch: Any, schema: Any) -> Any:
    """A driver batch -> `schema` (JSON text columns become Parquet's JSON logical type)."""
    import pyarrow as pa

    arrays = []
    for i, f in enumerate(schema):
        column = batch.column(i)
        if isinstance(f.type, pa.ExtensionType):
            column = pa.ExtensionArray.from_storage(f.type, column.cast(f.type.storage_type))
        elif column.type != f.type:
            column = column.cast(f.type)
        arrays.append(column)
    return pa.RecordBatch.from_arrays(arrays, schema=schema)


def _driver() -> Any:
    try:
        import adbc_driver_postgresql.dbapi as dbapi
    except ImportError as exc:  # the export extra is optional
        raise ConfigError(
            "Parquet export needs pyarrow and adbc-driver-postgresql: "
            "pip install 'syncsvc[export]'",
            setting="export",
        ) from exc
    return dbapi


class Session:
    """One ADBC connection inside one read-only REPEATABLE READ transaction: every query sees
    the same snapshot."""

    def __init__(self, cursor: Any, batch_bytes: int) -> None:
        self._cursor = cursor
        self._batch_bytes = batch_bytes

    def scalar(self, sql: str) -> Any:
        self._cursor.execute(sql)
        row = self._cursor.fetchone()
        return None if row is None else row[0]

    def stream(self, sql: str, writer: PartWriter) -> int:
        """Every row of `sql` into `writer`; returns the row count."""
        self._cursor.adbc_statement.set_options(
            **{"adbc.postgresql.batch_size_hint_bytes": str(self._batch_bytes)}
        )
        self._cursor.execute(sql)
        n = 0
        for batch in self._cursor.fetch_record_batch():
            writer.write(conform(batch, writer.schema))
            n += batch.num_rows
        return n


@contextlib.contextmanager
def snapshot_session(libpq_url: str, batch_bytes: int) -> Iterator[Session]:
    """A Session on the database at `libpq_url`; committed (it only read) on the way out."""
    dbapi = _driver()
    try:
        conn = dbapi.connect(libpq_url, autocommit=True)
    except dbapi.Error as exc:
        raise StoreError(f"cannot connect to the database for the export: {_reason(exc)}") from exc
    try:
        cursor = conn.cursor()
        try:
            # autocommit: the driver leaves the session's transaction to us
            cursor.execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
            yield Session(cursor, batch_bytes)
            cursor.execute("COMMIT")
        except dbapi.Error as exc:
            raise StoreError(f"export query failed: {_reason(exc)}") from exc
        finally:
            cursor.close()
    finally:
        conn.close()


def _reason(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
