"""The pure rules behind a run's reliability: storable error codes, unidentified records counted
apart from foreign ones (both parse paths), and a dump without its plain container refused."""

from __future__ import annotations

import pytest

from syncsvc import catalog
from syncsvc.errors import RunFencedError, UnrecognisedDumpError
from syncsvc.normalize import normalizer
from syncsvc.parse.document import DumpParser
from syncsvc.parse.segments import SegmentCodec
from syncsvc.store.runs import storable_code

USER = "<user><userRef>{ref}</userRef><eventGUID>{guid}</eventGUID><lastName>L</lastName></user>"
KEYLESS = "<user><eventGUID>E1</eventGUID><lastName>No key</lastName></user>"


@pytest.mark.parametrize(
    ("code", "stored"),
    [
        (None, None),
        (0, 0),
        (101, 101),
        (2**31 - 1, 2**31 - 1),
        (2**31, None),
        (-(2**31), -(2**31)),
        (-(2**31) - 1, None),
        (99_999_999_999_999, None),
    ],
)
def test_error_codes_beyond_int4_are_not_stored(code: int | None, stored: int | None) -> None:
    assert storable_code(code) == stored


def test_a_segment_counts_keyless_records_as_unidentified_and_foreign_ones_apart() -> None:
    body = (USER.format(ref="a", guid="E1") + KEYLESS + USER.format(ref="b", guid="E2")).encode()
    batch = SegmentCodec(catalog.USERS).encode(body, 0, only="E1")
    assert (batch.staged, batch.rejected, batch.unidentified) == (1, 2, 1)


def _parse(doc: str) -> DumpParser[object]:
    parser: DumpParser[object] = DumpParser(
        catalog.USERS, normalizer(catalog.USERS), max_bytes=1 << 20
    )
    parser.feed(doc.encode())
    parser.close()
    return parser


def test_a_plain_container_parses_and_an_empty_one_is_an_empty_dump() -> None:
    code = "<responseCode>0</responseCode>"
    assert _parse(f"<response>{code}<users>{USER.format(ref='a', guid='E1')}</users></response>")
    assert _parse(f"<response>{code}<users/></response>").records == 0


@pytest.mark.parametrize(
    "payload",
    [
        '<users xmlns="urn:x">{user}</users>',  # every record in a namespace: invisible
        '<x:users xmlns:x="urn:x">{user}</x:users>',
        "<attendees>{user}</attendees>",  # another container
        "",  # no container at all
    ],
)
def test_a_dump_without_its_plain_container_is_refused(payload: str) -> None:
    user = USER.format(ref="a", guid="E1")
    doc = f"<response><responseCode>0</responseCode>{payload.format(user=user)}</response>"
    with pytest.raises(UnrecognisedDumpError, match="no <users> element"):
        _parse(doc)


def test_the_fenced_message_names_both_runs_on_one_line() -> None:
    error = RunFencedError(run_id=41, superseded_by=42)
    assert str(error) == (
        "fenced: run 41 was superseded by run 42 after its lock session was lost; it commits"
        " nothing more"
    )
