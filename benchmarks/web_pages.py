"""Benchmark: the status pages' timings on a big history (default 10,000 runs, 10,000,000 changes).

Builds a scratch database on the given server with set-based INSERT ... SELECT generate_series
(runs an hour apart, a dozen units each, the change log spread evenly over the runs, a partial
run every 50th, a held one every 97th, a run in progress and two consumers), then serves the pages
from serve's own app on loopback and prints each page's median and p95 over `--repeat` requests.
Timings only: nothing passes or fails on time. The database is dropped at the end (--keep keeps).

    .venv/bin/python benchmarks/web_pages.py [--url postgresql://postgres@127.0.0.1:5432/postgres]
        [--runs 10000] [--changes 10000000] [--repeat 20] [--keep]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
import uuid

import aiohttp
import asyncpg
from aiohttp import web

from syncsvc import serve
from syncsvc import web as status_pages
from syncsvc.metrics import Metrics
from syncsvc.settings import Settings
from syncsvc.store import db

EVENTS = 9  # per-event exhibitor units per run, beside event.do, users and sessions (all)

# One statement per table; every figure derives from the row number, so reruns are identical.
RUNS = """
INSERT INTO runs (id, started_at, finished_at, status, environment, trigger, options,
                  units_total, units_failed, units_held, records, bytes,
                  inserted, updated, deleted, rekeyed, error_message)
OVERRIDING SYSTEM VALUE
SELECT r,
       now() - make_interval(hours => $1::int - r + 1),
       now() - make_interval(hours => $1::int - r + 1) + make_interval(secs => 60 + (r % 37) * 7),
       CASE WHEN r % 97 = 0 THEN 'held' WHEN r % 50 = 0 THEN 'partial' ELSE 'succeeded' END,
       'production', 'serve', '{"delete_hold_ratio": 0.5, "delete_hold_min_rows": 20}',
       $3::int, (r % 50 = 0 AND r % 97 <> 0)::int, (r % 97 = 0)::int,
       400000 + r * 3, 250000000 + r * 1000::bigint,
       $2::bigint / $1::int * 2 / 10, $2::bigint / $1::int * 5 / 10, $2::bigint / $1::int * 2 / 10,
       $2::bigint / $1::int - ($2::bigint / $1::int * 2 / 10) * 2 - ($2::bigint / $1::int * 5 / 10),
       CASE WHEN r % 97 = 0 THEN '1 unit(s) held for mass deletes (re-run with --override-hold)'
            WHEN r % 50 = 0 THEN '1 unit(s) failed: exhibitor:E0003' END
FROM generate_series(1, $1) AS r
"""

# Unit u of run r has id (r - 1) * units + u; the users unit (u = 2) carries the run's changes.
FETCHES = """
INSERT INTO fetches (id, run_id, resource, entity, scope, status, started_at, finished_at,
                     attempts, http_status, bytes, records, inserted, updated, deleted, rekeyed,
                     fetch_seconds, stage_seconds, apply_seconds, error_code, error_message,
                     details)
OVERRIDING SYSTEM VALUE
SELECT (r - 1) * $3::int + u, r,
       CASE u WHEN 1 THEN 'event.do' WHEN 2 THEN 'userData.do' WHEN 3 THEN 'sessionData.do'
              ELSE 'exhibitorData.do' END,
       CASE u WHEN 1 THEN 'event' WHEN 2 THEN 'user' WHEN 3 THEN 'session'
              ELSE 'exhibitor' END,
       CASE WHEN u <= 3 THEN 'all' ELSE 'E' || lpad((u - 4)::text, 4, '0') END,
       CASE WHEN u = 2 AND r % 97 = 0 THEN 'held'
            WHEN u = 6 AND r % 50 = 0 AND r % 97 <> 0 THEN 'failed' ELSE 'applied' END,
       runs.started_at, runs.finished_at,
       CASE WHEN u = 6 AND r % 50 = 0 THEN 5 ELSE 1 END, 200,
       CASE WHEN u = 2 THEN 200000000 ELSE 50000 END, CASE WHEN u = 2 THEN 400000 ELSE 300 END,
       CASE WHEN u = 2 THEN runs.inserted ELSE 0 END, CASE WHEN u = 2 THEN runs.updated ELSE 0 END,
       CASE WHEN u = 2 THEN runs.deleted ELSE 0 END, CASE WHEN u = 2 THEN runs.rekeyed ELSE 0 END,
       12.5, 8.25, 3.5,
       NULL::int,
       CASE WHEN u = 6 AND r % 50 = 0 THEN 'Gave up after 5 attempts: HTTP 500' END,
       jsonb_build_object(
           'step_seconds', jsonb_build_object('staged', 6.1, 'diff_rows', 1.2, 'upsert', 0.9),
           'held', CASE WHEN u = 2 AND r % 97 = 0 THEN jsonb_build_array(jsonb_build_object(
                        'event_guid', 'E0001', 'live', 40000, 'deletes', 39000))
                        ELSE '[]'::jsonb END,
           'first_seq', CASE WHEN u = 2 THEN (r - 1) * ($2::bigint / $1::int) + 1 END,
           'last_seq', CASE WHEN u = 2 THEN r * ($2::bigint / $1::int) END)
