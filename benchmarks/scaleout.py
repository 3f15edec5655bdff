"""Benchmark: many accounts on 1, 2 and 4 `syncsvc worker` processes, against the rate bound.

N simulated accounts (one simulator each, all in one helper process on loopback), each with its
own per-token limits (request starts per second, requests in flight) and a latency and bandwidth
per request, so the work is I/O-bound as it is across real machines. For each worker count: a
fresh database, `syncsvc db upgrade`, W workers, one `syncsvc run` over every account
(executor = queue, the shared per-token budget), timed. Prints figures; never passes or fails on
time.

The lower bound is the slowest account alone under its own limits (accounts run side by side):
its event.do request, then its data requests, as fast as both of its limits allow,

    bound = max over accounts of  d_event + max(n_data / R, sum(d_data) / C)

with d = latency + bytes / bandwidth per request (bytes from the simulator's own count), R its
starts per second and C its requests in flight. Workers stop scaling where their places
(W x worker_concurrency) fall short of what the accounts may run at once (N x C).

    .venv/bin/pip install -e '.[queue]'
    .venv/bin/python benchmarks/scaleout.py --database-url postgresql://postgres@127.0.0.1:5432/postgres

SCALEOUT_KEEP=1 keeps each worker count's database (bench_scaleout_W) and writes the run's
stdout and log to /tmp/scaleout-run-W.{out,log}, to read its timeline from the fetches rows.
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

import asyncpg

TOKEN = "sim-account-token"  # noqa: S105 (the simulator's public token)
SIM_NICE = -10  # the simulators' scheduling priority (see serve_simulators)


# --- the simulators (run with --serve-simulators in a helper process) ----------------------------


async def serve_simulators(args: argparse.Namespace) -> None:
    from syncsvc.simulator import SimConfig, run_simulator

    opts: dict[str, Any] = {
        "rate_limit": {
            "starts_per_second": args.rate,
            "max_concurrent": args.in_flight,
            "period": 1.0,
        },
        "faults": [
            {"kind": "latency", "value": args.latency},
            {"kind": "bandwidth", "value": args.bandwidth},
        ],
    }
    # The simulators stand in for the vendor's servers, which do not share syncsvc's CPUs. On
    # this saturated 2-core machine a starved simulator process stamps requests late and in
    # bursts, and refuses starts the client spaced by the rules; ahead of everything else in
    # the scheduler (when allowed), it stamps them as they come.
    with contextlib.suppress(OSError):
        os.setpriority(os.PRIO_PROCESS, 0, SIM_NICE)
    async with contextlib.AsyncExitStack() as stack:
        sims = []
        for i in range(args.accounts):
            config = SimConfig(
                seed=100 + i,
                events=args.events,
                users_per_event=args.users_per_event,
                sessions_per_event=max(1, args.users_per_event // 10),
                exhibitors_per_event=max(1, args.users_per_event // 25),
                big_event_every=0,
                new_event_every=0,
            )
            # Each account its own token: the API's limits, and the shared budget, are per token.
            tokens = {f"{TOKEN}-{i:02d}": {"account_access": True}}
            sims.append(
                await stack.enter_async_context(run_simulator(config, tokens=tokens, **opts))
            )
        urls = json.dumps([s.base_url for s in sims])
        await asyncio.to_thread(Path(args.port_file).write_text, urls)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGTERM, stop.set)
        await stop.wait()


# --- the orchestration ---------------------------------------------------------------------------


def _config(base_urls: list[str], tmp: Path, path: Path) -> None:
    lines = []
    for i, url in enumerate(base_urls):
        token_file = tmp / f"token-{i:02d}"
        token_file.write_text(f"{TOKEN}-{i:02d}")
        lines += [
            "[[account]]",
            f'name = "acct-{i:02d}"',
            f'base_url = "{url}"',
            f'api_token_file = "{token_file}"',
            "",
        ]
    path.write_text("\n".join(lines))


async def _admin(url: str, sql: str) -> None:
    conn = await asyncpg.connect(url)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


async def _stats(base_urls: list[str]) -> list[dict[str, Any]]:
    import aiohttp

    out = []
    async with aiohttp.ClientSession() as session:
        for url in base_urls:
            root = url.removesuffix("api/")
            async with session.get(root + "_sim/stats") as resp:
                out.append(await resp.json())
            async with session.post(root + "_sim/stats/reset") as resp:
                await resp.read()
    return out


def _bound(stats: list[dict[str, Any]], args: argparse.Namespace) -> float:
    worst = 0.0
    for s in stats:
        n = s["total_requests"]
        data = n - 1
        d_event = args.latency  # event.do is small: its latency dominates
        total_d = n * args.latency + s["bytes_sent"] / args.bandwidth
        worst = max(worst, d_event + max(data / args.rate, (total_d - d_event) / args.in_flight))
    return worst


def _machine_cpu() -> tuple[float, float]:
    """The whole machine's (busy, total) CPU seconds since boot, every core (/proc/stat)."""
    ticks = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = ticks[3] + ticks[4]  # idle, iowait
    hz = os.sysconf("SC_CLK_TCK")
    return (sum(ticks[:8]) - idle) / hz, sum(ticks[:8]) / hz


