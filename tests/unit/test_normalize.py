"""normalize: lxml record elements -> typed records, per docs/conference-api.md "Fields"."""

from __future__ import annotations

import datetime as dt

from lxml import etree

from syncsvc.catalog import EVENTS, EXHIBITORS, RESOURCES, SESSIONS, USERS
from syncsvc.normalize import normalizer
from syncsvc.records import RECORD_TYPES, from_typed, to_typed

UTC = dt.UTC


def el(xml: str) -> etree._Element:
    return etree.fromstring(xml.encode())


def u(inner: str) -> etree._Element:
    return el(f"<user><userRef>U1</userRef><eventGUID>E1</eventGUID>{inner}</user>")


def test_record_types_follow_the_catalog_field_order() -> None:
    for resource in RESOURCES:
        fields = RECORD_TYPES[resource.entity]._fields
        assert fields == (*(f.column for f in resource.fields), "extras", "row_hash")


def test_user_fields_are_trimmed_typed_and_empty_means_none() -> None:
    rec = normalizer(USERS)(
        el(
            "<user><userRef> U1 </userRef><eventGUID>E1</eventGUID><clientID></clientID>"
            "<firstName>\n  Ada \n</firstName><lastName>   </lastName>"
            "<registrationDate>2026-05-01T10:00:00+02:00</registrationDate>"
            "<lastModified>2026-05-02T03:04:05</lastModified>"
            "<customFields><type_business> govt </type_business><empty> </empty>"
            "<cannotViewOrSchedule>8812</cannotViewOrSchedule></customFields></user>"
        )
    )
    typed = to_typed("user", rec)
    assert typed["userRef"] == "U1"
    assert typed["clientID"] is None
    assert typed["firstName"] == "Ada"
    assert typed["lastName"] is None
    assert typed["email"] is None  # missing
    assert typed["registrationDate"] == dt.datetime(2026, 5, 1, 8, 0, tzinfo=UTC)
    assert typed["registrationDate"].tzinfo is UTC
    assert typed["lastModified"] == dt.datetime(2026, 5, 2, 3, 4, 5, tzinfo=UTC)  # no offset: UTC
    assert typed["customFields"] == {"type_business": "govt", "cannotViewOrSchedule": "8812"}
    assert typed["extras"] is None


def test_user_key_is_dropped_and_unknown_elements_go_to_extras() -> None:
    rec = normalizer(USERS)(
        el(
            "<user><userRef>U1</userRef><eventGUID>E1</eventGUID><userKey>SECRET</userKey>"
            "<badgeColor> red </badgeColor><empty/><!-- a comment --></user>"
        )
    )
    typed = to_typed("user", rec)
    assert "userKey" not in typed
    assert "SECRET" not in repr(rec)
    assert typed["extras"] == {"badgeColor": "red"}


def test_session_refs_int_and_z_datetimes() -> None:
    rec = normalizer(SESSIONS)(
        el(
            "<session><sessionID>S1</sessionID><eventGUID>E1</eventGUID>"
            "<capacity> 120 </capacity><startTime>2026-05-01T09:00:00Z</startTime>"
            "<speakers><userRef>U2</userRef><userRef> U1 </userRef><userRef/></speakers>"
            "<customFields/></session>"
        )
    )
    typed = to_typed("session", rec)
    assert typed["capacity"] == 120
    assert typed["startTime"] == dt.datetime(2026, 5, 1, 9, tzinfo=UTC)
    assert typed["speakers"] == ["U2", "U1"]  # source order kept, empty dropped
    assert typed["customFields"] is None


def test_empty_refs_are_none_and_event_dates_are_dates() -> None:
    ex = to_typed("exhibitor", normalizer(EXHIBITORS)(el("<exhibitor><contacts/></exhibitor>")))
    assert ex["contacts"] is None
    assert ex["exhibitorID"] is None  # no key: the stage rejects it
    ev = to_typed(
        "event",
        normalizer(EVENTS)(
            el("<event><eventGUID>E1</eventGUID><startDate>2026-05-01</startDate></event>")
        ),
    )
    assert ev["startDate"] == dt.date(2026, 5, 1)
    assert ev["endDate"] is None


def test_unparseable_values_are_kept_in_extras_not_fatal() -> None:
    rec = normalizer(SESSIONS)(
        el(
            "<session><sessionID>S1</sessionID><eventGUID>E1</eventGUID>"
            "<capacity>lots</capacity><startTime>next tuesday</startTime>"
            "<endTime>99999999999999999999</endTime></session>"
        )
    )
    typed = to_typed("session", rec)
    assert typed["capacity"] is None
    assert typed["startTime"] is None
    assert typed["extras"] == {
        "capacity": "lots",
        "startTime": "next tuesday",
        "endTime": "99999999999999999999",
    }


def test_hash_ignores_element_order_and_whitespace_but_sees_values() -> None:
    norm = normalizer(USERS)
    a = norm(
        el(
            "<user><userRef>U1</userRef><eventGUID>E1</eventGUID><firstName>Ada</firstName>"
            "<customFields><a>1</a><b>2</b></customFields><x>9</x><y>8</y></user>"
        )
    )
    b = norm(
        el(
            "<user>\n  <y> 8 </y><customFields>\n<b>2</b>\n<a>1</a></customFields>\n"
            "  <firstName> Ada</firstName><x>9</x><eventGUID>E1</eventGUID>"
            "<userRef>U1</userRef>\n</user>"
        )
    )
    assert a == b
    assert a.row_hash == b.row_hash
    c = norm(
        el("<user><userRef>U1</userRef><eventGUID>E1</eventGUID><firstName>Ad</firstName></user>")
    )
    assert c.row_hash != a.row_hash
    # A value moving between fields is a change even when the set of texts is the same.
    d = norm(
        el("<user><userRef>U1</userRef><eventGUID>E1</eventGUID><lastName>Ada</lastName></user>")
    )
    e = norm(
        el("<user><userRef>U1</userRef><eventGUID>E1</eventGUID><firstName>Ada</firstName></user>")
    )
    assert d.row_hash != e.row_hash


def test_same_datetime_in_another_offset_is_the_same_value() -> None:
    norm = normalizer(USERS)
    a = norm(
        el("<user><userRef>U</userRef><lastModified>2026-05-01T10:00:00Z</lastModified></user>")
    )
    b = norm(
        el(
            "<user><userRef>U</userRef><lastModified>2026-05-01T12:00:00+02:00</lastModified></user>"
        )
    )
    assert a.row_hash == b.row_hash


def test_from_typed_agrees_with_normalize() -> None:
    rec = normalizer(USERS)(
        el(
            "<user><userRef>U1</userRef><eventGUID>E1</eventGUID><firstName>Ada</firstName>"
            "<lastModified>2026-05-01T10:00:00Z</lastModified>"
            "<customFields><a>1</a></customFields><zz>q</zz></user>"
        )
    )
    assert from_typed("user", to_typed("user", rec)) == rec


def test_last_duplicate_child_wins() -> None:
    rec = normalizer(USERS)(el("<user><userRef>U1</userRef><city>A</city><city>B</city></user>"))
    assert rec.city == "B"  # type: ignore[union-attr]
