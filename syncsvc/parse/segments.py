"""A run of whole records -> COPY-ready staging rows, in a worker process beside the event loop.

A large dump is cut (by `syncsvc.parse.split`) into segments of whole records; each segment is
parsed here by libxml2 with the dump's own parser options, wrapped in its container element, and
its records become staging rows (COPY text, row hash, ordinal, key hash) directly: no typed
record tuple, no second rendering for the hash, no per-row encoding in asyncpg. The COPY text is
the one `syncsvc.normalize.Walk` makes for the typed record too (the tests compare both paths on
every simulator style), because the row hash, which the store compares, is md5 over it.

A segment that does not parse on its own raises SegmentRefused: the split may have cut inside a
comment or CDATA section that holds a record's end tag, so the dump is fetched again (the retry
policy retries SegmentRefused at once) and parsed as one document, whose verdict is final.
"""

from __future__ import annotations

import hashlib
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field

from lxml import etree

from syncsvc import catalog, logs
from syncsvc.catalog import FORBIDDEN_ELEMENTS, FieldKind, Resource
from syncsvc.errors import SegmentRefused, SyncError, UnsafeXmlError
from syncsvc.normalize import CONVERT, Walk
from syncsvc.parse.document import parser_options
from syncsvc.records import NULL, RENDER, copy_text

try:  # built from _walk.pyx at install time when the machine has a C compiler (setup.py)
    from syncsvc.parse._walk import CompiledWalk as _Compiled
    from syncsvc.parse._walk import pack as _compiled_pack

    CompiledWalk: type[_Compiled] | None = _Compiled
except ImportError:  # pragma: no cover - the pure-Python walk gives the same rows
    CompiledWalk = None

# The compiled walk's kind codes (_walk.pyx): text, converted, refs, customFields, datetime.
_KIND_CODES = {
    FieldKind.TEXT: 0,
    FieldKind.INT: 1,
    FieldKind.DATE: 1,
    FieldKind.DATETIME: 4,
    FieldKind.REFS: 2,
    FieldKind.CUSTOM: 3,
}


def compiled_walk(resource: Resource) -> _Compiled | None:
    """The compiled walk for `resource`, or None where it was not built."""
    if CompiledWalk is None:
        return None
    fields = [
        (
            f.api,
            _KIND_CODES[f.kind],
            CONVERT.get(f.kind),
            RENDER[f.kind] if f.kind in CONVERT else None,
        )
        for f in resource.fields
    ]
    return CompiledWalk(resource.record, fields, FORBIDDEN_ELEMENTS, NULL, RENDER[FieldKind.REFS])


@dataclass(slots=True)
class EncodedBatch:
    """Staging rows for one segment: COPY text lines, and what the stage counts."""

    data: bytes
    only: str | None = None  # the event GUID rows were kept for (None: every event)
    records: int = 0  # record elements in the segment
    staged: int = 0  # rows in `data`
    rejected: int = 0  # without their key or eventGUID, or outside the unit's event
    unidentified: int = 0  # of `rejected`: without their key or eventGUID (the store then
    # infers no delete from this dump)
    events: dict[str, int] = field(default_factory=dict)  # rows per event GUID

    def __len__(self) -> int:
        return self.staged


def key_hash(guid: str, key: str) -> int:
    """A 63-bit hash of a record's identity, the same in every process (the dedupe's filter)."""
    return (zlib.crc32(guid.encode()) << 31) ^ zlib.crc32(key.encode())


def staging_line(data_line: str, digest: bytes, ordinal: int, guid: str, key: str) -> str:
    """One staging row: the data columns, row_hash, ord, kh; newline-terminated."""
    return f"{data_line}\t\\\\x{digest.hex()}\t{ordinal}\t{key_hash(guid, key)}\n"


