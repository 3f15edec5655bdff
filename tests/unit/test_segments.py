"""Segments parsed on their own give exactly the rows the one-document parse gives.

The reference is the one-document path: DumpParser over the whole body, `syncsvc.normalize` per
record element (typed values), then the record's COPY text rendered from those typed values by
`records.RowCodec`, and the row hash. The segment path shares the value extraction with it (one
walk, `syncsvc.normalize.Walk`), not the parse: what is guarded here is the split, and that the
walk's own COPY text is what RowCodec renders from the typed values.
"""

from __future__ import annotations

import pytest

from syncsvc import catalog
from syncsvc.catalog import Resource
from syncsvc.errors import SegmentRefused, UnsafeXmlError
from syncsvc.normalize import normalizer
from syncsvc.parse.document import DumpParser
from syncsvc.parse.segments import SegmentCodec, key_hash
from syncsvc.parse.split import Splitter
from syncsvc.records import codec
from syncsvc.simulator.data import SimConfig, Universe
from syncsvc.simulator.render import STYLES, DocFaults, iter_document

HEAD = b'<?xml version="1.0" encoding="UTF-8"?>\n<response><responseCode>0</responseCode><users>'
TAIL = b"</users></response>\n"
DATA = (catalog.USERS, catalog.SESSIONS, catalog.EXHIBITORS)


def one_document_rows(resource: Resource, body: bytes) -> list[str]:
    """(data line, row hash, kh) per staged record, from the one-document parse."""
    parser = DumpParser(resource, normalizer(resource), max_bytes=1 << 40)
    for i in range(0, len(body), 65536):
        parser.feed(body[i : i + 65536])
    parser.close()
    rows = []
    row = codec(resource)
    guid_at = resource.fields.index(resource.field("eventGUID"))
    key_at = resource.fields.index(resource.key_field)
    for rec in parser.take():
        guid, key = rec[guid_at], rec[key_at]
        if guid is None or key is None:
            continue
        rows.append(f"{row.data_line(rec[:-1])}\t\\\\x{rec.row_hash.hex()}\t{key_hash(guid, key)}")
    return rows


def segment_rows(
    resource: Resource, body: bytes, segment_bytes: int, compiled: bool = True
) -> tuple[list[str], int]:
    """The same from the split and the segment codec; also how many segments there were."""
    splitter = Splitter(resource, segment_bytes=segment_bytes, max_record_bytes=1 << 20)
    segments = []
    for i in range(0, len(body), 4096):
        segments += splitter.feed(body[i : i + 4096])
    segments += splitter.finish()
    assert not splitter.classic
    seg_codec = SegmentCodec(resource, compiled=compiled)
    rows = []
    ordinals = []
    for n, segment in enumerate(segments, 1):
        batch = seg_codec.encode(segment, n << 32)
        for line in batch.data.decode().splitlines():
            *data, digest, ordinal, kh = line.split("\t")
            rows.append("\t".join([*data, digest, kh]))
            ordinals.append(int(ordinal))
    assert ordinals == sorted(ordinals)  # document order, so "last wins" holds across segments
    assert len(set(ordinals)) == len(ordinals)
    return rows, len(segments)


# Both walks: the compiled one (syncsvc/parse/_walk.pyx) and the pure-Python one it stands in for.
WALKS = pytest.mark.parametrize("compiled", [True, False], ids=["compiled", "python"])


