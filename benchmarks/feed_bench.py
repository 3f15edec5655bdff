"""Benchmark: the change feed. Prints figures; never passes or fails on time.

1. `syncsvc changes --consumer` to /dev/null: rows/s (a subprocess, as a user runs it).
2. Webhook delivery by `syncsvc serve` (a subprocess) to a receiver on loopback in this process
   that verifies every request's signature (standardwebhooks): changes/s, and serve's RSS
   sampled as the backlog drains (flat memory = the same RSS at 10% and at 100%).
3. `syncsvc changes --follow` latency: units committed one after another through UnitWriter;
   for each, the time from its commit notification (a LISTEN in this process) to the follower
   printing the unit's last seq; p50 / p99.

Creates a scratch database on the given server (change rows generated in SQL, shaped like real
user records: ~600-byte before/after images) and drops it.

    .venv/bin/python benchmarks/feed_bench.py [--url postgresql://postgres@127.0.0.1:5432/postgres]
        [--changes 100000] [--batch-size 1000] [--units 100] [--unit-rows 20]
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import asyncpg
from aiohttp import web
from standardwebhooks import Webhook

from syncsvc import logs
from syncsvc.records import from_typed
from syncsvc.store import db
from syncsvc.store.runs import create_run
from syncsvc.store.unit import UnitWriter

SEED_SQL = """
INSERT INTO changes (seq, run_id, entity, event_guid, record_key, client_id, op, changed_fields,
                     before, after, source_modified_at)
SELECT i, $1, 'user', 'EVENT-' || (i % 20), 'U' || i, 'C' || i,
       CASE WHEN i % 10 = 0 THEN 'update' ELSE 'insert' END,
       CASE WHEN i % 10 = 0 THEN ARRAY['city'] ELSE '{}'::text[] END,
       CASE WHEN i % 10 = 0 THEN jsonb_build_object(
           'userRef', 'U' || i, 'clientID', 'C' || i, 'eventGUID', 'EVENT-' || (i % 20),
           'firstName', 'First' || (i % 997), 'lastName', 'Last' || (i % 1009),
           'email', 'user' || i || '@example.org', 'company', 'Company ' || (i % 503),
           'title', 'Engineer', 'phone', '+47 555 0100', 'city', 'Bergen', 'country', 'NO',
           'attendeeType', 'Attendee', 'registrationStatus', 'Accepted',
           'registrationDate', '2026-05-01T09:30:00+00:00',
           'lastModified', '2026-05-01T09:30:00+00:00',
           'customFields', jsonb_build_object('type_business', 'govt', 'diet', 'd' || (i % 5)))
       END,
       jsonb_build_object(
           'userRef', 'U' || i, 'clientID', 'C' || i, 'eventGUID', 'EVENT-' || (i % 20),
           'firstName', 'First' || (i % 997), 'lastName', 'Last' || (i % 1009),
           'email', 'user' || i || '@example.org', 'company', 'Company ' || (i % 503),
           'title', 'Engineer', 'phone', '+47 555 0100', 'city', 'Oslo', 'country', 'NO',
           'attendeeType', 'Attendee', 'registrationStatus', 'Accepted',
           'registrationDate', '2026-05-01T09:30:00+00:00',
           'lastModified', '2026-05-02T09:30:00+00:00',
           'customFields', jsonb_build_object('type_business', 'govt', 'diet', 'd' || (i % 5))),
       '2026-05-02T09:30:00+00:00'
