"""Streaming rows from a server-side cursor into size-bounded Parquet part files.

Memory stays flat: one batch of rows is in Python at a time, one row group per batch.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from syncsvc.export.dest import Destination, HashingStream

Converter = Callable[[Sequence[Any]], Any]


@dataclass(frozen=True, slots=True)
class Limits:
    """A part file closes once it holds `max_rows` rows or `max_bytes` bytes (checked after
    each row group, so a file exceeds `max_bytes` by at most one batch's bytes)."""

    max_rows: int = 1_000_000
    max_bytes: int = 256 * 1024 * 1024
    batch_rows: int = 20_000


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
    parts: list[PartFile] = field(default_factory=list)
    _writer: Any = None
    _stream: HashingStream | None = None

    def write(self, batch: Any) -> None:
        if batch.num_rows == 0:
            return
        if self._writer is None:
            self._open()
        assert self._writer is not None
        assert self._stream is not None
        part = self.parts[-1]
        self._writer.write_batch(batch)
        part.rows += batch.num_rows
        if self.seq_column is not None:
            seqs = batch.column(self.seq_column)
            first, last = seqs[0].as_py(), seqs[-1].as_py()
            part.min_seq = first if part.min_seq is None else part.min_seq
            part.max_seq = last
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
        self._writer = pq.ParquetWriter(
            self._stream, self.schema, compression="zstd", write_statistics=True
        )

    def _close(self) -> None:
        if self._writer is None or self._stream is None:
            return
        self._writer.close()
        self._stream.close()
        part = self.parts[-1]
        part.bytes, part.sha256 = self._stream.size, self._stream.sha256
        self._writer = self._stream = None


def record_batch(schema: Any, rows: Sequence[Any]) -> Any:
    """asyncpg rows (in schema column order) -> one Arrow record batch."""
    import pyarrow as pa

    columns = list(zip(*rows, strict=True)) if rows else [() for _ in schema]
    arrays = []
    for f, values in zip(schema, columns, strict=True):
        if isinstance(f.type, pa.ExtensionType):
            storage = pa.array(values, type=f.type.storage_type)
            arrays.append(pa.ExtensionArray.from_storage(f.type, storage))
        else:
            arrays.append(pa.array(values, type=f.type))
    return pa.RecordBatch.from_arrays(arrays, schema=schema)


async def copy_cursor(raw: Any, query: str, params: Sequence[Any], writer: PartWriter) -> int:
    """Stream `query`'s rows through a server-side cursor into `writer` (inside the caller's
    transaction); returns the row count."""
    cursor = await raw.cursor(query, *params)
    n = 0
    while True:
        rows = await cursor.fetch(writer.limits.batch_rows)
        if not rows:
            break
        writer.write(record_batch(writer.schema, rows))
        n += len(rows)
        del rows
    return n
