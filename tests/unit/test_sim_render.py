"""Rendering: every style spells the same values, escapes what XML needs, and parses."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from datetime import UTC, date, datetime

import pytest

from syncsvc import catalog
from syncsvc.simulator import render
from syncsvc.simulator.server import Fault, RateLimit

TS = int(datetime(2026, 3, 1, 23, 30, 5, tzinfo=UTC).timestamp())
SESSION = (
    "S1",
    "GUID-1",
    "DEV-101",
    "Q&A: <templates> & {braces}",
    None,
    "Panel",
    "Developers",
    'Room "A"',
    TS,
    TS + 3600,
    120,
    "Active",
    ["U1", "U2"],
    TS,
    [("level", "a&b"), ("publicViewPrivateSchedule", "123456")],
)


@pytest.mark.parametrize("style", render.STYLES, ids=lambda s: s.name)
def test_every_style_round_trips_values_through_a_real_parser(style: render.Style) -> None:
    doc = b"".join(render.iter_document(catalog.SESSIONS, [SESSION], style))
    root = ET.fromstring(doc)  # noqa: S314 (our own output)
    rec = root.find("sessions/session")
    assert rec is not None
    assert (rec.findtext("title") or "").strip() == "Q&A: <templates> & {braces}"
    assert (rec.findtext("room") or "").strip() == 'Room "A"'
    assert rec.findtext("capacity") == "120"
    assert [r.text for r in rec.findall("speakers/userRef")] == ["U1", "U2"]
    custom = {c.tag: c.text for c in rec.findall("customFields/*")}
    assert custom == {"level": "a&b", "publicViewPrivateSchedule": "123456"}
    start = datetime.fromisoformat(rec.findtext("startTime") or "")
    assert start == datetime.fromtimestamp(TS, UTC)
    assert not (rec.findtext("abstract") or "").strip()  # no value: omitted or empty


def test_dates_render_as_plain_iso_dates() -> None:
    event = ("G", "EV-1", "Summit", date(2026, 5, 1), date(2026, 5, 3), "Europe/Berlin", "Active")
    doc = b"".join(render.iter_document(catalog.EVENTS, [event], render.STYLES[0])).decode()
    assert "<startDate>2026-05-01</startDate>" in doc
    assert "<endDate>2026-05-03</endDate>" in doc


def test_styles_differ_in_spelling() -> None:
    docs = {b"".join(render.iter_document(catalog.SESSIONS, [SESSION], s)) for s in render.STYLES}
    assert len(docs) == len(render.STYLES)
    assert render.style_for(1, 0) != render.style_for(1, 1)


def test_error_envelope_has_code_and_message_and_no_payload() -> None:
    root = ET.fromstring(render.envelope_error(503))  # noqa: S314 (our own output)
    assert [c.tag for c in root] == ["responseCode", "responseMessage"]
    assert root.findtext("responseCode") == "503"


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ({"kind": "nope"}, "unknown fault kind"),
        ({"kind": "latency", "resource": "x.do"}, "unknown resource"),
        ({"kind": "truncate", "value": {"mode": "sideways"}}, "truncate mode"),
        ({"kind": "latency", "times": 0}, "times"),
        ({"kind": "latency", "when": "now"}, "unknown fault keys"),
    ],
)
def test_bad_faults_are_refused_with_a_reason(spec: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Fault.from_json(spec)


def test_bad_rate_limits_are_refused() -> None:
    with pytest.raises(ValueError, match="mode"):
        RateLimit.from_json({"mode": "teapot"})
    with pytest.raises(ValueError, match="unknown rate_limit keys"):
        RateLimit.from_json({"per_minute": 3})
