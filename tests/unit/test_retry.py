"""The retry policy and the response classification: pure functions, checked without sleeping."""

from __future__ import annotations

import email.utils
import random

import pytest

from syncsvc import catalog
from syncsvc.catalog import Outcome
from syncsvc.cvent.responses import classify, parse_retry_after
from syncsvc.cvent.retry import RetryPolicy
from syncsvc.errors import (
    ApiError,
    ApiRetryableError,
    BadParameterError,
    EventAllUnsupportedError,
    FallbackError,
    HttpStatusError,
    IncompleteDumpError,
    InvalidTokenError,
    IpNotAllowedError,
    NoAccountAccessError,
    RateLimitedError,
    RunStoppingError,
    SegmentRefused,
    TransportError,
    UnknownCodeError,
    UnknownEventError,
    UnsafeXmlError,
    WorkerDiedError,
)
from syncsvc.settings import Settings

ALMOST_ONE = 1.0 - 1e-12


def test_a_refused_split_is_retried_at_once_whatever_the_attempts_and_budget() -> None:
    # The retry parses the dump as one document: waiting buys nothing, and no limit may refuse
    # the fallback the split's soundness rests on.
    policy = RetryPolicy(max_attempts=2, base=5.0, cap=5.0, budget=1.0, random=lambda: ALMOST_ONE)
    assert policy.next_delay(1, SegmentRefused()) == 0.0
    assert policy.next_delay(2, SegmentRefused(), spent=1.0) == 0.0
    assert policy.next_delay(2, TransportError()) is None
    assert policy.next_delay(1, WorkerDiedError()) is None  # its 0..5 s delay crosses the budget
    assert RetryPolicy(random=lambda: 0.5).next_delay(1, WorkerDiedError()) == pytest.approx(0.5)


def test_full_jitter_ceiling_doubles_from_base_up_to_the_cap() -> None:
    policy = RetryPolicy(max_attempts=10, base=1.0, cap=10.0, budget=1e9, random=lambda: ALMOST_ONE)
    delays = [policy.next_delay(a, TransportError()) for a in range(1, 8)]
    assert delays == pytest.approx([1, 2, 4, 8, 10, 10, 10])


def test_full_jitter_draws_uniformly_below_the_ceiling() -> None:
    rng = random.Random(7)
    policy = RetryPolicy(max_attempts=100, base=0.5, cap=30.0, budget=1e9, random=rng.random)
    for attempt in range(1, 50):
        delay = policy.next_delay(attempt, IncompleteDumpError())
        assert delay is not None
        assert 0.0 <= delay < policy.backoff_ceiling(attempt)
    zero = RetryPolicy(random=lambda: 0.0).next_delay(1, TransportError())
    half = RetryPolicy(base=2.0, random=lambda: 0.5).next_delay(2, TransportError())
    assert (zero, half) == (0.0, 2.0)


def test_same_random_source_gives_the_same_delays() -> None:
    a = RetryPolicy(random=random.Random(3).random)
    b = RetryPolicy(random=random.Random(3).random)
    seq_a = [a.next_delay(i, TransportError()) for i in range(1, 5)]
    assert seq_a == [b.next_delay(i, TransportError()) for i in range(1, 5)]


@pytest.mark.parametrize(
    "error",
    [
        InvalidTokenError(),
        IpNotAllowedError(),
        NoAccountAccessError(),
        UnknownEventError(),
        UnsafeXmlError(),
        UnknownCodeError(),
        HttpStatusError(),
        ValueError("a bug"),
    ],
)
def test_terminal_errors_are_never_retried(error: BaseException) -> None:
    assert RetryPolicy().next_delay(1, error) is None


def test_no_delay_once_max_attempts_were_made() -> None:
    policy = RetryPolicy(max_attempts=3, random=lambda: 0.5)
    assert policy.next_delay(2, TransportError()) is not None
    assert policy.next_delay(3, TransportError()) is None