def _start(cmd: list[str], env: dict[str, str], log: Path | None = None) -> subprocess.Popen[bytes]:
    out = log.open("ab") if log else subprocess.DEVNULL
    return subprocess.Popen(
        cmd, env=env, stdout=subprocess.DEVNULL, stderr=out, start_new_session=True
    )


def _stop(proc: subprocess.Popen[bytes], sig: int = signal.SIGTERM) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, sig)
    try:
        proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--database-url", help="a server where databases may be created (required)")
    p.add_argument("--accounts", type=int, default=20)
    p.add_argument("--workers", default="1,2,4")
    p.add_argument("--concurrency", type=int, default=10, help="units per worker at once")
    p.add_argument("--events", type=int, default=4)
    p.add_argument("--users-per-event", type=int, default=100)
    p.add_argument("--rate", type=float, default=2.0, help="starts/s per account token")
    p.add_argument("--in-flight", type=int, default=2, help="requests in flight per token")
    p.add_argument("--latency", type=float, default=0.5, help="seconds before each answer")
    p.add_argument("--bandwidth", type=float, default=200_000.0, help="bytes/s per request")
    p.add_argument(
        "--again",
        action="store_true",
        help="a second run per worker count, with nothing changed upstream (a quiet night)",
    )
    p.add_argument("--serve-simulators", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--port-file", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.serve_simulators:
        asyncio.run(serve_simulators(args))
        return
    if not args.database_url:
        p.error("--database-url is required")
    run_bench(args)


def run_bench(args: argparse.Namespace) -> None:
    tmp = Path(tempfile.mkdtemp(prefix="scaleout-"))
    port_file = tmp / "sims.json"
    sim_cmd = [sys.executable, __file__, "--serve-simulators", "--port-file", str(port_file)]
    for name in (
        "accounts",
        "events",
        "users_per_event",
        "rate",
        "in_flight",
        "latency",
        "bandwidth",
    ):
        sim_cmd += [f"--{name.replace('_', '-')}", str(getattr(args, name))]
    sims = _start(sim_cmd, dict(os.environ))
    try:
        while not port_file.exists():
            if sims.poll() is not None:
                raise SystemExit("the simulators did not start")
            time.sleep(0.1)
        base_urls = json.loads(port_file.read_text())
        config = tmp / "accounts.toml"
        _config(base_urls, tmp, config)
        rows = []
        for w in [int(x) for x in args.workers.split(",")]:
            rows.extend(_one(args, w, base_urls, config, tmp))
        _print(args, rows)
    finally:
        _stop(sims)


def _one(
    args: argparse.Namespace, workers: int, base_urls: list[str], config: Path, tmp: Path
) -> list[dict[str, Any]]:
    name = f"bench_scaleout_{workers}"
    server = args.database_url
    asyncio.run(_admin(server, f"DROP DATABASE IF EXISTS {name}"))
    asyncio.run(_admin(server, f"CREATE DATABASE {name}"))
    url = server.rsplit("/", 1)[0] + "/" + name
    env = {
        "PATH": os.environ.get("PATH", ""),
        "HOME": str(tmp),
        "SYNCSVC_CONFIG": str(config),
        "SYNCSVC_DATABASE_URL": url,
        "SYNCSVC_EXECUTOR": "queue",
        "SYNCSVC_RATE_BUDGET": "shared",
        "SYNCSVC_RATE_LIMIT": str(args.rate),
        "SYNCSVC_MAX_CONCURRENCY": str(args.in_flight),
        "SYNCSVC_USE_EVENT_ALL": "false",
        "SYNCSVC_PARSE_IN_WORKER": "never",
        "SYNCSVC_WORKER_CONCURRENCY": str(args.concurrency),
        "SYNCSVC_LOG_FORMAT": "json",
    }
    up = subprocess.run(
        [sys.executable, "-m", "syncsvc", "db", "upgrade"], env=env, capture_output=True, text=True
    )
    if up.returncode:
        raise SystemExit(up.stderr)
    procs = [
        _start([sys.executable, "-m", "syncsvc", "worker"], env, tmp / f"worker-{workers}.log")
        for _ in range(workers)
    ]
    rows = []
    try:
        asyncio.run(_workers_ready(url, procs))
        # The first run loads every account; with --again a second one finds nothing changed
        # upstream (the simulators stay on their day), as most units of a quiet night do.
        for again in range(2 if args.again else 1):
            rows.append(_timed_run(args, workers, base_urls, env, url, again=bool(again)))
    finally:
        for proc in procs:
            _stop(proc)
    if not os.environ.get("SCALEOUT_KEEP"):
        asyncio.run(_admin(server, f"DROP DATABASE IF EXISTS {name}"))
    return rows


def _timed_run(
    args: argparse.Namespace,
    workers: int,
    base_urls: list[str],
    env: dict[str, str],
    url: str,
    *,
    again: bool,
) -> dict[str, Any]:
    after = asyncio.run(_last_run(url))
    asyncio.run(_stats(base_urls))  # reset
    t0, cpu0 = time.monotonic(), _machine_cpu()
    run = subprocess.run(
        [sys.executable, "-m", "syncsvc", "run"], env=env, capture_output=True, text=True
    )
    wall, cpu1 = time.monotonic() - t0, _machine_cpu()
    if run.returncode:
        # What the run said about the accounts that did not succeed (stdout), then its log;
        # both whole in files too, as the terminal may keep only the table.
        said = [ln for ln in run.stdout.splitlines() if "acct-" in ln or "exit codes" in ln]
        print("\n".join(said[-40:]), file=sys.stderr)
        print(run.stderr[-3000:], file=sys.stderr)
        kept = Path(tempfile.mkdtemp(prefix=f"scaleout-failed-{workers}-"))
        (kept / "run.out").write_text(run.stdout)
        (kept / "run.log").write_text(run.stderr)
        print(f"the run exited {run.returncode}; its output and log: {kept}", file=sys.stderr)
    if os.environ.get("SCALEOUT_KEEP"):  # the run's log too, for a look at its timeline
        suffix = "-again" if again else ""
        Path(f"/tmp/scaleout-run-{workers}{suffix}.log").write_text(run.stderr)
        Path(f"/tmp/scaleout-run-{workers}{suffix}.out").write_text(run.stdout)
    stats = asyncio.run(_stats(base_urls))
    phases = asyncio.run(_phases(url, after))
    return {
        "workers": workers,
        "again": again,
        "exit": run.returncode,
        "wall": wall,
        # Busy CPU seconds of every process on the machine while the run ran, and their share
        # of what its cores could give: near 100% the run waits for CPU, not for the servers.
        "cpu": cpu1[0] - cpu0[0],
        "busy": (cpu1[0] - cpu0[0]) / max(cpu1[1] - cpu0[1], 1e-9),
        "bound": _bound(stats, args),
        "requests": sum(s["total_requests"] for s in stats),
        "rejections": sum(sum(s["rejections"].values()) for s in stats),
        "by_starts": sum(s.get("rate_limited_by", {}).get("starts", 0) for s in stats),
        "by_in_flight": sum(s.get("rate_limited_by", {}).get("in_flight", 0) for s in stats),
        "peak_in_flight": max(s["peak_concurrency"] for s in stats),
        "mb": sum(s["bytes_sent"] for s in stats) / 1e6,
        **phases,
    }


async def _workers_ready(url: str, procs: list[subprocess.Popen[bytes]]) -> None:
    """Until every worker has registered with procrastinate (before its first fetch): the run
    is timed from its start, and a worker still starting would leave it the others' places."""
    conn = await asyncpg.connect(url)
    try:
        while await conn.fetchval("SELECT count(*) FROM procrastinate_workers") < len(procs):
            if any(p.poll() is not None for p in procs):
                raise SystemExit("a worker exited before it started; see its log")
            await asyncio.sleep(0.1)
    finally:
        await conn.close()


async def _last_run(url: str) -> int:
    conn = await asyncpg.connect(url)
    try:
        return int(await conn.fetchval("SELECT coalesce(max(id), 0) FROM runs"))
    finally:
        await conn.close()


async def _phases(url: str, after: int) -> dict[str, float]:
    """Where the run's time went, from its own rows (runs after run id `after`): the runs'
    span (first start to last end), planning (a run's start to its first unit's claim, the
    slowest account's), units (first claim to last unit's end)."""
    conn = await asyncpg.connect(url)
    try:
        row = await conn.fetchrow(
            """
            WITH r AS (SELECT min(started_at) s, max(finished_at) f FROM runs WHERE id > $1),
                 p AS (SELECT max(u.first - runs.started_at) plan
                       FROM runs JOIN (SELECT run_id, min(started_at) first FROM fetches
                                       WHERE details ? 'worker' AND run_id > $1
                                       GROUP BY run_id) u
                       ON u.run_id = runs.id),
                 u AS (SELECT min(started_at) s, max(finished_at) f FROM fetches
                       WHERE details ? 'worker' AND run_id > $1)
            SELECT extract(epoch FROM r.f - r.s) span, extract(epoch FROM p.plan) plan,
                   extract(epoch FROM u.f - u.s) units
            FROM r, p, u
            """,
            after,
        )
    finally:
        await conn.close()
    return {k: float(row[k] or 0) for k in ("span", "plan", "units")}


def _print(args: argparse.Namespace, rows: list[dict[str, Any]]) -> None:
    demand = args.accounts * args.in_flight
    print(
        f"{args.accounts} accounts x {args.events} events x {args.users_per_event} users;"
        f" per token {args.rate:g} starts/s, {args.in_flight} in flight; latency"
        f" {args.latency:g} s, {args.bandwidth / 1000:g} kB/s per request;"
        f" worker_concurrency {args.concurrency}"
    )
    print(
        "| workers | places (workers x concurrency) vs accounts x in-flight | wall s |"
        " runs' span s (planning, units) | bound s | span / bound | requests | MB |"
        " rate-limit rejections (over starts, over in flight) | peak in flight (one token) |"
        " machine CPU s (busy) | exit |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        places = r["workers"] * args.concurrency
        label = f"{r['workers']} (again)" if r["again"] else str(r["workers"])
        print(
            f"| {label} | {places} vs {demand} | {r['wall']:.1f} |"
            f" {r['span']:.1f} ({r['plan']:.1f}, {r['units']:.1f}) | {r['bound']:.1f} |"
            f" {r['span'] / r['bound']:.2f}x | {r['requests']} | {r['mb']:.1f} |"
            f" {r['rejections']} ({r['by_starts']}, {r['by_in_flight']}) |"
            f" {r['peak_in_flight']} | {r['cpu']:.1f} ({r['busy']:.0%}) | {r['exit']} |"
        )


if __name__ == "__main__":
    main()