FROM (SELECT id AS r, * FROM runs) AS runs CROSS JOIN generate_series(1, $3) AS u
"""

CHANGES = """
INSERT INTO changes (seq, run_id, fetch_id, entity, event_guid, record_key, client_id, op,
                     changed_fields, before, after, captured_at)
SELECT g, (g - 1) / $2 + 1, ((g - 1) / $2) * $3 + 2, 'user',
       'E' || lpad((g % $4)::text, 4, '0'), 'U' || g, 'C' || g,
       (ARRAY['insert', 'update', 'update', 'delete', 'rekey', 'update', 'insert', 'update',
              'update', 'delete'])[g % 10 + 1],
       CASE WHEN g % 10 IN (1, 2, 5, 7, 8) THEN ARRAY['custom.type_business', 'email']
            ELSE '{}'::text[] END,
       jsonb_build_object('userRef', 'U' || g, 'email', 'old' || g || '@example.org',
                          'customFields', jsonb_build_object('type_business', 'corp')),
       jsonb_build_object('userRef', 'U' || g, 'email', 'new' || g || '@example.org',
                          'customFields', jsonb_build_object('type_business', 'edu')),
       now() - make_interval(hours => ($5 - (g - 1) / $2)::int)
FROM generate_series($1::bigint, $6::bigint) AS g
"""

CHANGE_INDEXES = (
    "ix_changes_run_id",
    "ix_changes_entity_event_guid_record_key",
)


async def build(conn: asyncpg.Connection, runs: int, changes: int) -> None:
    units = EVENTS + 3
    per_run = changes // runs
    t = time.perf_counter()
    await conn.execute(RUNS, runs, changes, units)
    await conn.execute(FETCHES, runs, changes, units)
    print(
        f"  runs and fetches: {runs:,} runs, {runs * units:,} units "
        f"in {time.perf_counter() - t:.1f} s",
        flush=True,
    )
    # The secondary indexes are built once after the load (as a restore would), not row by row.
    defs = [
        await conn.fetchval("SELECT indexdef FROM pg_indexes WHERE indexname = $1", name)
        for name in CHANGE_INDEXES
    ]
    for name in CHANGE_INDEXES:
        await conn.execute(f"DROP INDEX {name}")
    t = time.perf_counter()
    batch = 1_000_000
    for first in range(1, runs * per_run + 1, batch):
        last = min(first + batch - 1, runs * per_run)
        await conn.execute(CHANGES, first, per_run, units, EVENTS, runs, last)
        print(f"  changes: {last:,} rows, {time.perf_counter() - t:.0f} s", flush=True)
    t = time.perf_counter()
    for d in defs:
        await conn.execute(d)
    print(f"  change indexes rebuilt in {time.perf_counter() - t:.1f} s", flush=True)
    await conn.execute(
        "SELECT setval(pg_get_serial_sequence('runs', 'id'), (SELECT max(id) FROM runs));"
        "SELECT setval(pg_get_serial_sequence('fetches', 'id'), (SELECT max(id) FROM fetches));"
    )
    await conn.execute(
        """
INSERT INTO runs (started_at, status, environment, trigger) VALUES (now(), 'running', 'production',
                                                                    'serve');