@WALKS
@pytest.mark.parametrize("style", STYLES, ids=[s.name for s in STYLES])
@pytest.mark.parametrize("resource", DATA, ids=[r.entity for r in DATA])
def test_simulator_documents_give_the_same_rows_in_every_style(
    resource: Resource, style: object, compiled: bool
) -> None:
    universe = Universe(SimConfig(seed=5, events=3, users_per_event=150))
    faults = DocFaults(duplicates=3, unknown_element="newField")
    body = b"".join(
        iter_document(resource, universe.raw_records(resource.entity, 2), style, faults)  # type: ignore[arg-type]
    )
    expected = one_document_rows(resource, body)
    rows, segments = segment_rows(resource, body, len(body) // 8, compiled)
    assert segments >= 6
    assert rows == expected
    assert len(rows) > 20


TRICKY = [
    "<userRef>U1</userRef><eventGUID>E</eventGUID>"
    "<company>R&amp;D &lt;x&gt; &quot;q&quot;</company>",
    "<userRef>U2</userRef><eventGUID>E</eventGUID><firstName>Ren&#233;e &#x263A;</firstName>",
    "<userRef>U3</userRef><eventGUID>E</eventGUID><title><![CDATA[a <b> & c]]></title>",
    "<userRef>U4</userRef><!-- </user> a comment --><eventGUID>E</eventGUID><city>X</city>",
    "<userRef>U5</userRef><?pi </user> ?><eventGUID>E</eventGUID>",
    "<userRef>U6</userRef><eventGUID>E</eventGUID><phone/><city></city><state>   </state>",
    "<userRef>U7</userRef><eventGUID>E</eventGUID><lastModified>next tuesday</lastModified>",
    "<userRef>U8</userRef><eventGUID>E</eventGUID><registrationDate>2026-05-01T12:00:00+02:00"
    "</registrationDate><lastModified>2026-05-01T10:00:00.250</lastModified>",
    "<userRef>U9</userRef><eventGUID>E</eventGUID><unknown><a>1</a> <b>2</b></unknown>",
    "<userRef>U10</userRef><eventGUID>E</eventGUID><firstName>A</firstName><firstName>B</firstName>",
    "<userRef>U11</userRef><userKey>secret</userKey><eventGUID>E</eventGUID>",
    "<userRef>U12</userRef><eventGUID>E</eventGUID><title>lead<b>bold</b>tail</title>",
    "<userRef>U13</userRef><eventGUID>E</eventGUID><company>tab\there back\\slash\nnew</company>",
    '<userRef>U14</userRef><eventGUID>E</eventGUID><customFields><q>say "hi" \\o/</q>'
    "<e></e><t>\tx\t</t></customFields>",
    "<userRef>U15</userRef><eventGUID>E</eventGUID><user>nested</user><city>Zürich</city>",
    '<userRef a="1">U16</userRef><eventGUID>E</eventGUID><customFields x="y"><c>1</c>'
    "<!-- c --></customFields>",
    "<userRef>U17</userRef><eventGUID>E</eventGUID><customFields>text only</customFields>",
    "<eventGUID>E</eventGUID><firstName>no key</firstName>",
    "<userRef>U18</userRef>",
    "<userRef>U19</userRef><eventGUID>E</eventGUID><registrationDate>99999-01-01</registrationDate>",
    # What the compiled walk leaves to the Python walk, and what it reads itself:
    '<userRef>U20</userRef><eventGUID>E</eventGUID><x:city xmlns:x="urn:x">Paris</x:city>',
    '<userRef xmlns="urn:d">U21</userRef><eventGUID>E</eventGUID>',
    '<userRef>U22</userRef><eventGUID>E</eventGUID><customFields><x:c xmlns:x="urn:x">1</x:c>'
    "</customFields>",
    "<userRef>U23</userRef><eventGUID>E</eventGUID><title>a<![CDATA[ b ]]>c</title>",
    "<userRef>U24</userRef><eventGUID>E</eventGUID><title><![CDATA[  ]]></title><new/><n2>"
    "<![CDATA[kept]]></n2>",
    "<userRef>U25</userRef><eventGUID>E</eventGUID><extra>first</extra><extra>  </extra>",
    "<userRef>U26</userRef><eventGUID>E</eventGUID><lastModified>bad</lastModified>"
    "<lastModified>2026-01-01T00:00:00Z</lastModified>",
    "<userRef>U27</userRef><eventGUID>E</eventGUID><customFields><userKey>k</userKey>"
    "<d>v<i>x</i></d></customFields>",
    "<userRef>U28</userRef><eventGUID>E</eventGUID><ñame>v</ñame><city>\u00a0x\u2003</city>",
    "<userRef>U29</userRef><eventGUID>E</eventGUID><registrationDate>  2026-02-30  "
    "</registrationDate><lastModified>2026-05-01</lastModified>",
]


@WALKS
@pytest.mark.parametrize("record", TRICKY)
def test_tricky_records_give_the_same_rows(record: str, compiled: bool) -> None:
    body = (f"<user>{record}</user>\n<other>ignored</other><user>{record}</user>").encode()
    expected = one_document_rows(catalog.USERS, HEAD + body + TAIL)
    batch = SegmentCodec(catalog.USERS, compiled=compiled).encode(body, 0)
    rows = []
    for line in batch.data.decode().splitlines():
        *data, digest, _ordinal, kh = line.split("\t")
        rows.append("\t".join([*data, digest, kh]))
    assert rows == expected
    assert batch.records == 2
    assert batch.staged + batch.rejected == 2


@WALKS
def test_sessions_refs_and_ints(compiled: bool) -> None:
    body = (
        b"<session><sessionID>S1</sessionID><eventGUID>E</eventGUID><capacity> 12 </capacity>"
        b'<speakers><userRef>U"1</userRef><userRef/><userRef> U\\2 </userRef></speakers></session>'
        b"<session><sessionID>S2</sessionID><eventGUID>E</eventGUID>"
        b"<capacity>99999999999999999999</capacity><speakers></speakers></session>"
        b"<session><sessionID>S3</sessionID><eventGUID>E</eventGUID><capacity>x</capacity>"
        b"<speakers> <userRef>A</userRef>text<userRef><![CDATA[B]]></userRef></speakers></session>"
        b"<session><sessionID>S4</sessionID><eventGUID>E</eventGUID>"
        b"<speakers><userRef>A<b/>B</userRef></speakers></session>"
    )
    head = HEAD.replace(b"<users>", b"<sessions>")
    expected = one_document_rows(catalog.SESSIONS, head + body + b"</sessions></response>")
    batch = SegmentCodec(catalog.SESSIONS, compiled=compiled).encode(body, 0)
    rows = []
    for line in batch.data.decode().splitlines():
        *data, digest, _ordinal, kh = line.split("\t")
        rows.append("\t".join([*data, digest, kh]))
    assert rows == expected
    assert len(rows) == 4


def test_only_keeps_the_units_event_and_counts_the_rest() -> None:
    body = b"".join(
        f"<user><userRef>U{i}</userRef><eventGUID>E{i % 3}</eventGUID></user>".encode()
        for i in range(30)
    )
    batch = SegmentCodec(catalog.USERS).encode(body, 0, only="E1")
    assert (batch.records, batch.staged, batch.rejected) == (30, 10, 20)
    assert batch.events == {"E1": 10}
    assert batch.only == "E1"


def test_a_cut_inside_a_comment_is_refused_not_misread() -> None:
    # The split cuts at the last </user> it holds, here the one inside the comment.
    body = b"<user><userRef>U1</userRef><eventGUID>E</eventGUID><!-- </user>"
    with pytest.raises(SegmentRefused):
        SegmentCodec(catalog.USERS).encode(body, 0)
    nested = b"<user><userRef>U1</userRef><user>x</user>"
    with pytest.raises(SegmentRefused):
        SegmentCodec(catalog.USERS).encode(nested, 0)


def test_a_malformed_segment_is_the_documents_fault() -> None:
    body = b"<user><userRef>U1</userRef><broken>A & B</user>"
    with pytest.raises(UnsafeXmlError, match="not well-formed"):
        SegmentCodec(catalog.USERS).encode(body, 0)


@pytest.mark.parametrize(
    "head",
    [
        b'<?xml version="1.0"?><!DOCTYPE r [<!ENTITY x "y">]><response><users>',
        b"<response><!-- c --><users>",
        b'<response xmlns="urn:x"><users>',
        b"<response><users a='1'>",
        b"<response><other/><users>",
        b"<other><users>",
    ],
)
def test_a_head_of_another_shape_means_one_document(head: bytes) -> None:
    splitter = Splitter(catalog.USERS, segment_bytes=64, max_record_bytes=1 << 20)
    assert splitter.feed(head + b"<user><userRef>U1</userRef></user>" * 10) == []
    assert splitter.finish() == []
    assert splitter.classic


def test_the_plain_head_splits_and_keeps_the_tail() -> None:
    splitter = Splitter(catalog.USERS, segment_bytes=64, max_record_bytes=1 << 20)
    record = b"<user><userRef>U1</userRef></user>"
    head = b'\xef\xbb\xbf<?xml version="1.0" encoding="UTF-8"?>\n<response>\n <responseCode>0'
    head += b"</responseCode><responseMessage>OK &amp; fine</responseMessage>\n <users>"
    segments = splitter.feed(head + record * 10 + b"\n")
    segments += splitter.feed(record * 2 + b"</users><responseCode>0</responseCode></response>")
    segments += splitter.finish()
    assert not splitter.classic
    assert splitter.head == head
    assert b"".join(segments) == record * 10 + b"\n" + record * 2
    assert all(s.endswith(b"</user>") for s in segments)
    assert splitter.tail == b"</users><responseCode>0</responseCode></response>"


def test_too_long_without_a_record_end_is_refused() -> None:
    splitter = Splitter(catalog.USERS, segment_bytes=64, max_record_bytes=1000)
    splitter.feed(HEAD)
    assert splitter.feed(b"<user><userRef>" + b"x" * 900) == []  # under the bound: waits
    with pytest.raises(UnsafeXmlError, match="without a record ending"):
        splitter.feed(b"x" * 200)
