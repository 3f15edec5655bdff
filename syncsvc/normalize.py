"""Pure functions: one parsed record element -> one typed record (no I/O; the parse hot path).

`normalizer(resource)` returns the function the client calls as `on_record(elem)` for every
record element, before it clears the element. It walks the element's children once, looking each
tag up in a dispatch table built from the catalog, and computes the row hash on the way out.

Rules (docs/conference-api.md, "Fields"): text is trimmed and empty means None; dates are
`datetime.date`; datetimes are aware UTC (no offset: read as UTC); refs are lists in source order;
customFields is a dict code -> value code (empty values omitted); unknown elements go to `extras`;
`userKey` is dropped. A value that does not parse as its kind (a date, an integer) is not lost and
does not fail the dump: the field is None and the raw text is kept in `extras` under the field's
API name. A record without its key is still returned (with None there): the stage counts and
rejects it, so the count is reported with the unit.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from typing import Any

from lxml import etree

from syncsvc.cvent.catalog import BY_ENTITY, FORBIDDEN_ELEMENTS, FieldKind, Resource
from syncsvc.records import RECORD_TYPES, Record, codec

Normalizer = Callable[[etree._Element], Record]

UTC = dt.UTC
_INT_MIN, _INT_MAX = -(2**63), 2**63 - 1
_TEXT, _INT, _DATE, _DATETIME, _REFS, _CUSTOM = (
    FieldKind.TEXT,
    FieldKind.INT,
    FieldKind.DATE,
    FieldKind.DATETIME,
    FieldKind.REFS,
    FieldKind.CUSTOM,
)


def _all_text(elem: etree._Element) -> str | None:
    text = "".join(elem.itertext()) if len(elem) else elem.text
    if text:
        return text.strip() or None
    return None


def parse_datetime(text: str) -> dt.datetime:
    """ISO 8601 -> aware UTC; a value without an offset is read as UTC. Raises ValueError."""
    value = dt.datetime.fromisoformat(text)
    if value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    return value.astimezone(UTC)


def parse_date(text: str) -> dt.date:
    """ISO 8601 date (a datetime's date part is accepted). Raises ValueError."""
    try:
        return dt.date.fromisoformat(text)
    except ValueError:
        return dt.datetime.fromisoformat(text).date()


def _convert(kind: FieldKind, elem: etree._Element) -> Any:
    """Slow path for the non-text kinds; raises ValueError for an unparseable value."""
    if kind is _REFS:
        refs = [t for c in elem if isinstance(c.tag, str) and (t := (c.text or "").strip())]
        return refs or None
    if kind is _CUSTOM:
        custom: dict[str, str] = {}
        for c in elem:
            if isinstance(c.tag, str) and (t := (c.text or "").strip()):
                custom[c.tag] = t
        return custom or None
    text = elem.text
    if text is None or not (text := text.strip()):
        return None
    if kind is _DATETIME:
        return parse_datetime(text)
    if kind is _DATE:
        return parse_date(text)
    if kind is _INT:
        value = int(text)
        if not _INT_MIN <= value <= _INT_MAX:  # the column is a bigint
            raise ValueError(text)
        return value
    raise AssertionError(kind)  # pragma: no cover


def normalizer(resource: Resource) -> Normalizer:
    """The `on_record` function for `resource`'s record elements."""
    make = RECORD_TYPES[resource.entity]._make
    width = len(resource.fields)
    extras_at = width
    row = codec(resource)
    data_line, digest = row.data_line, row.digest
    index: dict[str, tuple[int, FieldKind, str]] = {
        f.api: (i, f.kind, f.api) for i, f in enumerate(resource.fields)
    }
    forbidden = FORBIDDEN_ELEMENTS

    def normalize(elem: etree._Element) -> Record:
        values: list[Any] = [None] * (width + 1)
        extras: dict[str, str] | None = None
        for child in elem:
            spec = index.get(child.tag)  # type: ignore[arg-type]  # non-str tags miss
            if spec is not None:
                i, kind, api = spec
                if kind is _TEXT:
                    text = child.text
                    values[i] = (text.strip() or None) if text is not None else None
                    continue
                try:
                    values[i] = _convert(kind, child)
                except (ValueError, OverflowError):
                    values[i] = None
                    raw = _all_text(child)
                    if raw is not None:
                        if extras is None:
                            extras = {}
                        extras[api] = raw
                continue
            tag = child.tag
            if not isinstance(tag, str) or tag in forbidden:
                continue  # comments, processing instructions; userKey is never kept
            raw = _all_text(child)
            if raw is not None:
                if extras is None:
                    extras = {}
                extras[tag] = raw
        values[extras_at] = extras
        values.append(digest(data_line(values)))
        return make(values)

    normalize.__name__ = f"normalize_{resource.entity}"
    return normalize


NORMALIZERS: dict[str, Normalizer] = {entity: normalizer(r) for entity, r in BY_ENTITY.items()}


def normalize_element(entity: str, elem: etree._Element) -> Record:
    """Normalize one record element of `entity` (convenience over NORMALIZERS)."""
    return NORMALIZERS[entity](elem)
