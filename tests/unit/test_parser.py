"""The streaming parser: records as they close, completeness only for a whole document, safety."""

from __future__ import annotations

import itertools
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from lxml import etree

from syncsvc import catalog
from syncsvc.errors import (
    ApiRetryableError,
    IncompleteDumpError,
    InvalidTokenError,
    SyncError,
    UnknownCodeError,
    UnsafeXmlError,
)
from syncsvc.parse.document import DumpParser, element_to_dict, parser_options, scan_prolog
from tests.apiserver import make_records, render

USERS = make_records(catalog.USERS, "E-0001", 6)
DOC = render(catalog.USERS, USERS)
DOC_CODE_AFTER = render(catalog.USERS, USERS, code_after_payload=True)


def parse(
    *chunks: bytes, max_bytes: int = 10**9, on_record: Any = element_to_dict
) -> list[dict[str, Any]]:
    parser: DumpParser[Any] = DumpParser(catalog.USERS, on_record, max_bytes=max_bytes, event="E")
    out: list[Any] = []
    for chunk in chunks:
        parser.feed(chunk)
        out.extend(parser.take())
    parser.close()
    out.extend(parser.take())
    return out


def test_parser_runs_with_the_safe_libxml2_options() -> None:
    opts = parser_options()
    assert opts["resolve_entities"] is False
    assert opts["no_network"] is True
    assert opts["huge_tree"] is False
    assert opts["recover"] is False
    assert opts["load_dtd"] is False


@pytest.mark.parametrize("doc", [DOC, DOC_CODE_AFTER], ids=["code-first", "code-after"])
def test_complete_dump_yields_every_record_wherever_the_code_sits(doc: bytes) -> None:
    records = parse(doc)
    assert [r["userRef"] for r in records] == [u["userRef"] for u in USERS]
    assert records[0]["customFields"] == USERS[0]["customFields"]
    assert records[0]["firstName"] == "First & 0"


def test_any_split_into_two_chunks_parses_the_same() -> None:
    want = parse(DOC_CODE_AFTER)
    for cut in range(len(DOC_CODE_AFTER) + 1):
        assert parse(DOC_CODE_AFTER[:cut], DOC_CODE_AFTER[cut:]) == want


@pytest.mark.parametrize("doc", [DOC, DOC_CODE_AFTER], ids=["code-first", "code-after"])
def test_a_cut_at_any_offset_is_incomplete_never_a_short_dump(doc: bytes) -> None:
    end = doc.rindex(b"</response>") + len(b"</response>")
    for cut in range(end):
        with pytest.raises(IncompleteDumpError):
            parse(doc[:cut])
    assert len(parse(doc[:end])) == len(USERS)  # the root closed: complete


def test_records_arrive_before_the_verdict_and_the_tree_stays_flat() -> None:
    siblings: list[int] = []

    def on_record(elem: etree._Element) -> str:
        parent = elem.getparent()
        assert parent is not None
        siblings.append(len(parent))
        return str(elem.findtext("userRef"))

    many = render(catalog.USERS, make_records(catalog.USERS, "E", 3000))
    parser: DumpParser[str] = DumpParser(catalog.USERS, on_record, max_bytes=10**9)
    seen = 0
    for i in range(0, len(many), 1000):
        parser.feed(many[i : i + 1000])
        seen += len(parser.take())
    assert seen > 2900  # records came out while the document was still arriving
    parser.close()
    assert seen + len(parser.take()) == 3000
    assert max(siblings) <= 40  # handed-out records are dropped: the tree never grows


def test_missing_response_code_is_incomplete() -> None:
    doc = DOC.replace(b"<responseCode>0</responseCode>", b"")
    with pytest.raises(IncompleteDumpError, match="no response code"):
        parse(doc)


