"""Per-token rate limits in both modes, and the stats a test reads to check a client's manners."""

from __future__ import annotations

import asyncio
from typing import Any

from syncsvc.simulator import SimConfig
from tests.simulator_fixtures import EVENT_ONLY, post

SMALL = SimConfig(seed=4, events=2, users_per_event=5, sessions_per_event=2, exhibitors_per_event=1)
# A one-hour window: "the third start within the window" never depends on how fast the box is.
WIDE = 3600.0


async def test_starts_over_the_limit_get_code_301_per_token(simulator: Any) -> None:
    rate = {"starts_per_second": 2, "period": WIDE, "mode": "code"}
    async with simulator(SMALL, rate_limit=rate) as sim:
        answers = [await post(sim.base_url, "event.do") for _ in range(3)]
        other_token = await post(sim.base_url, "event.do", token=EVENT_ONLY)
        stats = await sim.stats()
    assert [(a.status, a.code) for a in answers] == [(200, 0), (200, 0), (200, 301)]
    assert other_token.code == 0  # limits are per token
    assert stats["rejections"] == {"301": 1}
    assert stats["rate_limited_by"] == {"starts": 1}


async def test_http429_mode_sends_429_with_retry_after(simulator: Any) -> None:
    async with simulator(SMALL) as sim:
        await sim.control(
            {
                "rate_limit": {
                    "starts_per_second": 1,
                    "period": WIDE,
                    "mode": "http429",
                    "retry_after": 7,
                }
            }
        )
        ok = await post(sim.base_url, "userData.do")
        limited = await post(sim.base_url, "userData.do")
        await sim.control({"rate_limit": None})
        lifted = await post(sim.base_url, "userData.do")
        stats = await sim.stats()
    assert ok.code == 0
    assert limited.status == 429
    assert limited.headers["Retry-After"] == "7"
    assert lifted.code == 0
    assert stats["rejections"] == {"http_429": 1}


async def test_requests_beyond_max_concurrent_are_refused_while_others_are_in_flight(
    simulator: Any,
) -> None:
    async with simulator(SMALL, rate_limit={"max_concurrent": 1}) as sim:
        await sim.control({"faults": [{"kind": "hold", "times": 1}]})
        first = asyncio.create_task(post(sim.base_url, "userData.do"))
        await sim.wait_in_flight(1)
        second = await post(sim.base_url, "userData.do")
        await sim.control({"release": True})
        first_answer = await first
        third = await post(sim.base_url, "userData.do")
        stats = await sim.stats()
    assert second.code == 301
    assert stats["rate_limited_by"] == {"in_flight": 1}
    assert first_answer.code == 0
    assert third.code == 0


async def test_stats_count_requests_peaks_and_rejections_and_reset(simulator: Any) -> None:
    async with simulator(SMALL) as sim:
        await sim.control({"faults": [{"kind": "hold", "resource": "sessionData.do", "times": 3}]})
        held = [asyncio.create_task(post(sim.base_url, "sessionData.do")) for _ in range(3)]
        await sim.wait_in_flight(3)
        await sim.control({"release": True})
        answers = await asyncio.gather(*held)
        await post(sim.base_url, "userData.do", token="nope")
        await post(sim.base_url, "exhibitorData.do", event="all")
        stats = await sim.stats()
        reset = await sim.reset_stats()
    assert all(a.code == 0 for a in answers)
    assert stats["requests"] == {"sessionData.do": 3, "userData.do": 1, "exhibitorData.do": 1}
    assert stats["total_requests"] == 5
    assert stats["peak_concurrency"] == 3
    assert 1 <= stats["peak_starts_per_second"] <= 5
    assert stats["rejections"] == {"101": 1, "104": 1}
    assert stats["in_flight"] == 0
    assert reset["total_requests"] == 0
    assert reset["peak_concurrency"] == 0
