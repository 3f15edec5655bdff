"""The typed records that pass between stages: one NamedTuple per entity, in catalog field order.

A record's fields are the catalog's columns in catalog order, then `extras` (unknown elements,
name -> trimmed text, or None) and `row_hash` (16 bytes over every typed value, computed once
in normalize). A record is a tuple, so asyncpg's COPY takes it almost as is, and it is frozen.

`to_typed` turns a record into the CONTRACTS.md form (a dict keyed by API field names);
`from_typed` builds a record, hash included, from that form (tests, benchmarks, the simulator).
"""

from __future__ import annotations

import datetime as dt
import hashlib
from collections.abc import Mapping
from typing import Any, NamedTuple

from syncsvc.cvent.catalog import BY_ENTITY, FieldKind, Resource


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


_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
_MICRO = dt.timedelta(microseconds=1)


def hash_values(
    values: tuple[Any, ...] | list[Any],
    mapping_positions: tuple[int, ...],
    datetime_positions: tuple[int, ...] = (),
) -> bytes:
    """The row hash: md5 over the repr of the typed values, dicts as sorted item tuples and
    datetimes as integer microseconds since the epoch (exact, and 5x cheaper than their repr).

    repr of str/int/date/list/tuple/None is canonical, so the digest depends on values only,
    never on XML formatting or element order (dict order is normalized here).
    """
    canon = list(values)
    for i in mapping_positions:
        m = canon[i]
        if m is not None:
            canon[i] = tuple(sorted(m.items()))
    for i in datetime_positions:
        v = canon[i]
        if v is not None:
            canon[i] = (v - _EPOCH) // _MICRO
    return hashlib.md5(repr(canon).encode(), usedforsecurity=False).digest()


def mapping_positions(resource: Resource) -> tuple[int, ...]:
    """Positions of the dict-valued slots (custom fields, extras) in a record's values."""
    custom = [i for i, f in enumerate(resource.fields) if f.kind is FieldKind.CUSTOM]
    return (*custom, len(resource.fields))


def datetime_positions(resource: Resource) -> tuple[int, ...]:
    """Positions of the datetime slots in a record's values."""
    return tuple(i for i, f in enumerate(resource.fields) if f.kind is FieldKind.DATETIME)


def to_typed(entity: str, record: Record) -> dict[str, Any]:
    """The CONTRACTS.md typed form: API field names -> values, plus `extras`."""
    resource = BY_ENTITY[entity]
    out = {f.api: record[i] for i, f in enumerate(resource.fields)}
    out[EXTRAS] = record[len(resource.fields)]
    return out


def from_typed(entity: str, typed: Mapping[str, Any]) -> Record:
    """A record from the typed form (missing fields are None); the row hash is computed here."""
    resource = BY_ENTITY[entity]
    values = [typed.get(f.api) for f in resource.fields]
    values.append(typed.get(EXTRAS) or None)
    digest = hash_values(values, mapping_positions(resource), datetime_positions(resource))
    return RECORD_TYPES[entity]._make((*values, digest))


def record_key(entity: str, record: Record) -> tuple[str | None, str | None]:
    """(eventGUID, key): the record's identity; for events both are the eventGUID."""
    resource = BY_ENTITY[entity]
    key = record[resource.fields.index(resource.key_field)]
    guid = record[resource.fields.index(resource.field("eventGUID"))]
    assert key is None or isinstance(key, str)
    assert guid is None or isinstance(guid, str)
    return guid, key
