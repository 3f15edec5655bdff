"""Rate-limit storms: a run's client with a higher start rate than the server allows.

The simulator (in this process, over loopback) allows `--server-rate` request starts per second
and answers the rest with HTTP 429 and `Retry-After: 0`; the client, configured for
`--client-rate`, fetches one users dump per event, `--concurrency` at a time. Prints the share of
requests refused and the wall time. Prints figures; never pass/fail.

    python benchmarks/rate_limit_storm.py --events 40 --server-rate 5 --client-rate 20
"""

from __future__ import annotations

import argparse
import asyncio
import time
from typing import Any


async def main(args: argparse.Namespace) -> None:
    from syncsvc import catalog, logs
    from syncsvc.cvent.client import CventClient
    from syncsvc.parse.document import element_to_dict
    from syncsvc.parse.stream import ParseStage, collect_all
    from syncsvc.settings import Settings
    from syncsvc.simulator import SimConfig, run_simulator

    logs.configure("error", "console")
    config = SimConfig(seed=3, events=args.events, users_per_event=20, new_event_every=0)
    async with run_simulator(config) as sim:
        await sim.control(
            {
                "rate_limit": {
                    "starts_per_second": args.server_rate,
                    "mode": "http429",
                    "retry_after": 0,
                }
            }
        )
        settings = Settings().replace(
            base_url=sim.base_url,
            api_token="sim-account-token",  # noqa: S106 (the simulator's)
            rate_limit=args.client_rate,
            max_concurrency=args.concurrency,
            retry_attempts=30,
            retry_base_delay=0.05,
            retry_max_delay=2.0,
        )

        async def count(batches: Any) -> int:
            return sum([len(b) async for b in batches])

        async with CventClient.open(settings) as client:
            parse = ParseStage(settings)  # the users dumps are counted, not staged: in process
            listed = parse.consumer(catalog.EVENTS, collect_all, element_to_dict)
            events = (await client.fetch(catalog.EVENTS, None, listed)).value
            await sim.reset_stats()
            guids = [e["eventGUID"] for e in events]
            queue = list(guids)
            t0 = time.perf_counter()

            async def worker() -> None:
                while queue:
                    await client.fetch(
                        catalog.USERS, queue.pop(), parse.consumer(catalog.USERS, count)
                    )

            await asyncio.gather(*(worker() for _ in range(args.concurrency)))
            took = time.perf_counter() - t0
        stats = await sim.stats()
    refused = sum(stats.get("rejections", {}).values())
    total = stats.get("total_requests", 0)
    print(
        f"{len(guids)} dumps, server {args.server_rate}/s, client {args.client_rate}/s x"
        f" {args.concurrency}: {total} requests, {refused} refused"
        f" ({refused / max(total, 1):.0%}), {took:.1f} s"
        f" (ideal at the server's rate: {len(guids) / args.server_rate:.1f} s)"
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=40)
    parser.add_argument("--server-rate", type=float, default=5)
    parser.add_argument("--client-rate", type=float, default=20)
    parser.add_argument("--concurrency", type=int, default=4)
    asyncio.run(main(parser.parse_args()))
