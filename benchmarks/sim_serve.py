"""Benchmark: MB/s the simulator serves for a large event=all user dump, fresh and cached.

Runs `syncsvc simulate` in a subprocess, fetches userData.do?event=all with aiohttp (reading and
discarding the stream), and reads the simulator's peak RSS (VmHWM) from /proc. Prints figures;
never passes or fails on time.

    .venv/bin/python benchmarks/sim_serve.py --users 1000000
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from pathlib import Path

import aiohttp


def _proc_kib(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


async def _fetch(base_url: str) -> tuple[int, float]:
    timeout = aiohttp.ClientTimeout(total=None, sock_read=600)
    start = time.perf_counter()
    size = 0
    async with aiohttp.ClientSession(timeout=timeout) as session:
        form = {"apiToken": "sim-account-token", "event": "all"}
        async with session.post(base_url + "userData.do", data=form) as resp:
            assert resp.status == 200, resp.status
            async for chunk in resp.content.iter_chunked(1 << 20):
                size += len(chunk)
    return size, time.perf_counter() - start


async def _run(args: argparse.Namespace, cache_dir: str | None) -> list[tuple[str, int, float]]:
    cmd = [
        sys.executable,
        "-m",
        "syncsvc",
        "simulate",
        "--port",
        "0",
        "--events",
        str(args.events),
        "--users-per-event",
        str(args.users // args.events),
        "--seed",
        str(args.seed),
    ]
    if cache_dir:
        cmd += ["--cache-dir", cache_dir]
    proc = await asyncio.create_subprocess_exec(*cmd, stdout=asyncio.subprocess.PIPE)
    try:
        assert proc.stdout is not None
        line = (await proc.stdout.readline()).decode()
        base_url = line.split()[2]
        idle_rss = _proc_kib(proc.pid, "VmRSS")
        results = []
        for label in (
            ["cache miss (render to file + sendfile)", "cache hit (sendfile)"]
            if cache_dir
            else ["fresh (streamed, chunked)"]
        ):
            size, elapsed = await _fetch(base_url)
            results.append((label, size, elapsed))
        peak = _proc_kib(proc.pid, "VmHWM")
        print(f"  simulator RSS: idle {idle_rss / 1024:.0f} MiB, peak {peak / 1024:.0f} MiB")
        return results
    finally:
        proc.terminate()
        await proc.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=1_000_000)
    parser.add_argument("--events", type=int, default=8)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    print(f"userData.do event=all, about {args.users:,} users in {args.events} events")
    for mode in ("fresh", "cached"):
        print(f"{mode}:")
        with tempfile.TemporaryDirectory(prefix="sim-cache-") as tmp:
            results = asyncio.run(_run(args, tmp if mode == "cached" else None))
        for label, size, elapsed in results:
            rate = size / 1e6 / elapsed
            print(f"  {label}: {size / 1e6:.1f} MB in {elapsed:.2f} s = {rate:.1f} MB/s")


if __name__ == "__main__":
    main()
