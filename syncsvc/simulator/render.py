"""Rendering raw records to the API's XML, incrementally and fast (generated straight-line code).

Each (resource, style) pair gets one render function compiled from the catalog at import time:
plain string building, no element trees, so a record costs a few microseconds. The style of a day
varies element order, whitespace, empty-element spelling and the datetime offset without changing
a single typed value, so a sync that emits changes for formatting alone is caught.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from syncsvc import catalog
from syncsvc.catalog import FieldKind, Resource

XML_DECL = '<?xml version="1.0" encoding="UTF-8"?>'
CONTENT_TYPE = "application/xml; charset=utf-8"
BATCH_RECORDS = 512  # records per chunk written: big enough to be cheap, small enough to stay flat

# Fields whose text is an identifier we mint ourselves: never needs escaping or padding.
_PLAIN = frozenset({"userRef", "clientID", "eventGUID", "sessionID", "exhibitorID", "email"})


@dataclass(frozen=True, slots=True)
class Style:
    """How one day's documents are spelled; values never depend on it."""

    name: str
    record_indent: str  # before <user> and </users>
    field_indent: str  # before each field of a record
    empty: str  # "omit" | "selfclose" | "pair": how a field without value is written
    offset_hours: int  # datetimes are written in this UTC offset (0 with "Z" in style 0)
    zulu: bool
    pad: bool  # surround free-text values with whitespace (a normalizer trims it)
    order: str  # "catalog" | "reversed" | "rotated"


STYLES = (
    Style("compact", "", "", "omit", 0, True, False, "catalog"),
    Style("indented", "\n  ", "\n    ", "selfclose", 0, False, False, "reversed"),
    Style("tabbed", "\n\t", "\n\t\t", "pair", -5, False, True, "rotated"),
)


def style_for(seed: int, day: int) -> Style:
    """The style a day is served in: consecutive days always differ."""
    return STYLES[(seed + day) % len(STYLES)]


def escape(s: str) -> str:
    if "&" in s or "<" in s or ">" in s:
        return s.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    return s


_DAYS: dict[int, str] = {}


def _day_text(days: int) -> str:
    text = _DAYS.get(days)
    if text is None:
        text = datetime.fromtimestamp(days * 86400, UTC).date().isoformat()
        if len(_DAYS) < 100_000:
            _DAYS[days] = text
    return text


def _datetime_formatter(style: Style) -> Callable[[int], str]:
    shift = style.offset_hours * 3600
    if style.zulu:
        suffix = "Z"
    else:
        sign = "+" if style.offset_hours >= 0 else "-"
        suffix = f"{sign}{abs(style.offset_hours):02d}:00"

    def fmt(ts: int) -> str:
        days, secs = divmod(ts + shift, 86400)
        hours, secs = divmod(secs, 3600)
        minutes, secs = divmod(secs, 60)
        return f"{_day_text(days)}T{hours:02d}:{minutes:02d}:{secs:02d}{suffix}"

    return fmt


def _order(resource: Resource, style: Style) -> list[int]:
    idx = list(range(len(resource.fields)))
    if style.order == "reversed":
        return idx[::-1]
    if style.order == "rotated":
        return idx[3:] + idx[:3]
    return idx


def _lit(text: str) -> str:
    """`text` as it must appear inside a generated double-quoted f-string."""
    return (
        text.replace("\\", "\\\\")
        .replace('"', '\\"')
        .replace("\n", "\\n")
        .replace("\t", "\\t")
        .replace("{", "{{")
        .replace("}", "}}")
    )


def _compile(resource: Resource, style: Style) -> Callable[[tuple[Any, ...]], str]:
    """Generate `render(v) -> str` for one record of `resource` in `style` (straight-line code).

    The tuple is unpacked into locals, each field becomes one f-string (or the style's empty
    spelling), and the record one f-string of those: no intermediate concatenations.
    """
    fi, ri = style.field_indent, style.record_indent
    inner = fi + "  " if fi else ""
    n = len(resource.fields)
    lines = [f"    {', '.join(f'a{i}' for i in range(n))}, = v"]
    pad = " " if style.pad else ""
    for i in _order(resource, style):
        f = resource.fields[i]
        name = f.api
        a = f"a{i}"
        if f.kind is FieldKind.TEXT:
            expr = a if name in _PLAIN else f"esc({a})"
            p = pad if name not in _PLAIN else ""
            body = f"{p}{{{expr}}}{p}"
        elif f.kind is FieldKind.INT:
            body = f"{{{a}}}"
        elif f.kind is FieldKind.DATE:
            body = f"{{{a}.isoformat()}}"
        elif f.kind is FieldKind.DATETIME:
            body = f"{{dt({a})}}"
        elif f.kind is FieldKind.REFS:
            body = f"{{refs({a})}}"
        else:  # CUSTOM
            body = f"{{custom({a})}}"
        if style.empty == "omit":
            empty = '""'
        elif style.empty == "selfclose":
            empty = f'"{_lit(f"{fi}<{name}/>")}"'
        else:
            empty = f'"{_lit(f"{fi}<{name}></{name}>")}"'
        open_tag, close_tag = _lit(f"{fi}<{name}>"), f"</{name}>"
        lines.append(f'    p{i} = f"{open_tag}{body}{close_tag}" if {a} is not None else {empty}')
    fields = "".join(f"{{p{i}}}" for i in _order(resource, style))
    record = f"{_lit(ri)}<{resource.record}>{fields}{_lit(ri)}</{resource.record}>"
    lines.append(f'    return f"{record}"')
    src = "def render(v):\n" + "\n".join(lines) + "\n"
    ref_open, ref_close = f"{inner}<userRef>", "</userRef>"
    reverse_custom = style.order == "reversed"

    def refs(values: list[str]) -> str:
        return "".join([ref_open + r + ref_close for r in values]) + fi

    def custom(values: list[tuple[str, str]]) -> str:
        items = reversed(values) if reverse_custom else values
        return "".join([f"{inner}<{c}>{escape(x)}</{c}>" for c, x in items]) + fi

    namespace: dict[str, Any] = {
        "esc": escape,
        "dt": _datetime_formatter(style),
        "refs": refs,
        "custom": custom,
    }
    exec(compile(src, f"<render {resource.record} {style.name}>", "exec"), namespace)  # noqa: S102
    fn: Callable[[tuple[Any, ...]], str] = namespace["render"]
    return fn


