"""/healthz's judgement: the last finished run (from the database) against the schedule (pure)."""

from __future__ import annotations

from datetime import UTC, datetime

from syncsvc.serve import LastRun, judge

NIGHTLY = "0 2 * * *"
GRACE = 3600.0


def ts(text: str) -> float:
    return datetime.fromisoformat(text).replace(tzinfo=UTC).timestamp()


def run(status: str, finished: str, message: str | None = None) -> LastRun:
    return LastRun(7, status, ts(finished), message)


def test_healthy_before_any_run_was_due_since_start() -> None:
    started = ts("2026-11-24T10:00:00")
    assert judge(NIGHTLY, GRACE, started, None, ts("2026-11-24T23:00:00"))[0]
    # 02:00 fired, still within its grace hour: the run may be in progress.
    assert judge(NIGHTLY, GRACE, started, None, ts("2026-11-25T02:30:00"))[0]


def test_unhealthy_once_a_due_run_is_overdue() -> None:
    ok, why = judge(NIGHTLY, GRACE, ts("2026-11-24T10:00:00"), None, ts("2026-11-25T03:30:00"))
    assert not ok
    assert "2026-11-25T02:00:00" in why


def test_healthy_when_the_due_run_finished() -> None:
    started = ts("2026-11-24T10:00:00")
    last = run("succeeded", "2026-11-25T02:40:00")
    assert judge(NIGHTLY, GRACE, started, last, ts("2026-11-25T03:30:00"))[0]
    assert judge(NIGHTLY, GRACE, started, last, ts("2026-11-26T02:59:00"))[0]  # within grace
    assert not judge(NIGHTLY, GRACE, started, last, ts("2026-11-26T03:01:00"))[0]  # overdue


def test_a_failed_or_held_last_run_is_unhealthy_with_its_reason() -> None:
    started = ts("2026-11-24T10:00:00")
    now = ts("2026-11-25T03:00:00")
    failed = run("failed", "2026-11-25T02:01:00", "The API token is invalid (code=101)")
    ok, why = judge(NIGHTLY, GRACE, started, failed, now)
    assert not ok
    assert "run 7 failed" in why
    assert "code=101" in why
    assert not judge(NIGHTLY, GRACE, started, run("held", "2026-11-25T02:05:00"), now)[0]
    assert judge(NIGHTLY, GRACE, started, run("partial", "2026-11-25T02:05:00"), now)[0]


def test_a_restart_keeps_the_verdict_of_the_database() -> None:
    # Restarted at 10:00 after a run that failed at 02:01: the start time changes nothing.
    failed = run("failed", "2026-11-25T02:01:00", "boom")
    assert not judge(NIGHTLY, GRACE, ts("2026-11-25T10:00:00"), failed, ts("2026-11-25T10:01:00"))[
        0
    ]
    # And a run that was due before the restart and never finished is still overdue.
    stale = run("succeeded", "2026-11-24T02:30:00")
    ok, why = judge(NIGHTLY, GRACE, ts("2026-11-25T10:00:00"), stale, ts("2026-11-25T10:01:00"))
    assert not ok
    assert "2026-11-25T02:00:00" in why