FROM generate_series(1, $2) AS i
"""


def env_for(url: str, **extra: str) -> dict[str, str]:
    return {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": os.environ.get("HOME", "/tmp"),
        "SYNCSVC_DATABASE_URL": url,
        "SYNCSVC_LOG_LEVEL": "warning",
        "SYNCSVC_LOG_FORMAT": "json",
        **extra,
    }


def syncsvc(env: dict[str, str], *args: str, **kw: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "syncsvc", *args], env=env, text=True, check=True, **kw
    )


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


async def bench_pull(url: str, n: int) -> None:
    env = env_for(url)
    syncsvc(env, "consumers", "add", "bench-pull", capture_output=True)
    started = time.perf_counter()
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    with open(os.devnull, "w") as null:  # noqa: ASYNC230 (one open of /dev/null)
        syncsvc(env, "changes", "--consumer", "bench-pull", stdout=null)
    took = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime
    print(
        f"changes --consumer to /dev/null: {n:,} rows in {took:.2f} s wall = {n / took:,.0f}"
        f" rows/s; the process used {cpu:.2f} CPU s (start-up included) = {n / cpu:,.0f}"
        " rows per CPU second"
    )


async def bench_webhook(url: str, n: int, batch_size: int) -> None:
    secret = "whsec_" + base64.b64encode(os.urandom(32)).decode()
    verifier = Webhook(secret)
    received = 0
    requests = 0

    async def hook(request: web.Request) -> web.Response:
        nonlocal received, requests
        body = await request.read()
        payload = verifier.verify(body, dict(request.headers))
        received += len(payload["data"]["changes"])
        requests += 1
        return web.Response(status=204)

    app = web.Application(client_max_size=64 * 1024**2)
    app.router.add_post("/hook", hook)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    with tempfile.TemporaryDirectory() as tmp:
        secret_file = Path(tmp) / "secret"
        secret_file.write_text(secret)
        env = env_for(
            url,
            SYNCSVC_BASE_URL="http://127.0.0.1:9/api/",
            SYNCSVC_API_TOKEN="unused-token",  # noqa: S106 (serve wants one; no run is due)
            SYNCSVC_SCHEDULE="0 0 1 1 *",
            SYNCSVC_SERVE_PORT="0",
            SYNCSVC_SERVE_HOST="127.0.0.1",
        )
        syncsvc(
            env, "consumers", "add", "bench-hook", "--webhook", f"http://127.0.0.1:{port}/hook",
            "--secret-file", str(secret_file), "--batch-size", str(batch_size),
            capture_output=True,
        )  # fmt: skip
        conn = await asyncpg.connect(url)
        serve = subprocess.Popen(  # noqa: ASYNC220 (polled below, never waited on blocking)
            [sys.executable, "-m", "syncsvc", "serve"],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            samples: list[tuple[float, float]] = []
            started = None
            while True:
                cursor = await conn.fetchval(
                    "SELECT cursor FROM consumers WHERE name = 'bench-hook'"
                )
                if started is None and received:
                    started = time.perf_counter()
                    first = received
                samples.append((cursor / n, rss_mb(serve.pid)))
                if cursor >= n:
                    break
                await asyncio.sleep(0.25)
            took = time.perf_counter() - (started or time.perf_counter())
            fields = Path(f"/proc/{serve.pid}/stat").read_text().rsplit(")", 1)[1].split()  # noqa: ASYNC240
            cpu = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        finally:
            serve.terminate()
            serve.wait(timeout=60)
            await conn.close()
            await runner.cleanup()
    rate = (n - first) / took if took else float("nan")
    print(
        f"webhook delivery (batch {batch_size}, every request verified): {n:,} changes in"
        f" {requests:,} requests, {took:.2f} s from the first delivery = {rate:,.0f} changes/s"
    )
    marks = []
    for pct in (0.1, 0.25, 0.5, 0.75, 1.0):
        rss = next((s for s in samples if s[0] >= pct), samples[-1])[1]
        marks.append(f"{pct:.0%} {rss:.0f} MB")
    print(f"  serve used {cpu:.2f} CPU s in all = {n / cpu:,.0f} changes per CPU second")
    peak = max(r for _, r in samples)
    print(f"  serve RSS as the backlog drains: {', '.join(marks)}; peak {peak:.0f} MB")


async def bench_follow(url: str, units: int, rows: int) -> None:
    listen = await asyncpg.connect(url)
    high = int(await listen.fetchval("SELECT coalesce(max(seq), 0) FROM changes"))
    notified: dict[int, float] = {}
    await listen.add_listener(
        "syncsvc_changes", lambda *a: notified.setdefault(int(a[3]), time.perf_counter())
    )
    env = env_for(url)
    follower = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "syncsvc", "changes", "--follow", "--since", str(high),
        env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL,
    )  # fmt: skip
    arrived: dict[int, float] = {}

    async def read() -> None:
        assert follower.stdout is not None
        async for line in follower.stdout:
            seq = json.loads(line)["seq"]
            arrived[seq] = time.perf_counter()

    reader = asyncio.create_task(read())
    while not await listen.fetchval(  # noqa: ASYNC110 (polling another process's state)
        "SELECT count(*) FROM pg_stat_activity WHERE query LIKE 'LISTEN %syncsvc_changes%'"
        " AND pid <> pg_backend_pid() AND datname = current_database()"
    ):
        await asyncio.sleep(0.05)
    engine = db.make_engine(db.sqlalchemy_url(url))
    last_seqs = []
    try:
        run_id = await create_run(engine)
        for u in range(units):
            records = [
                from_typed("user", {"eventGUID": f"F{u}", "userRef": f"R{i}", "city": "Oslo"})
                for i in range(rows)
            ]
            async with UnitWriter(engine, run_id=run_id, resource="user", scope=f"F{u}") as unit:
                await unit.stage_records(records)
                result = await unit.apply(complete=True)
            assert result.last_seq is not None
            last_seqs.append(result.last_seq)
            while result.last_seq not in arrived:  # noqa: ASYNC110
                await asyncio.sleep(0.001)
    finally:
        follower.terminate()
        await follower.wait()
        reader.cancel()
        await engine.dispose()
        await listen.close()
    lat = sorted((arrived[s] - notified[s]) * 1000 for s in last_seqs if s in notified)
    p99 = lat[min(len(lat) - 1, int(len(lat) * 0.99))]
    print(
        f"changes --follow, commit notification -> line printed, {len(lat)} units of {rows}:"
        f" p50 {statistics.median(lat):.1f} ms, p99 {p99:.1f} ms, max {lat[-1]:.1f} ms"
    )


async def main() -> None:
    logs.configure("warning", "json")  # the follow units' own log lines are not the figures
    parser = argparse.ArgumentParser()
    parser.add_argument("--url", default="postgresql://postgres@127.0.0.1:5432/postgres")
    parser.add_argument("--changes", type=int, default=100_000)
    parser.add_argument("--batch-size", type=int, default=1000)
    parser.add_argument("--units", type=int, default=100)
    parser.add_argument("--unit-rows", type=int, default=20)
    args = parser.parse_args()
    name = f"feed_bench_{uuid.uuid4().hex[:8]}"
    admin = await asyncpg.connect(args.url)
    await admin.execute(f'CREATE DATABASE "{name}"')
    url = db.libpq_url(db.sqlalchemy_url(args.url).set(database=name))
    try:
        engine = db.make_engine(db.sqlalchemy_url(url))
        await db.upgrade(engine)
        await engine.dispose()
        conn = await asyncpg.connect(url)
        run_id = await conn.fetchval(
            "INSERT INTO runs (environment, status) VALUES ('production', 'succeeded') RETURNING id"
        )
        t = time.perf_counter()
        await conn.execute(SEED_SQL, run_id, args.changes)
        await conn.execute("VACUUM ANALYZE changes")
        size = await conn.fetchval("SELECT pg_size_pretty(pg_total_relation_size('changes'))")
        await conn.close()
        print(f"seeded {args.changes:,} change rows ({size}) in {time.perf_counter() - t:.1f} s")
        await bench_pull(url, args.changes)
        await bench_webhook(url, args.changes, args.batch_size)
        await bench_follow(url, args.units, args.unit_rows)
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


if __name__ == "__main__":
    asyncio.run(main())
