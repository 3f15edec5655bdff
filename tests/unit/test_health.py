"""/healthz's judgement: healthy until a scheduled run is overdue (pure, no clock)."""

from __future__ import annotations

from datetime import UTC, datetime

from syncsvc.serve import Health

NIGHTLY = "0 2 * * *"


def ts(text: str) -> float:
    return datetime.fromisoformat(text).replace(tzinfo=UTC).timestamp()


def test_healthy_before_any_run_was_due_since_start() -> None:
    h = Health(NIGHTLY, started_at=ts("2026-11-24T10:00:00"), grace=3600)
    assert h.healthy(ts("2026-11-24T23:00:00"))[0]
    # 02:00 fired, still within its grace hour: the run may be in progress.
    assert h.healthy(ts("2026-11-25T02:30:00"))[0]


def test_unhealthy_once_a_due_run_is_overdue() -> None:
    h = Health(NIGHTLY, started_at=ts("2026-11-24T10:00:00"), grace=3600)
    ok, why = h.healthy(ts("2026-11-25T03:30:00"))
    assert not ok
    assert "2026-11-25T02:00:00" in why


def test_healthy_when_the_due_run_finished() -> None:
    h = Health(NIGHTLY, started_at=ts("2026-11-24T10:00:00"), grace=3600)
    h.last_finished = ts("2026-11-25T02:40:00")
    assert h.healthy(ts("2026-11-25T03:30:00"))[0]
    assert h.healthy(ts("2026-11-26T02:59:00"))[0]  # next night, within grace
    assert not h.healthy(ts("2026-11-26T03:01:00"))[0]  # next night's run overdue
