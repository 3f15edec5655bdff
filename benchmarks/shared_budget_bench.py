"""The shared rate budget against one rate-limited simulator, with 1, 2 and 4 processes.

    nice -n 19 .venv/bin/python benchmarks/shared_budget_bench.py [--rate 10] [--period 1]
        [--in-flight 6] [--tasks 4] [--windows 6] [--mode code|http429] [--work 0]

Each process is benchmarks/budget_driver.py with a real `CventClient` (syncsvc/cvent/client.py)
under `rate_budget = shared`, fetching the events dump in a loop from one simulator (in this
process) that allows R = `--rate` request starts per second per token, counted per `--period`
seconds, and `--in-flight` requests at once, and refuses the rest (code 301 or 429). The
database is a scratch one on the machine's PostgreSQL (SYNCSVC_BENCH_DATABASE_URL's server, by
default postgresql://postgres@127.0.0.1:5432/postgres), migrated, and dropped at the end.

Printed per process count: the share of R used from the end of the first window's burst over
`--windows` windows (the simulator's count over this process's clock), the simulator's
refusals, its peak of requests in flight, `rate_budget_take` calls per start, and grants given
up for a late wake-up. Printed figures only, never pass/fail.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]


def start(args: list[str]) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "benchmarks.budget_driver", *args],
        cwd=REPO,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )


def collect(procs: list[subprocess.Popen[str]], tmp: str) -> list[dict[str, Any]]:
    for p in procs:
        p.communicate(timeout=120)
    return [json.loads(Path(f"{tmp}/w{i}.json").read_text()) for i in range(len(procs))]


async def one(opts: argparse.Namespace, dsn: str, processes: int) -> dict[str, Any]:
    import asyncpg

    from syncsvc.simulator import SimConfig, run_simulator

    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute("DELETE FROM rate_budget")  # each count starts from a fresh bucket
    finally:
        await conn.close()
    per_window = max(1, int(opts.rate * opts.period))
    limit = {
        "starts_per_second": per_window,
        "period": opts.period,
        "max_concurrent": opts.in_flight,
        "mode": opts.mode,
        "retry_after": 1,
    }
    config = SimConfig(seed=7, events=2, users_per_event=2, sessions_per_event=1)
    faults = [{"kind": "latency", "value": opts.work}] if opts.work else []
    async with run_simulator(config, rate_limit=limit) as sim:
        if faults:
            await sim.control({"faults": faults})
        served = sim.simulator.stats
        with tempfile.TemporaryDirectory(prefix="budget-bench-") as tmp:
            args = [
                *("--dsn", dsn, "--token", "sim-account-token"),
                *("--rate", str(per_window), "--period", str(opts.period)),
                *("--in-flight", str(opts.in_flight), "--tasks", str(opts.tasks)),
                *("--sim", sim.base_url),
            ]
            procs = [start([*args, "--out", f"{tmp}/w{i}.json"]) for i in range(processes)]
            try:

                async def total_reaches(n: int) -> tuple[int, float]:
                    while served.total < n:
                        served.changed.clear()
                        await served.changed.wait()
                    return served.total, time.monotonic()

                n1, t1 = await total_reaches(per_window)
                n2, t2 = await total_reaches(n1 + opts.windows * per_window)
                for p in procs:
                    assert p.stdin is not None
                    p.stdin.write("stop\n")
                    p.stdin.flush()
                outs = await asyncio.to_thread(collect, procs, tmp)
            finally:
                for p in procs:
                    with contextlib.suppress(ProcessLookupError):
                        os.killpg(p.pid, signal.SIGKILL)
                    p.wait()
        stats = await sim.stats()
    total = stats["total_requests"]
    return {
        "processes": processes,
        "R_starts_per_s": opts.rate,
        "period_s": opts.period,
        "mode": opts.mode,
        "share_of_R": round((n2 - n1) / (t2 - t1) / opts.rate, 3),
        "measured_s": round(t2 - t1, 2),
        "rejections": stats["rejections"],
        "client_retries": sum(o["retries"] for o in outs),
        "peak_in_flight": f"{stats['peak_concurrency']}/{opts.in_flight}",
        "take_calls_per_start": round(sum(o["take_calls"] for o in outs) / max(1, total), 2),
        "given_up_late": sum(o["given_up_late"] for o in outs),
        "given_up_paused": sum(o["given_up_paused"] for o in outs),
    }


async def main(opts: argparse.Namespace) -> None:
    import asyncpg

    from syncsvc.store import db

    server = os.environ.get(
        "SYNCSVC_BENCH_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/postgres"
    )
    name = f"i18bud_bench_{os.getpid()}"
    admin = await asyncpg.connect(server)
    await admin.execute(f'CREATE DATABASE "{name}"')
    dsn = server.rsplit("/", 1)[0] + "/" + name
    print(f"# shared_budget_bench {time.strftime('%Y-%m-%d %H:%M:%S', time.gmtime())} UTC")
    print(f"# load average before: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    try:
        engine = db.make_engine(db.sqlalchemy_url(dsn))
        try:
            await db.upgrade(engine)
        finally:
            await engine.dispose()
        for processes in opts.processes:
            print(json.dumps(await one(opts, dsn, processes)), flush=True)
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()
    print(f"# load average after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rate", type=float, default=10.0, help="R: request starts per second")
    ap.add_argument("--period", type=float, default=1.0)
    ap.add_argument("--in-flight", type=int, default=6)
    ap.add_argument("--tasks", type=int, default=4, help="callers per process")
    ap.add_argument("--windows", type=int, default=6, help="windows measured")
    ap.add_argument("--mode", choices=("code", "http429"), default="code")
    ap.add_argument("--work", type=float, default=0.0, help="seconds the simulator takes per call")
    ap.add_argument("--processes", type=int, nargs="+", default=[1, 2, 4])
    asyncio.run(main(ap.parse_args()))
