"""End-to-end fetch throughput over loopback HTTP: server in another process, client parses.

Prints figures; never pass/fail. `python benchmarks/client_bench.py --records 100000`.
"""

from __future__ import annotations

import argparse
import asyncio
import gzip
import socket
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from parser_bench import synthetic_users


def serve(port: int, records: int, compress: bool) -> None:
    from aiohttp import web

    doc = synthetic_users(records)
    body = gzip.compress(doc, 1) if compress else doc
    headers = {"Content-Type": "application/xml"}
    if compress:
        headers["Content-Encoding"] = "gzip"

    async def handler(_: web.Request) -> web.Response:
        return web.Response(body=body, headers=headers)

    app = web.Application()
    app.router.add_post("/api/userData.do", handler)
    web.run_app(app, host="127.0.0.1", port=port, print=None)


async def fetch(port: int, on_record: Any, label: str, records: int) -> None:
    from syncsvc import catalog
    from syncsvc.cvent.client import CventClient
    from syncsvc.parse.stream import ParseStage
    from syncsvc.settings import Settings

    settings = Settings().replace(base_url=f"http://127.0.0.1:{port}/api/", api_token="bench-token")  # noqa: S106

    async def count(batches: Any) -> int:
        n = 0
        async for batch in batches:
            n += len(batch)
        return n

    async with CventClient.open(settings) as client:
        best = float("inf")
        for _ in range(3):
            t0 = time.perf_counter()
            consume = ParseStage(settings).consumer(catalog.USERS, count, on_record)
            result = await client.fetch(catalog.USERS, None, consume)
            best = min(best, time.perf_counter() - t0)
            assert result.value == records
        print(
            f"{label:>28}: {records / best:,.0f} records/s ({result.bytes / best / 1e6:.0f} MB/s)"
        )


async def main(args: argparse.Namespace) -> None:
    from syncsvc.parse.document import element_to_dict

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    for compress in (False, True):
        extra = ["--gzip"] if compress else []
        proc = await asyncio.create_subprocess_exec(
            sys.executable, __file__, "--serve", str(port), "--records", str(args.records), *extra
        )
        try:
            for _ in range(100):
                try:
                    _, w = await asyncio.open_connection("127.0.0.1", port)
                    w.close()
                    break
                except OSError:
                    await asyncio.sleep(0.1)
            enc = "gzip" if compress else "identity"
            await fetch(port, lambda e: None, f"{enc}, on_record=noop", args.records)
            await fetch(port, element_to_dict, f"{enc}, element_to_dict", args.records)
        finally:
            if proc.returncode is None:
                proc.terminate()
            await proc.wait()


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--records", type=int, default=100_000)
    ap.add_argument("--serve", type=int)
    ap.add_argument("--gzip", action="store_true")
    cli = ap.parse_args()
    if cli.serve:
        serve(cli.serve, cli.records, cli.gzip)
    else:
        asyncio.run(main(cli))
