"""The mass-delete hold's decision, without a database (store/hold.py)."""

from __future__ import annotations

from syncsvc.store.hold import HeldScope, HoldDecision, HoldPolicy, ScopeDiff, decide_holds

POLICY = HoldPolicy(ratio=0.5, min_rows=20)


def test_live_rows_are_derived_from_the_diff_not_scanned() -> None:
    # 100 live before; the dump holds 60 of them and 5 new: 40 deletes.
    assert ScopeDiff("E1", staged=65, inserts=5, deletes=40).live == 100


def test_a_scope_deleting_more_than_the_ratio_is_held() -> None:
    decision = decide_holds(
        POLICY, [ScopeDiff("E1", staged=40, inserts=0, deletes=60)], override=False
    )
    assert decision == HoldDecision(held=(HeldScope("E1", live=100, deletes=60),))


def test_exactly_the_ratio_is_not_held() -> None:
    scopes = [ScopeDiff("E1", staged=50, inserts=0, deletes=50)]
    assert decide_holds(POLICY, scopes, override=False) == HoldDecision()


def test_a_small_scope_is_never_held() -> None:
    # 19 live rows, all deleted: below min_rows.
    scopes = [ScopeDiff("E1", staged=0, inserts=0, deletes=19)]
    assert decide_holds(POLICY, scopes, override=False) == HoldDecision()
    assert decide_holds(POLICY, [ScopeDiff("E1", 0, 0, 20)], override=False).held == (
        HeldScope("E1", 20, 20),
    )


def test_a_scope_without_deletes_is_never_held() -> None:
    scopes = [ScopeDiff("E1", staged=1000, inserts=1000, deletes=0)]
    assert decide_holds(POLICY, scopes, override=False) == HoldDecision()


def test_override_applies_the_held_scopes_and_reports_them() -> None:
    scopes = [ScopeDiff("E1", staged=0, inserts=0, deletes=30)]
    assert decide_holds(POLICY, scopes, override=True) == HoldDecision(
        overridden=(HeldScope("E1", 30, 30),)
    )


def test_only_the_tripped_scopes_are_held_in_name_order() -> None:
    scopes = [
        ScopeDiff("E3", staged=0, inserts=0, deletes=25),
        ScopeDiff("E2", staged=90, inserts=0, deletes=10),
        ScopeDiff("E1", staged=5, inserts=5, deletes=40),
    ]
    assert decide_holds(POLICY, scopes, override=False).held == (
        HeldScope("E1", 40, 40),
        HeldScope("E3", 25, 25),
    )


def test_the_account_scope_of_event_do_is_held_by_its_name() -> None:
    scopes = [ScopeDiff("*", staged=10, inserts=0, deletes=90)]
    assert decide_holds(POLICY, scopes, override=False).held == (HeldScope("*", 100, 90),)
