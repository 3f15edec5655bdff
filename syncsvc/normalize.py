"""Pure functions: one parsed record element -> one typed record (no I/O; the parse hot path).

`Walk(resource)` is the one walk over a record element: it visits the element's children once,
looking each tag up in a dispatch table built from the catalog, and gives two outputs of the same
values: the typed values (catalog order, then extras) and their COPY text (records.RENDER). The
one-document parse makes typed records of it (`normalizer(resource)`, the parse's `on_record`,
called before the element is cleared: the row hash is md5 over the COPY text); the segment codec
(syncsvc/parse/segments.py) makes staging rows of the COPY text alone.

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
import hashlib
from collections.abc import Callable
from typing import Any

from lxml import etree

from syncsvc.catalog import FORBIDDEN_ELEMENTS, FieldKind, Resource
from syncsvc.records import NULL, RECORD_TYPES, RENDER, Record, copy_text, render_json

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


def _to_int(text: str) -> int:
    value = int(text)
    if not _INT_MIN <= value <= _INT_MAX:  # the column is a bigint
        raise ValueError(text)
    return value


# The kinds whose trimmed text converts (or raises ValueError): the walk's and the compiled's.
CONVERT: dict[FieldKind, Callable[[str], Any]] = {
    FieldKind.INT: _to_int,
    FieldKind.DATE: parse_date,
    FieldKind.DATETIME: parse_datetime,
}


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
    return CONVERT[kind](text)


class Walk:
    """One resource's record element -> (typed values, their COPY text); see the module docstring.

    Both lists have a slot per catalog field, then extras: None / records.NULL for no value.
    """

    def __init__(self, resource: Resource) -> None:
        self.resource = resource
        self.width = len(resource.fields)
        self.index: dict[str, tuple[int, FieldKind, str]] = {
            f.api: (i, f.kind, f.api) for i, f in enumerate(resource.fields)
        }

    def __call__(self, elem: etree._Element) -> tuple[list[Any], list[str]]:
        width = self.width
        values: list[Any] = [None] * (width + 1)
        parts = [NULL] * (width + 1)
        extras: dict[str, str] | None = None
        index = self.index
        forbidden = FORBIDDEN_ELEMENTS
        render = RENDER
        for child in elem:
            tag = child.tag
            spec = index.get(tag)  # type: ignore[arg-type]  # non-str tags miss
            if spec is not None:
                i, kind, api = spec
                # A repeated field's last occurrence wins, an empty one included.
                if kind is _TEXT:  # the fast path: most fields, rendered as they are
                    text = child.text
                    if text is not None and (text := text.strip()):
                        values[i] = parts[i] = text
                    else:
                        values[i], parts[i] = None, NULL
                    continue
                try:
                    value = _convert(kind, child)
                except (ValueError, OverflowError):
                    values[i], parts[i] = None, NULL
                    raw = _all_text(child)
                    if raw is not None:
                        if extras is None:
                            extras = {}
                        extras[api] = raw
                    continue
                values[i] = value
                parts[i] = NULL if value is None else render[kind](value)
                continue
            if not isinstance(tag, str) or tag in forbidden:
                continue  # comments, processing instructions; userKey is never kept
            raw = _all_text(child)
            if raw is not None:
                if extras is None:
                    extras = {}
                extras[tag] = raw
        if extras is not None:
            values[width] = extras
            parts[width] = render_json(extras)
        return values, parts


def normalizer(resource: Resource) -> Normalizer:
    """The `on_record` function for `resource`'s record elements: typed records, row hash
    included (md5 over the walk's COPY text, as records.RowCodec renders the typed values)."""
    make = RECORD_TYPES[resource.entity]._make
    walk = Walk(resource)
    md5 = hashlib.md5

    def normalize(elem: etree._Element) -> Record:
        values, parts = walk(elem)
        values.append(md5(copy_text(parts).encode(), usedforsecurity=False).digest())
        return make(values)

    normalize.__name__ = f"normalize_{resource.entity}"
    return normalize
