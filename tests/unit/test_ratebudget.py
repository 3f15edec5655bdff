"""The shared budget's pure parts: the bucket's key, the lateness a start may have, the default."""

from __future__ import annotations

from syncsvc.budget import RATE_SAFETY, Budget, RateBudget
from syncsvc.settings import Settings
from syncsvc.store.ratebudget import SharedBudget, late_limit, token_key


def test_the_key_is_never_the_token_and_depends_on_the_salt() -> None:
    token = "short"
    key = token_key("salt-a", token)
    assert token not in key
    assert len(key) == 64
    assert key == token_key("salt-a", token)  # every process of one database finds one row
    assert key != token_key("salt-b", token)  # a table of digests of likely tokens is no help
    assert key != token_key("salt-a", token + "x")  # two tokens (accounts), two rows


def test_a_start_may_be_late_by_half_the_windows_stretch() -> None:
    # Grants R apart are RATE_SAFETY periods apart: half the stretch for a late wake-up leaves
    # the other half for network jitter, and no server window of one period sees R + 1.
    for period in (0.5, 1.0, 4.0):
        late = late_limit(period)
        assert 0 < late < (RATE_SAFETY - 1) * period
        assert period * RATE_SAFETY - late > period


def test_local_is_the_default_and_both_budgets_have_one_interface() -> None:
    assert Settings().rate_budget == "local"
    local: RateBudget = Budget.from_settings(Settings())
    assert local.max_in_flight == Settings().max_concurrency
    for name in ("request", "back_off", "succeeded"):
        assert callable(getattr(SharedBudget, name))