class SegmentCodec:
    """One resource's segments -> EncodedBatch; see the module docstring."""

    def __init__(self, resource: Resource, *, compiled: bool = True) -> None:
        """`compiled=False`: the pure-Python walk only (the tests compare both)."""
        self.resource = resource
        self.width = len(resource.fields)
        self.guid_at = resource.fields.index(resource.field("eventGUID"))
        self.key_at = resource.fields.index(resource.key_field)
        self.walk = Walk(resource)
        self.compiled = compiled_walk(resource) if compiled else None
        container = resource.container.encode()
        self._open, self._close = b"<" + container + b">", b"</" + container + b">"
        self._options = parser_options()

    def _refusal(self, data: bytes, exc: etree.XMLSyntaxError) -> SyncError:
        """Why a segment did not parse: the dump's own fault, or perhaps the split's."""
        # The split cuts at record end tags. One that is not a real record end sits inside a
        # comment, CDATA section or PI, or closes a same-named element nested in a record; with
        # none of those markers and as many record start tags as end tags, every cut was real
        # and the document itself is not well-formed (what the one-document parse would say).
        record = self.resource.record.encode()
        starts = data.count(b"<" + record + b">") + data.count(b"<" + record + b" ")
        # The container's end tag in a segment (a record after </users>) is a document the
        # split cannot judge: the one-document parse gives the verdict.
        markers = (b"<!", b"<?", b"?>", b"-->", b"]]>", self._close[:-1], self._open[:-1])
        suspect = any(m in data for m in markers)
        reason = logs.redact_text(str(exc).split(" (<string>", 1)[0].split(", line ", 1)[0], 160)
        if suspect or starts != data.count(b"</" + record + b">"):
            return SegmentRefused(
                f"A segment did not parse on its own: {reason}", resource=self.resource.path
            )
        return UnsafeXmlError(
            f"The response is not well-formed XML: {reason}", resource=self.resource.path
        )

    def encode(self, data: bytes, ord_base: int, only: str | None = None) -> EncodedBatch:
        """COPY rows for a segment of whole records; `ord_base` orders it among the dump's."""
        try:
            root = etree.fromstring(
                self._open + data + self._close, etree.XMLParser(**self._options)
            )
        except etree.XMLSyntaxError as exc:
            raise self._refusal(data, exc) from None
        return self.pack(self.rows(root), ord_base, only)

    def rows(self, root: etree._Element) -> list[list[str]]:
        """The COPY text parts of every record element among `root`'s children."""
        if self.compiled is not None:
            # A record the compiled walk leaves goes straight to the Python walk (`row` would
            # try the compiled one again first).
            rows: list[list[str]] = self.compiled.rows(root, self._python_row)
            return rows
        record = self.resource.record
        walk = self.walk
        return [walk(e)[1] for e in root if e.tag == record]

    def _python_row(self, elem: etree._Element) -> list[str]:
        return self.walk(elem)[1]

    def row(self, elem: etree._Element) -> list[str]:
        """A record element's COPY text per field, then extras (the one-document parse's
        `on_record` when it stages rows: `pack` them)."""
        if self.compiled is not None and (parts := self.compiled.parts(elem)) is not None:
            return parts
        return self.walk(elem)[1]

    def pack(self, rows: Sequence[list[str]], ord_base: int, only: str | None) -> EncodedBatch:
        """Staging rows for records' COPY text (`row`, in document order; an unknown element
        between records is not one), `ord_base` ordering them among the dump's."""
        out = EncodedBatch(b"", only, records=len(rows))
        if self.compiled is not None:
            out.data, out.staged, out.rejected, out.unidentified = _compiled_pack(
                list(rows), ord_base, only, self.guid_at, self.key_at, NULL, out.events
            )
            return out
        lines: list[str] = []
        guid_at, key_at = self.guid_at, self.key_at
        events = out.events
        md5 = hashlib.md5
        ordinal = ord_base
        for parts in rows:
            guid, key = parts[guid_at], parts[key_at]
            if guid is NULL or key is NULL:
                out.rejected += 1
                out.unidentified += 1
                continue
            if only is not None and guid != only:
                out.rejected += 1
                continue
            events[guid] = events.get(guid, 0) + 1
            line = copy_text(parts)
            ordinal += 1
            digest = md5(line.encode(), usedforsecurity=False).digest()
            lines.append(staging_line(line, digest, ordinal, guid, key))
        out.staged = ordinal - ord_base
        out.data = "".join(lines).encode()
        return out


_CODECS: dict[str, SegmentCodec] = {}


def segment_codec(path: str) -> SegmentCodec:
    """The codec for a resource path, made once per process."""
    found = _CODECS.get(path)
    if found is None:
        found = _CODECS[path] = SegmentCodec(catalog.resolve(path))
    return found


def encode_segment(path: str, data: bytes, ord_base: int, only: str | None) -> EncodedBatch:
    """The worker's entry point (module level: the pool calls it by name)."""
    return segment_codec(path).encode(data, ord_base, only)
