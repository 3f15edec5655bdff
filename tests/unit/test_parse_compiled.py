"""The compiled walk (syncsvc/parse/_walk.pyx) gives the pure-Python walk's parts, record by record.

The simulator's styles and the hand-written tricky records are in test_segments.py (both walks
against the one-document parse); here: that the compiled walk is built where the README's
install ran (so a lost build cannot pass silently), which records it reads itself and which it
leaves to the Python walk, and generated records of every shape the grammar below makes.
"""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st
from lxml import etree

from syncsvc import catalog
from syncsvc.normalize import parse_datetime
from syncsvc.parse._walk import render_mapping, utc_text
from syncsvc.parse.segments import CompiledWalk, SegmentCodec
from syncsvc.records import NULL, RENDER, render_json

USERS = catalog.USERS
SESSIONS = catalog.SESSIONS


def _root(resource: catalog.Resource, records: str) -> etree._Element:
    codec = SegmentCodec(resource)
    return etree.fromstring(
        f"<{resource.container}>{records}</{resource.container}>".encode(),
        etree.XMLParser(**codec._options),
    )


def test_the_compiled_walk_is_built_by_the_install() -> None:
    # scripts/test.sh installs with pip install -e, which compiles it (setup.py): CI runs it.
    assert CompiledWalk is not None
    assert SegmentCodec(USERS).compiled is not None


def test_plain_records_are_read_by_the_compiled_walk_and_others_left_to_python() -> None:
    codec = SegmentCodec(USERS)
    root = _root(
        USERS,
        "<user><userRef>U1</userRef><eventGUID>E</eventGUID><title><![CDATA[x]]></title>"
        "<customFields><a>1</a></customFields><lastModified>bad</lastModified><new>n</new></user>"
        '<user><userRef>U2</userRef><x:city xmlns:x="urn:x">P</x:city></user>'
        "<user><userRef>U3</userRef><title>a<b>b</b></title></user>",
    )
    plain, namespaced, markup = list(root)
    assert codec.compiled.parts(plain) == codec.walk(plain)[1]
    assert codec.compiled.parts(namespaced) is None
    assert codec.compiled.parts(markup) is None
    # rows() still gives every record, the two it leaves through the Python walk.
    assert codec.compiled.rows(root, codec.row) == [codec.walk(e)[1] for e in root]


_texts = st.one_of(
    st.text(alphabet=st.characters(codec="utf-8", exclude_categories=("Cs", "Cc")), max_size=8),
    st.sampled_from(["", "  ", " 12 ", "2026-05-01T10:00:00+02:00", "2026-02-30", "x\ty", "a\\b"]),
)


