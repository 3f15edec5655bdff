"""The shared rate budget holds against a server that enforces the same limit, at full speed."""

from __future__ import annotations

import asyncio

from syncsvc import catalog
from syncsvc.cvent.retry import RetryPolicy
from tests.apiserver import ACCOUNT_TOKEN, EVENTS, client_for, collect, serve_api

NO_RETRY = RetryPolicy(max_attempts=1)
RATE, CONCURRENCY, BURST = 40, 4, 200


async def test_burst_of_200_fetches_is_never_rejected_and_waits_on_the_budget() -> None:
    async with (
        serve_api(
            starts_per_second=RATE,
            max_concurrent=CONCURRENCY,
            service_time=0.02,  # requests overlap, so the in-flight bound is exercised
            records_per_event=2,
        ) as server,
        client_for(
            server,
            policy=NO_RETRY,  # a single rejection would fail its fetch
            rate_limit=RATE,
            rate_period=1.0,
            max_concurrency=CONCURRENCY,
        ) as client,
        asyncio.TaskGroup() as tg,
    ):
        tasks = [
            tg.create_task(client.fetch(catalog.USERS, EVENTS[i % len(EVENTS)], collect))
            for i in range(BURST)
        ]
    assert all(t.result().records == 2 for t in tasks)
    assert sum(server.rejections.values()) == 0
    assert server.peak_starts_per_second() <= RATE
    assert server.peak_concurrency <= CONCURRENCY
    assert server.peak_concurrency == CONCURRENCY  # the bound was reached, not merely unused
    starts = sorted(server.starts[ACCOUNT_TOKEN])
    assert len(starts) == BURST
    # Steady-state throughput: the first window's burst is free, so measure from its last start
    # (a sliding window lets start k + RATE follow start k one window later).
    steady = (BURST - RATE) / (starts[-1] - starts[RATE - 1])
    # A figure, not an assertion: how much of the budget is used depends on how busy the machine
    # is (benchmarks/client_bench.py measures it); what must hold on any machine is above.
    print(f"steady throughput {steady:.1f}/s of a {RATE}/s budget ({steady / RATE:.0%})")
    assert client.stats.requests == BURST
    assert client.stats.rate_limit_waits > 0


async def test_the_servers_limiter_does_reject_a_client_over_budget() -> None:
    # The control: the same server and burst, the client's budget far above the server's.
    async with (
        serve_api(starts_per_second=RATE, max_concurrent=CONCURRENCY) as server,
        client_for(server, policy=NO_RETRY, rate_limit=1000, max_concurrency=16) as client,
    ):
        results = await asyncio.gather(
            *(client.fetch(catalog.USERS, EVENTS[0], collect) for _ in range(100)),
            return_exceptions=True,
        )
    assert sum(server.rejections.values()) > 0
    assert any(isinstance(r, Exception) for r in results)