@pytest.mark.parametrize("tail", [b"<more/>", b"junk", b"<response/>"])
def test_bytes_after_the_root_are_incomplete_in_the_same_or_a_later_chunk(tail: bytes) -> None:
    with pytest.raises(IncompleteDumpError, match="after its root"):
        parse(DOC + tail)
    with pytest.raises(IncompleteDumpError, match="after its root"):
        parse(DOC, b"\n  \n", tail)


def test_trailing_whitespace_after_the_root_is_fine() -> None:
    assert len(parse(DOC, b"\r\n\n  ")) == len(USERS)


def test_error_codes_raise_their_error_after_the_document_ends() -> None:
    with pytest.raises(InvalidTokenError):
        parse(render(catalog.USERS, code=101))
    with pytest.raises(ApiRetryableError) as info:
        parse(render(catalog.USERS, code=500, code_after_payload=True))
    assert (info.value.code, info.value.resource, info.value.event_guid) == (
        500,
        "userData.do",
        "E",
    )


def test_a_non_numeric_or_duplicated_code_is_refused() -> None:
    with pytest.raises(UnknownCodeError, match="not a number"):
        parse(DOC.replace(b"<responseCode>0<", b"<responseCode>zero<"))
    with pytest.raises(UnsafeXmlError, match="two response codes"):
        parse(DOC.replace(b"</response>", b"<responseCode>500</responseCode></response>"))


def test_a_code_inside_a_record_is_not_the_envelopes() -> None:
    doc = DOC.replace(b"<lastName>", b"<responseCode>500</responseCode><lastName>", 1)
    assert len(parse(doc)) == len(USERS)


def test_wrong_root_is_unsafe() -> None:
    with pytest.raises(UnsafeXmlError, match="root element"):
        parse(b"<users><user><userRef>1</userRef></user></users>")


def test_malformed_xml_is_unsafe() -> None:
    with pytest.raises(UnsafeXmlError, match="not well-formed"):
        parse(DOC.replace(b"</firstName>", b"</lastName>", 1))


def test_an_undeclared_entity_reference_is_unsafe() -> None:
    doc = DOC.replace(b"<lastName>Last", b"<lastName>&evil;", 1)
    with pytest.raises(UnsafeXmlError):
        parse(doc)
    with pytest.raises(UnsafeXmlError):
        parse(doc[:200], doc[200:])


def test_a_same_named_element_nested_in_a_record_stays_inside_it() -> None:
    doc = DOC.replace(b"<lastName>", b"<user><userRef>inner</userRef></user><lastName>", 1)
    records = parse(doc)
    assert [r["userRef"] for r in records] == [u["userRef"] for u in USERS]


def test_decoded_size_cap_stops_the_parse_at_the_cap() -> None:
    parser: DumpParser[Any] = DumpParser(catalog.USERS, element_to_dict, max_bytes=1000)
    parser.feed(DOC[:900])
    with pytest.raises(UnsafeXmlError, match="max_dump_bytes"):
        parser.feed(DOC[900:1200])
    assert parser.bytes <= 1200


@pytest.mark.parametrize(
    "prolog",
    [
        b'<!DOCTYPE response [<!ENTITY a "b">]>',
        b'<!DOCTYPE response SYSTEM "http://127.0.0.1:9/x.dtd">',
        b'<!DOCTYPE response PUBLIC "-//X//Y" "file:///etc/passwd">',
        b"<!-- a comment first --><!DOCTYPE response>",
        b"<!doctype response>",
        b"<![CDATA[x]]>",
        b"<!ENTITY a 'b'>",
    ],
)
def test_any_doctype_or_declaration_is_refused_before_libxml2_sees_it(prolog: bytes) -> None:
    doc = DOC.replace(b"<response>", prolog + b"<response>", 1)
    for split in (len(doc), 45, 50, 41):  # whole, and cut inside the declaration
        with pytest.raises(UnsafeXmlError):
            parse(doc[:split], doc[split:])


