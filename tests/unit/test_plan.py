"""The planner: event=all where the catalog and the token allow it, per-event otherwise."""

from __future__ import annotations

from syncsvc.catalog import EXHIBITORS, SESSIONS, USERS
from syncsvc.errors import EventAllUnsupportedError, NoAccountAccessError, RetriesExhaustedError
from syncsvc.settings import Settings
from syncsvc.units import Unit, fallback, plan, select_events

EVENTS = ["E1", "E2", "E3"]


def test_event_all_where_the_catalog_allows_it_else_one_unit_per_event() -> None:
    units = plan([USERS, SESSIONS, EXHIBITORS], EVENTS)
    assert [(u.resource.path, u.event) for u in units] == [
        ("userData.do", "all"),
        ("sessionData.do", "all"),
        ("exhibitorData.do", "E1"),
        ("exhibitorData.do", "E2"),
        ("exhibitorData.do", "E3"),
    ]
    assert units[0].covered == tuple(EVENTS)


def test_per_event_only_when_event_all_is_disabled() -> None:
    units = plan([USERS], EVENTS, use_event_all=False)
    assert [u.event for u in units] == EVENTS


def test_without_account_level_access_only_the_home_event_is_planned() -> None:
    units = plan([USERS, EXHIBITORS], EVENTS, account_level=False)
    assert [(u.resource.path, u.event, str(u.scope)) for u in units] == [
        ("userData.do", None, "home"),
        ("exhibitorData.do", None, "home"),
    ]


def test_fallback_is_per_event_for_104_and_failures_and_home_only_for_103() -> None:
    unit = Unit(USERS, "all", tuple(EVENTS))
    assert [u.event for u in fallback(unit, EventAllUnsupportedError(code=104))] == EVENTS
    assert [u.event for u in fallback(unit, RetriesExhaustedError())] == EVENTS
    assert [u.event for u in fallback(unit, NoAccountAccessError(code=103))] == [None]


def test_include_and_exclude_lists_select_events() -> None:
    s = Settings.load({"SYNCSVC_EVENTS_INCLUDE": "E1,E3", "SYNCSVC_EVENTS_EXCLUDE": "E3"})
    assert select_events(s, EVENTS) == ["E1"]
    assert select_events(Settings.load({}), EVENTS) == EVENTS