def _escaped(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _content(text: str, draw: st.DrawFn) -> str:
    shape = draw(st.sampled_from(["text", "cdata", "split", "empty", "markup"]))
    if shape == "cdata" and "]]>" not in text:
        return f"<![CDATA[{text}]]>"
    if shape == "split":
        return f"{_escaped(text)}<![CDATA[ ]]>{_escaped(text)}"
    if shape == "empty":
        return ""
    if shape == "markup":
        return f"{_escaped(text)}<i>{_escaped(text)}</i>"
    return _escaped(text)


@st.composite
def _records(draw: st.DrawFn, resource: catalog.Resource) -> str:
    names = [f.api for f in resource.fields] + ["userKey", "newField", "other"]
    children = []
    for _ in range(draw(st.integers(0, 12))):
        name = draw(st.sampled_from(names))
        field = next((f for f in resource.fields if f.api == name), None)
        if field is not None and field.kind in (catalog.FieldKind.REFS, catalog.FieldKind.CUSTOM):
            inner = []
            for _ in range(draw(st.integers(0, 3))):
                sub = draw(st.sampled_from(["a", "b", "userRef", "userKey"]))
                inner.append(f"<{sub}>{_content(draw(_texts), draw)}</{sub}>")
            children.append(f"<{name}>{' '.join(inner)}</{name}>")
        else:
            children.append(f"<{name}>{_content(draw(_texts), draw)}</{name}>")
        if draw(st.booleans()):
            children.append(" \n")
    return f"<{resource.record}>{''.join(children)}</{resource.record}>"


@settings(max_examples=300, deadline=None)
@given(st.data())
def test_generated_records_give_the_python_walks_parts(data: st.DataObject) -> None:
    resource = data.draw(st.sampled_from([USERS, SESSIONS, catalog.EXHIBITORS]))
    records = [data.draw(_records(resource)) for _ in range(data.draw(st.integers(1, 4)))]
    codec = SegmentCodec(resource)
    root = _root(resource, "".join(records))
    assert codec.compiled.rows(root, codec.row) == [codec.walk(e)[1] for e in root]


_values = st.one_of(
    st.just(NULL),
    st.text(alphabet=st.characters(codec="utf-8", exclude_characters="\x00\x01"), max_size=6),
    st.sampled_from(["E1", "E2", "a\\b", "t\tab", "n\nl", "c\rr", "ü"]),
)


@settings(max_examples=300, deadline=None)
@given(
    st.lists(st.lists(_values, min_size=19, max_size=19), max_size=6),
    st.sampled_from([None, "E1"]),
    st.integers(0, 1 << 40),
)
def test_the_compiled_pack_writes_the_python_packs_bytes(
    rows: list[list[str]], only: str | None, ord_base: int
) -> None:
    compiled, python = SegmentCodec(USERS), SegmentCodec(USERS, compiled=False)
    for i, row in enumerate(rows):  # some rows in the unit's event, so `only` keeps them
        if row[python.guid_at] != NULL:
            row[python.guid_at] = ("E1", "E2")[i % 2]
    got, want = compiled.pack(rows, ord_base, only), python.pack(rows, ord_base, only)
    assert got == want


def _python_datetime(text: str) -> str | None:
    try:
        return RENDER[catalog.FieldKind.DATETIME](parse_datetime(text))
    except (ValueError, OverflowError):
        return None


@st.composite
def _datetime_texts(draw: st.DrawFn) -> str:
    # Mostly the spellings the compiled path reads, at the edges of every range it checks.
    y = draw(st.sampled_from([1, 2, 999, 1900, 2000, 2024, 2026, 2100, 9999, 0]))
    mo, d = draw(st.integers(0, 13)), draw(st.sampled_from([0, 1, 15, 28, 29, 30, 31, 32]))
    h, mi, s = draw(st.integers(0, 24)), draw(st.integers(0, 60)), draw(st.integers(0, 60))
    text = f"{y:04d}-{mo:02d}-{d:02d}T{h:02d}:{mi:02d}:{s:02d}"
    tail = draw(
        st.one_of(
            st.sampled_from(["", "Z", "z", "+00:00", "-00:00", ".5Z", " ", "+01", "+0100"]),
            st.builds(
                lambda sign, oh, om: f"{sign}{oh:02d}:{om:02d}",
                st.sampled_from("+-"),
                st.integers(0, 24),
                st.integers(0, 60),
            ),
        )
    )
    return text + tail


@settings(max_examples=2000, deadline=None)
@given(st.one_of(_datetime_texts(), st.text(max_size=26)))
def test_the_compiled_datetime_renders_what_python_renders_or_leaves_it(text: str) -> None:
    got = utc_text(text)
    if got is not None:
        assert got == _python_datetime(text), text


def test_the_compiled_datetime_reads_the_common_spellings() -> None:
    for text, utc in [
        ("2024-02-29T23:30:00-01:00", "2024-03-01T00:30:00+00:00"),
        ("2026-12-31T23:59:59-00:30", "2027-01-01T00:29:59+00:00"),
        ("2026-01-01T00:10:00+05:00", "2025-12-31T19:10:00+00:00"),
        ("2026-03-01T10:00:00Z", "2026-03-01T10:00:00+00:00"),
        ("2026-03-01T10:00:00", "2026-03-01T10:00:00+00:00"),
    ]:
        assert utc_text(text) == utc == _python_datetime(text)
    for text in ["2023-02-29T00:00:00Z", "2026-03-01T10:00:00.5Z", "0001-01-01T00:00:00+01:00"]:
        assert utc_text(text) is None  # the Python functions judge these


@settings(max_examples=500, deadline=None)
@given(st.dictionaries(st.text(max_size=5), st.text(max_size=8), max_size=5))
def test_the_compiled_mapping_renders_what_render_json_renders(mapping: dict[str, str]) -> None:
    assert render_mapping(mapping) == render_json(mapping)