@pytest.mark.parametrize(
    "doc",
    [
        '<?xml version="1.0" encoding="UTF-16"?><!DOCTYPE r><response/>'.encode("utf-16"),
        b'<?xml version="1.0" encoding="UTF-7"?>+ADw-!DOCTYPE r+AD4-<response/>',
        b"\x00<\x00r\x00/\x00>",
        b"text before<response/>",
    ],
)
def test_other_encodings_cannot_smuggle_a_doctype(doc: bytes) -> None:
    with pytest.raises(UnsafeXmlError):
        parse(doc)


def test_a_utf8_bom_and_a_prolog_with_comments_and_pis_are_fine() -> None:
    doc = b"\xef\xbb\xbf" + DOC.replace(b"<response>", b"<!-- hi --><?pi x?>\n<response>", 1)
    assert len(parse(doc)) == len(USERS)


def test_a_prolog_that_never_ends_is_refused() -> None:
    with pytest.raises(UnsafeXmlError, match="prolog"):
        parse(b"<!--" + b"-" * 20_000)


def test_scan_prolog_waits_for_more_bytes_when_undecided() -> None:
    assert scan_prolog(b"") is False
    assert scan_prolog(b'<?xml version="1.0"') is False
    assert scan_prolog(b"<!-") is False
    assert scan_prolog(b"<") is False
    assert scan_prolog(b"  <response>") is True


def test_default_on_record_shapes_refs_custom_fields_and_drops_user_key() -> None:
    xml = (
        b"<session><sessionID>S1</sessionID><title/><userKey>SECRET</userKey>"
        b"<speakers><userRef>U1</userRef><userRef>U2</userRef></speakers>"
        b"<customFields><track_code>t1</track_code><other>free text</other></customFields>"
        b"<newVendorField>kept</newVendorField></session>"
    )
    rec = element_to_dict(etree.fromstring(xml))
    assert rec == {
        "sessionID": "S1",
        "title": None,
        "speakers": ["U1", "U2"],
        "customFields": {"track_code": "t1", "other": "free text"},
        "newVendorField": "kept",
    }


def test_errors_carry_resource_and_event() -> None:
    with pytest.raises(SyncError) as info:
        parse(DOC[:100])
    assert (info.value.resource, info.value.event_guid) == ("userData.do", "E")


def test_libxml2_limits_stay_on_behind_the_record_size_guard() -> None:
    def parser() -> DumpParser[Any]:
        return DumpParser(catalog.USERS, element_to_dict, max_bytes=10**9, max_record_bytes=10**9)

    def feed_all(p: DumpParser[Any], data: bytes) -> None:
        for i in range(0, len(data), 1 << 20):
            p.feed(data[i : i + (1 << 20)])

    text = b"<response><users><user><abstract>" + b"x" * (11 * 1024 * 1024)
    with pytest.raises(UnsafeXmlError, match="Text node too long"):
        feed_all(parser(), text)
    with pytest.raises(UnsafeXmlError, match="depth"):
        parser().feed(b"<response><users><user>" + b"<x>" * 300)


def test_bytes_without_a_record_ending_are_bounded() -> None:
    p: DumpParser[Any] = DumpParser(catalog.USERS, element_to_dict, max_bytes=10**9)
    p.feed(b"<response><users>")
    p.feed(b"<a/>" * 65536)  # 256 kB: still within the bound
    with pytest.raises(UnsafeXmlError, match="without a record ending"):
        p.feed(b"<a/>" * 4 * 65536)


@given(cuts=st.lists(st.integers(min_value=0, max_value=len(DOC_CODE_AFTER)), max_size=12))
@settings(max_examples=150, deadline=None)
def test_any_chunking_parses_the_same(cuts: list[int]) -> None:
    bounds = [0, *sorted(cuts), len(DOC_CODE_AFTER)]
    chunks = [DOC_CODE_AFTER[a:b] for a, b in itertools.pairwise(bounds)]
    assert parse(*chunks) == parse(DOC_CODE_AFTER)
