"""One process under the shared rate budget: the tests' and benchmarks/shared_budget_bench.py's.

    python -m benchmarks.budget_driver --dsn DSN --token TOKEN --out FILE [options]

Opens a `SharedBudget` (syncsvc/store/ratebudget.py) for TOKEN, prints `ready` on stdout, then
runs `--tasks` callers that each loop: take a place and a start (`budget.request()`), do the
"request", give the place back. The request is a sleep of `--work` seconds, or, with `--sim
BASE_URL`, a real `CventClient` fetch of the events dump from the simulator there (the client
takes its starts from the same budget). It stops after `--starts` starts of this process, or
(without `--starts`) at a line or the end of its stdin, and writes to `--out` (JSON) every
start as (granted start in the database's clock, start, end in time.time()), the budget's
counters, and when it backed off.
`--backoff-after N` calls `budget.back_off(--backoff-delay)` after its N-th start (as the
client does on a 429). `--hold` takes `--tasks` places and keeps them until killed.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from pathlib import Path
from typing import Any


async def main(opts: argparse.Namespace) -> None:
    from syncsvc import catalog, logs
    from syncsvc.cvent.client import CventClient
    from syncsvc.cvent.retry import RetryPolicy
    from syncsvc.parse.document import element_to_dict
    from syncsvc.parse.stream import ParseStage, collect_all
    from syncsvc.settings import Settings
    from syncsvc.store.ratebudget import SharedBudget

    logs.configure("error", "console")
    settings = Settings().replace(
        base_url=opts.sim or "http://127.0.0.1:9/api/",
        api_token=opts.token,
        rate_budget="shared",
        rate_limit=opts.rate,
        rate_period=opts.period,
        max_concurrency=opts.in_flight,
        rate_budget_lease_ttl=opts.ttl,
        retry_attempts=50,
        retry_base_delay=0.05,
        retry_max_delay=opts.period,
        retry_budget=3600.0,
    )
    events: list[tuple[float, float, float]] = []
    backoff_at: float | None = None
    stop = asyncio.Event()
    started = 0

    async with SharedBudget.open(settings, opts.dsn) as budget:
        print("ready", flush=True)

        def counted() -> None:
            nonlocal started, backoff_at
            started += 1
            if opts.starts and started >= opts.starts:
                stop.set()
            if opts.backoff_after and started == opts.backoff_after:
                backoff_at = time.time()
                budget.back_off(opts.backoff_delay)

        async def watch_stdin() -> None:
            await asyncio.to_thread(sys.stdin.readline)  # a line, or the end of the pipe
            stop.set()

        async def caller(client: CventClient | None) -> None:
            parse = ParseStage(settings)
            while not stop.is_set():
                if client is not None:
                    # The client takes the place and the start itself, as in a run.
                    consume = parse.consumer(catalog.EVENTS, collect_all, element_to_dict)
                    t0 = time.time()
                    await client.fetch(catalog.EVENTS, None, consume)
                    events.append((0.0, t0, time.time()))  # grants: not per call here
                    counted()
                    continue
                async with budget.request():
                    start = time.time()
                    grant = budget.last_grant
                    counted()
                    if opts.hold:
                        print("holding", flush=True)
                        await asyncio.Event().wait()  # until killed
                    await asyncio.sleep(opts.work)
                    events.append((grant, start, time.time()))
                budget.succeeded()  # as the client does after a call that went through

        watcher = asyncio.create_task(watch_stdin()) if not opts.starts else None
        if opts.sim:
            policy = RetryPolicy.from_settings(settings)
            async with CventClient.open(settings, policy=policy, budget=budget) as client:
                await asyncio.gather(*(caller(client) for _ in range(opts.tasks)))
                retries = client.stats.retries
        else:
            await asyncio.gather(*(caller(None) for _ in range(opts.tasks)))
            retries = 0
        if watcher is not None:
            watcher.cancel()
        out: dict[str, Any] = {
            "events": events,
            "backoff_at": backoff_at,
            "grants": budget.grants,
            "given_up_late": budget.given_up_late,
            "given_up_paused": budget.given_up_paused,
            "take_calls": budget.take_calls,
            "retries": retries,
            "late_limit": budget.late_limit,
            "horizon": budget.horizon,
        }
    await asyncio.to_thread(Path(opts.out).write_text, json.dumps(out))


# --- what a server counting arrivals would see (the tests' and the benchmark's reading) -------


def most_in_window(times: list[float], length: float) -> int:
    """The most of `times` in any half-open window [t, t + length)."""
    ts = sorted(times)
    worst = j = 0
    for i, t in enumerate(ts):
        while ts[j] <= t - length:
            j += 1
        worst = max(worst, i - j + 1)
    return worst


def peak_in_flight(events: list[tuple[float, float, float]]) -> int:
    """The most (start, end) intervals open at once."""
    edges = sorted([(e[1], 1) for e in events] + [(e[2], -1) for e in events])
    cur = peak = 0
    for _, d in edges:
        cur += d
        peak = max(peak, cur)
    return peak


def parse_args(argv: list[str]) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dsn", required=True)
    ap.add_argument("--token", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--rate", type=float, default=10)
    ap.add_argument("--period", type=float, default=1.0)
    ap.add_argument("--in-flight", type=int, default=4)
    ap.add_argument("--ttl", type=float, default=15.0)
    ap.add_argument("--tasks", type=int, default=4)
    ap.add_argument("--work", type=float, default=0.01)
    ap.add_argument("--starts", type=int, default=0)
    ap.add_argument("--backoff-after", type=int, default=0)
    ap.add_argument("--backoff-delay", type=float, default=0.0)
    ap.add_argument("--hold", action="store_true")
    ap.add_argument("--sim", default="")
    return ap.parse_args(argv)


if __name__ == "__main__":
    asyncio.run(main(parse_args(sys.argv[1:])))