def test_retry_after_is_honoured_as_given_even_above_the_cap() -> None:
    policy = RetryPolicy(cap=5.0, budget=100.0, random=lambda: 0.0)
    assert policy.next_delay(1, RateLimitedError(retry_after=42.0)) == 42.0
    # Without Retry-After (or with 0): never sooner than half the backoff ceiling.
    assert policy.next_delay(1, RateLimitedError(retry_after=None)) == 0.5
    assert policy.next_delay(1, RateLimitedError(retry_after=0.0)) == 0.5


def test_budget_refuses_a_delay_that_would_cross_it() -> None:
    policy = RetryPolicy(max_attempts=99, base=4.0, cap=4.0, budget=10.0, random=lambda: 0.5)
    assert policy.next_delay(1, TransportError(), spent=8.0) == 2.0
    assert policy.next_delay(1, TransportError(), spent=8.5) is None
    assert policy.next_delay(1, RateLimitedError(retry_after=11.0)) is None


def test_policy_comes_from_settings() -> None:
    s = Settings(retry_attempts=7, retry_base_delay=0.25, retry_max_delay=9.0, retry_budget=60.0)
    p = RetryPolicy.from_settings(s)
    assert (p.max_attempts, p.base, p.cap, p.budget) == (7, 0.25, 9.0, 60.0)


# --- classification --------------------------------------------------------------------------

OUTCOME_BASES = {
    Outcome.STOP_RUN: RunStoppingError,
    Outcome.FALLBACK: FallbackError,
    Outcome.FAIL_FETCH: ApiError,
    Outcome.RETRY: ApiRetryableError,
}
SPECIFIC = {
    101: InvalidTokenError,
    102: IpNotAllowedError,
    103: NoAccountAccessError,
    104: EventAllUnsupportedError,
    201: UnknownEventError,
    202: BadParameterError,
    301: RateLimitedError,
    500: ApiRetryableError,
    503: ApiRetryableError,
}


@pytest.mark.parametrize("code", sorted(catalog.RESPONSE_CODES))
def test_every_catalog_code_maps_to_its_outcomes_error(code: int) -> None:
    outcome = catalog.RESPONSE_CODES[code].outcome
    err = classify(200, code, "whatever the server says", resource="userData.do", event="E1")
    if outcome is Outcome.ACCEPT:
        assert err is None
        return
    assert type(err) is SPECIFIC[code]
    assert isinstance(err, OUTCOME_BASES[outcome])
    assert err.retryable is (outcome is Outcome.RETRY)
    assert (err.code, err.resource, err.event_guid) == (code, "userData.do", "E1")
    assert "whatever the server says" not in str(err)  # behaviour and text never from messages


def test_unknown_code_keeps_code_and_bounded_message() -> None:
    err = classify(200, 999, "x" * 1000)
    assert isinstance(err, UnknownCodeError)
    assert err.code == 999
    assert err.context["server_message"] == "x" * 200
    assert not err.retryable


@pytest.mark.parametrize("status", [500, 502, 503, 504])
def test_http_5xx_is_a_retryable_transport_error(status: int) -> None:
    err = classify(status, 0)
    assert isinstance(err, TransportError)
    assert err.http_status == status
    assert err.retryable


def test_http_429_is_rate_limited_with_retry_after() -> None:
    err = classify(429, headers={"Retry-After": "12"})
    assert isinstance(err, RateLimitedError)
    assert err.retry_after == 12.0


@pytest.mark.parametrize("status", [301, 302, 400, 401, 403, 404])
def test_other_http_statuses_are_terminal(status: int) -> None:
    err = classify(status)
    assert isinstance(err, HttpStatusError)
    assert not err.retryable


def test_102_message_is_one_line_naming_the_allow_list() -> None:
    err = classify(200, 102, egress="10.1.2.3")
    assert isinstance(err, IpNotAllowedError)
    assert "allow-listed with Cvent" in str(err)
    assert "10.1.2.3" in str(err)
    assert "\n" not in str(err)


def test_retry_after_parses_seconds_and_http_dates() -> None:
    assert parse_retry_after("30") == 30.0
    assert parse_retry_after(None) is None
    assert parse_retry_after("soon") is None
    date = email.utils.formatdate(1_000_060, usegmt=True)
    assert parse_retry_after(date, now=1_000_000) == 60.0
    assert parse_retry_after(date, now=2_000_000) == 0.0
