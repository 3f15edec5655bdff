"""One Scope type: what each unit records on its fetch row, and what the store takes."""

from __future__ import annotations

import pytest

from syncsvc.catalog import EVENTS, USERS
from syncsvc.scope import Reach, Scope
from syncsvc.units import Unit


def test_the_fetch_row_spellings_are_the_ones_runs_always_recorded() -> None:
    assert str(Unit(EVENTS, None).scope) == "account"
    assert str(Unit(USERS, "all", ("E1",), account_wide=True).scope) == "all"
    assert str(Unit(USERS, None).scope) == "home"
    assert str(Unit(USERS, "E1").scope) == "E1"


def test_only_a_one_event_scope_limits_the_records_taken() -> None:
    assert Unit(USERS, "E1").scope.only == "E1"
    assert Unit(USERS, None).scope.only is None
    assert Unit(USERS, "all", ("E1",), account_wide=True).scope.only is None
    assert Unit(EVENTS, None).scope.only is None


def test_an_event_whose_guid_is_all_stays_one_event() -> None:
    scope = Unit(USERS, "all").scope
    assert scope == Scope.of_event("all")
    assert scope.only == "all"


def test_the_store_shorthand() -> None:
    assert Scope.parse("all") == Scope(Reach.EVERY_EVENT)
    assert Scope.parse("E1") == Scope.of_event("E1")
    with pytest.raises(ValueError, match="names its event"):
        Scope(Reach.EVENT)
    with pytest.raises(ValueError, match="names its event"):
        Scope(Reach.HOME, "E1")
