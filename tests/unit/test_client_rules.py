"""Pure rules of the client's edges: the stall rule's arithmetic, a secret's echoable spellings,
strict response codes."""

from __future__ import annotations

import pickle

import pytest

from syncsvc import logs
from syncsvc.cvent.client import STALL_BUCKETS, _StallWatch
from syncsvc.cvent.responses import parse_code
from syncsvc.errors import UnknownCodeError


def _read(watch: _StallWatch, at: float, nbytes: int) -> None:
    watch.clock = at
    watch.add(nbytes)


def test_the_first_window_must_bring_the_floor() -> None:
    watch = _StallWatch(floor=100.0, window=10.0)  # 1000 bytes per 10 s of reading
    assert watch.left() == pytest.approx(10.0)
    _read(watch, 4.0, 999)
    assert watch.left() == pytest.approx(6.0)  # not yet enough: the first window is the limit
    _read(watch, 5.0, 1)
    # Enough from t=4 on: alive until those bytes leave the window (4 + 10).
    assert watch.left() == pytest.approx(9.0)


def test_a_trickle_under_the_floor_runs_out_of_time() -> None:
    watch = _StallWatch(floor=100.0, window=10.0)
    for i in range(1, 40):
        _read(watch, i * 0.5, 1)  # 2 bytes/s
    assert watch.left() == 0.0


def test_a_steady_stream_above_the_floor_never_runs_out() -> None:
    watch = _StallWatch(floor=100.0, window=10.0)
    for i in range(1, 1000):
        _read(watch, i * 0.1, 20)  # 200 bytes/s
        assert (left := watch.left()) is not None
        assert left > 0
    # Only the window's slices are kept, however long the transfer.
    assert len(watch._marks) <= STALL_BUCKETS + 1


def test_a_burst_then_silence_is_allowed_one_window() -> None:
    watch = _StallWatch(floor=100.0, window=10.0)
    _read(watch, 1.0, 50_000)
    assert watch.left() == pytest.approx(10.0)  # until the burst leaves the window at 11
    watch.clock = 11.0
    assert watch.left() == 0.0


def test_a_zero_floor_turns_the_rule_off() -> None:
    assert _StallWatch(floor=0.0, window=10.0).left() is None


def test_a_secret_is_redacted_in_every_spelling_a_server_may_echo() -> None:
    secret = "a+b/c=&d e"
    logs.register_secrets([secret])
    echoed = [
        secret,
        "a%2Bb%2Fc%3D%26d%20e",
        "a%2bb%2fc%3d%26d%20e",
        "a%2Bb/c%3D%26d%20e",
        "a%2Bb%2Fc%3D%26d+e",
        "a+b/c=&amp;d e",
    ]
    for text in echoed:
        assert logs.redact(f"x {text} y") == f"x {logs.REDACTED} y"


def test_redact_text_redacts_before_it_bounds() -> None:
    logs.register_secrets(["0123456789abcdef"])
    cut = logs.redact_text("x" * 10 + "0123456789abcdef", 20)
    assert "0123" not in cut
    assert cut == "x" * 10 + logs.REDACTED


def test_an_error_redacts_its_message_context_and_its_pickled_copy() -> None:
    err = UnknownCodeError("told TOKEN-1234", server_message="TOKEN-1234 again")
    logs.register_secrets(["TOKEN-1234"])
    made_after = UnknownCodeError("told TOKEN-1234", server_message="TOKEN-1234 again")
    assert str(made_after) == "told ***"
    assert made_after.context["server_message"] == "*** again"
    # An error made where the secret is unknown (a parse worker) is redacted when it arrives.
    assert "TOKEN-1234" not in str(pickle.loads(pickle.dumps(err)))  # noqa: S301 (our own bytes)


@pytest.mark.parametrize(
    ("text", "code"),
    [("0", 0), ("101", 101), (" 101\n", 101), ("+101", 101), ("-1", -1), ("007", 7)],
)
def test_a_response_code_is_ascii_digits_with_an_optional_sign(text: str, code: int) -> None:
    assert parse_code(text) == code


@pytest.mark.parametrize(
    "text", ["1_01", "\u0661\u0660\u0661", "0x65", "1e2", "101.0", "", "+", "10 1", "\u00a0101"]
)
def test_anything_else_is_not_a_response_code(text: str) -> None:
    assert parse_code(text) is None
