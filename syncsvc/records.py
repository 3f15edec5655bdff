"""The typed records that pass between stages: one NamedTuple per entity, in catalog field order.

A record's fields are the catalog's columns in catalog order, then `extras` (unknown elements,
name -> trimmed text, or None) and `row_hash` (16 bytes over every typed value, computed once
in normalize's walk). A record is a tuple, and so frozen; the stage writes it to COPY as the text
`RowCodec` renders, the same text the walk hashed.

`to_typed` turns a record into its typed form (docs/conference-api.md, "Fields": a dict keyed by
API field names);
`from_typed` builds a record, hash included, from that form (tests, benchmarks, the simulator).
"""

from __future__ import annotations

import datetime as dt
import functools
import hashlib
import re
from collections.abc import Callable, Mapping, Sequence
from json.encoder import encode_basestring as _enc
from typing import Any, NamedTuple

from syncsvc.catalog import BY_ENTITY, FieldKind, Resource


class EventRecord(NamedTuple):
    event_guid: str | None
    event_code: str | None
    event_name: str | None
    start_date: dt.date | None
    end_date: dt.date | None
    time_zone: str | None
    status: str | None
    extras: dict[str, str] | None
    row_hash: bytes


class UserRecord(NamedTuple):
    user_ref: str | None
    client_id: str | None
    event_guid: str | None
    first_name: str | None
    last_name: str | None
    email: str | None
    company: str | None
    title: str | None
    phone: str | None
    city: str | None
    state: str | None
    country: str | None
    attendee_type: str | None
    registration_status: str | None
    registration_date: dt.datetime | None
    last_modified: dt.datetime | None
    custom_fields: dict[str, str] | None
    extras: dict[str, str] | None
    row_hash: bytes


class SessionRecord(NamedTuple):
    session_id: str | None
    event_guid: str | None
    session_code: str | None
    title: str | None
    abstract: str | None
    session_type: str | None
    track: str | None
    room: str | None
    start_time: dt.datetime | None
    end_time: dt.datetime | None
    capacity: int | None
    status: str | None
    speakers: list[str] | None
    last_modified: dt.datetime | None
    custom_fields: dict[str, str] | None
    extras: dict[str, str] | None
    row_hash: bytes


class ExhibitorRecord(NamedTuple):
    exhibitor_id: str | None
    client_id: str | None
    event_guid: str | None
    name: str | None
    booth_number: str | None
    website: str | None
    sponsor_level: str | None
    description: str | None
    contacts: list[str] | None
    last_modified: dt.datetime | None
    custom_fields: dict[str, str] | None
    extras: dict[str, str] | None
    row_hash: bytes


Record = EventRecord | UserRecord | SessionRecord | ExhibitorRecord

RECORD_TYPES: dict[str, type[Record]] = {
    "event": EventRecord,
    "user": UserRecord,
    "session": SessionRecord,
    "exhibitor": ExhibitorRecord,
}

EXTRAS = "extras"  # the typed form's key for unknown elements; changed_fields use "extras.<name>"
EXTRAS_PREFIX = "extras."


# COPY text format, built with two placeholders that no XML 1.0 document can carry (U+0000 and
# U+0001 are not characters there, not even as references; JSON escapes them), so a line is
# joined first and escaped in one pass, not field by field.
_UTC = dt.UTC
_SEP = "\x00"
NULL = "\x01"  # a rendered field's "no value" (COPY's \\N once the line is joined)
_COPY_SPECIAL = re.compile("[\\\\\t\n\r]")
_COPY_ESCAPES = str.maketrans({"\\": "\\\\", "\t": "\\t", "\n": "\\n", "\r": "\\r"})


def _text(v: str) -> str:
    return v


def _iso(v: Any) -> str:
    return str(v.isoformat())


def _datetime(v: dt.datetime) -> str:
    if v.tzinfo is not _UTC:  # the normalizer's values are already UTC: one spelling per instant
        v = v.replace(tzinfo=_UTC) if v.tzinfo is None else v.astimezone(_UTC)
    return v.isoformat()


def _int(v: int) -> str:
    return str(v)


def _array(items: list[str]) -> str:
    # A PostgreSQL text[] literal: every element quoted, so no element needs more rules.
    quoted = ['"' + x.replace("\\", "\\\\").replace('"', '\\"') + '"' for x in items]
    return "{" + ",".join(quoted) + "}"


def render_json(mapping: Mapping[str, str]) -> str:
    # str -> str mappings, keys sorted: canonical text for the hash, 4x cheaper than json.dumps.
    return "{" + ",".join([_enc(k) + ":" + _enc(v) for k, v in sorted(mapping.items())]) + "}"


RENDER: dict[FieldKind, Callable[[Any], str]] = {
    FieldKind.TEXT: _text,
    FieldKind.INT: _int,
    FieldKind.DATE: _iso,
    FieldKind.DATETIME: _datetime,
    FieldKind.REFS: _array,
    FieldKind.CUSTOM: render_json,
}


def copy_text(parts: list[str]) -> str:
    """One COPY text line (no newline) from rendered fields joined by _SEP (None as NULL)."""
    line = _SEP.join(parts)
    if _COPY_SPECIAL.search(line) is not None:
        line = line.translate(_COPY_ESCAPES)
    return line.replace(_SEP, "\t").replace(NULL, "\\N")


class RowCodec:
    """A resource's typed values (catalog order, then extras) -> the staging row's COPY text.

    The data part of the line is canonical: it depends on the typed values only (datetimes are
    UTC, mappings have sorted keys), so the row hash is md5 over it: what the store compares,
    and the same whichever parse produced the values.
    """

    def __init__(self, resource: Resource) -> None:
        self.resource = resource
        kinds = [f.kind for f in resource.fields] + [FieldKind.CUSTOM]  # + extras
        self.renderers = tuple(RENDER[k] for k in kinds)

    def render(self, values: Sequence[Any]) -> list[str]:
        return [NULL if v is None else r(v) for r, v in zip(self.renderers, values, strict=True)]

    def data_line(self, values: Sequence[Any]) -> str:
        """The COPY text of the data columns (every field, then extras), no newline."""
        return copy_text(self.render(values))

    @staticmethod
    def digest(data_line: str) -> bytes:
        return hashlib.md5(data_line.encode(), usedforsecurity=False).digest()


@functools.cache
def codec(resource: Resource) -> RowCodec:
    return RowCodec(resource)


def hash_values(resource: Resource, values: Sequence[Any]) -> bytes:
    """The row hash of typed values (every field in catalog order, then extras)."""
    c = codec(resource)
    return c.digest(c.data_line(values))


def to_typed(entity: str, record: Record) -> dict[str, Any]:
    """The typed form (docs/conference-api.md): API field names -> values, plus `extras`."""
    resource = BY_ENTITY[entity]
    out = {f.api: record[i] for i, f in enumerate(resource.fields)}
    out[EXTRAS] = record[len(resource.fields)]
    return out


def from_typed(entity: str, typed: Mapping[str, Any]) -> Record:
    """A record from the typed form (missing fields are None); the row hash is computed here."""
    resource = BY_ENTITY[entity]
    values = [typed.get(f.api) for f in resource.fields]
    values.append(typed.get(EXTRAS) or None)
    digest = hash_values(resource, values)
    return RECORD_TYPES[entity]._make((*values, digest))