INSERT INTO fetches (run_id, resource, entity, scope, status, started_at)
SELECT max(id), 'userData.do', 'user', 'all', 'running', now() FROM runs;
INSERT INTO consumers (name, cursor, status, last_error, failing_since, webhook_url)
SELECT 'warehouse', max(seq) - 5000, 'active', NULL, NULL, NULL FROM changes
UNION ALL
SELECT 'crm', max(seq) - 2500000, 'failing', 'HTTP 503', now() - interval '2 days',
       'https://hooks.example/x' FROM changes;
"""
    )
    for table in ("runs", "fetches", "changes", "consumers"):
        await conn.execute(f"VACUUM ANALYZE {table}")


async def time_pages(url: str, runs: int, repeat: int) -> None:
    engine = db.make_engine(db.sqlalchemy_url(url))
    settings = Settings.load({}).replace(environment="production")
    health = serve.Health(settings.schedule, time.time(), 3600.0)

    def pages(app: web.Application, h: serve.Health) -> None:
        status_pages.register(app, engine, settings, h.healthy)

    runner = web.AppRunner(serve.make_app(health, Metrics(), pages), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    base = f"http://127.0.0.1:{runner.addresses[0][1]}"
    paths = {
        "runs (newest 50)": "/",
        "runs (older, mid-way)": f"/?before={runs // 2}",
        "run (held, 12 units)": f"/runs/{runs - runs % 97}",
        "run (partial)": f"/runs/{runs - runs % 50 - (50 if (runs - runs % 50) % 97 == 0 else 0)}",
        "trends (30 days)": "/trends",
        "consumers": "/consumers",
        "now": "/now",
    }
    try:
        async with aiohttp.ClientSession() as http:
            print(
                f"{'page':<24}{'first ms':>9}{'median ms':>11}{'p95 ms':>9}{'max ms':>9}{'KiB':>7}"
            )
            for name, path in paths.items():
                t = time.perf_counter()
                async with http.get(base + path) as resp:  # cold: the first request of a page
                    assert resp.status == 200, (path, resp.status, await resp.text())
                first = (time.perf_counter() - t) * 1000
                took = []
                size = 0
                for _ in range(repeat):
                    t = time.perf_counter()
                    async with http.get(base + path) as resp:
                        size = len(await resp.read())
                    took.append((time.perf_counter() - t) * 1000)
                took.sort()
                p95 = took[min(len(took) - 1, int(len(took) * 0.95))]
                print(
                    f"{name:<24}{first:>9.1f}{statistics.median(took):>11.1f}{p95:>9.1f}{took[-1]:>9.1f}"
                    f"{size / 1024:>7.0f}",
                    flush=True,
                )
    finally:
        await runner.cleanup()
        await engine.dispose()


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--url", default="postgresql://postgres@127.0.0.1:5432/postgres")
    ap.add_argument("--runs", type=int, default=10_000)
    ap.add_argument("--changes", type=int, default=10_000_000)
    ap.add_argument("--repeat", type=int, default=20)
    ap.add_argument("--keep", action="store_true", help="keep the scratch database")
    args = ap.parse_args()
    server = db.sqlalchemy_url(args.url)
    name = f"webbench_{uuid.uuid4().hex[:8]}"
    admin = await asyncpg.connect(db.libpq_url(server))
    await admin.execute(f'CREATE DATABASE "{name}"')
    await admin.close()
    url = server.set(database=name)
    try:
        engine = db.make_engine(url)
        await db.upgrade(engine)
        await engine.dispose()
        print(f"database {name}: {args.runs:,} runs, {args.changes:,} changes", flush=True)
        t = time.perf_counter()
        conn = await asyncpg.connect(db.libpq_url(url))
        try:
            await build(conn, args.runs, args.changes)
            size = await conn.fetchval(
                "SELECT pg_size_pretty(pg_database_size(current_database()))"
            )
        finally:
            await conn.close()
        print(f"built in {time.perf_counter() - t:.0f} s ({size})", flush=True)
        await time_pages(url.render_as_string(hide_password=False), args.runs, args.repeat)
    finally:
        if not args.keep:
            admin = await asyncpg.connect(db.libpq_url(server))
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            await admin.close()
        else:
            print(f"kept database {name}")


if __name__ == "__main__":
    asyncio.run(main())