RENDERERS: dict[tuple[str, str], Callable[[tuple[Any, ...]], str]] = {
    (r.path, s.name): _compile(r, s) for r in catalog.RESOURCES for s in STYLES
}


def renderer(resource: Resource, style: Style) -> Callable[[tuple[Any, ...]], str]:
    return RENDERERS[(resource.path, style.name)]


def envelope_error(code: int, message: str | None = None, style: Style = STYLES[0]) -> bytes:
    """A complete error document: code and message, no payload container."""
    rc = catalog.RESPONSE_CODES.get(code)
    text = message or (rc.meaning if rc else "Error")
    ri = style.record_indent
    return (
        f"{XML_DECL}\n<{catalog.ENVELOPE_ROOT}>{ri}<{catalog.ENVELOPE_CODE}>{code}"
        f"</{catalog.ENVELOPE_CODE}>{ri}<{catalog.ENVELOPE_MESSAGE}>{escape(text)}"
        f"</{catalog.ENVELOPE_MESSAGE}>\n</{catalog.ENVELOPE_ROOT}>\n"
    ).encode()


@dataclass(frozen=True, slots=True)
class DocFaults:
    """Body-level faults: how a served document departs from the well-formed success case."""

    code_after_payload: int | None = None  # write responseCode (this code) after the container
    duplicates: int = 0  # the first N records appear again at the end of the container
    unknown_element: str | None = None  # every record gains this unknown element
    invalid_xml: bool = False  # a malformed fragment after the first record


def iter_document(
    resource: Resource,
    raws: Iterable[tuple[Any, ...]],
    style: Style,
    faults: DocFaults = DocFaults(),
    batch: int = BATCH_RECORDS,
) -> Iterator[bytes]:
    """The success document for `raws`, as UTF-8 chunks of about `batch` records each."""
    ri = style.record_indent
    code_el = (
        f"<{catalog.ENVELOPE_CODE}>{{}}</{catalog.ENVELOPE_CODE}>"
        f"{ri}<{catalog.ENVELOPE_MESSAGE}>{{}}</{catalog.ENVELOPE_MESSAGE}>"
    )
    head = f"{XML_DECL}\n<{catalog.ENVELOPE_ROOT}>"
    if faults.code_after_payload is None:
        head += ri + code_el.format(0, "Success")
    head += f"{ri}<{resource.container}>"
    tail = f"{ri}</{resource.container}>"
    if faults.code_after_payload is not None:
        code = faults.code_after_payload
        rc = catalog.RESPONSE_CODES.get(code)
        tail += ri + code_el.format(code, escape(rc.meaning if rc else "Error"))
    tail += f"\n</{catalog.ENVELOPE_ROOT}>\n"

    render = renderer(resource, style)
    close = f"{ri}</{resource.record}>"
    extra = faults.unknown_element
    dups: list[str] = []
    out: list[str] = [head]
    first = True
    for raw in raws:
        rec = render(raw)
        if extra:
            rec = f"{rec[: -len(close)]}<{extra}>new-{raw[0]}</{extra}>{close}"
        out.append(rec)
        if len(dups) < faults.duplicates:
            dups.append(rec)
        if first and faults.invalid_xml:
            # An unescaped ampersand and a mismatched end tag: no XML parser accepts this.
            out.append(f"{ri}<{resource.record}><broken>A & B</{resource.record}>")
        first = False
        if len(out) >= batch:
            yield "".join(out).encode()
            out = []
    if first and faults.invalid_xml:
        out.append(f"{ri}<{resource.record}><broken>A & B</{resource.record}>")
    out.extend(dups)
    out.append(tail)
    yield "".join(out).encode()
