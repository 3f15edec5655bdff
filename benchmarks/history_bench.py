"""Benchmark: SCD2 history as views (what syncsvc ships) against an incrementally maintained
table, on a large history: "as of T" for one event's users and for all users, and what the
table costs to build, to store and to keep up to date after each run.

The change log is generated in SQL: N users over 20 events inserted on day 0, then each of D
days updates about 5% of them (whole before/after images, like full-1m's). Prints figures;
never passes or fails. Target (issue 15): one event's users as of T on 1M users with 30 days
of history in < 1 s.

    .venv/bin/python benchmarks/history_bench.py [--url postgresql://postgres@127.0.0.1:5432/postgres]
        [--users 1000000] [--days 30]
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import asyncpg

sys.path.insert(0, str(Path(__file__).resolve().parent))

from run import scratch_database, server_url

from syncsvc.catalog import USERS
from syncsvc.export.history import as_of_query, view_sql
from syncsvc.store import db
from syncsvc.store.db import sqlalchemy_url

T0 = dt.datetime(2026, 5, 1, 2, 0, tzinfo=dt.UTC)
EVENTS = 20
IMAGE = """jsonb_build_object(
    'userRef', 'U' || g, 'clientID', 'C' || g, 'eventGUID', 'EVENT-' || (g % {events}),
    'firstName', 'First' || (g % 997), 'lastName', 'Last' || (g % 1009),
    'email', 'user' || g || '@example.org', 'company', 'Company ' || (g % 503),
    'title', 'Engineer', 'phone', '+47 555 0100', 'city', 'City ' || {day}, 'state', null,
    'country', 'NO', 'attendeeType', 'Attendee', 'registrationStatus', 'Accepted',
    'registrationDate', '2026-05-01T09:30:00+00:00', 'lastModified', $3::timestamptz,
    'customFields', jsonb_build_object('type_business', 'govt', 'diet', 'd' || {day}),
    'extras', null)"""


async def add_day(conn: Any, run: int, n: int, day: int) -> int:
    """Day 0 inserts every user; later days update ~5%. Returns the rows added."""
    after = IMAGE.format(events=EVENTS, day=day)
    before = IMAGE.format(events=EVENTS, day=f"({day} - 1)")
    where = "" if day == 0 else f"WHERE (g * 7919 + {day} * 104729) % 100 < 5"
    status = await conn.execute(
        f"""
        INSERT INTO changes (seq, run_id, entity, event_guid, record_key, client_id, op,
                             changed_fields, before, after, source_modified_at, captured_at)
        SELECT (SELECT coalesce(max(seq), 0) FROM changes) + row_number() OVER (ORDER BY g),
               $1, 'user', 'EVENT-' || (g % {EVENTS}), 'U' || g, 'C' || g,
               {"'insert'" if day == 0 else "'update'"},
               {"'{}'::text[]" if day == 0 else "ARRAY['city', 'custom.diet']"},
               {"NULL" if day == 0 else before}, {after}, $3, $3
        FROM generate_series(1, $2::bigint) AS g {where}
        """,
        run,
        n,
        T0 + dt.timedelta(days=day),
    )
    return int(status.split()[-1])


async def timed(conn: Any, sql: str, *args: Any, repeat: int = 3) -> tuple[float, int]:
    """Median seconds of fetching every row of `sql` (to this client), and the row count."""
    times, rows = [], 0
    for _ in range(repeat):
        started = time.perf_counter()
        rows = len(await conn.fetch(sql, *args))
        times.append(time.perf_counter() - started)
    return statistics.median(times), rows


async def server_seconds(conn: Any, sql: str, *args: Any, repeat: int = 3) -> float:
    """Median execution time inside PostgreSQL (EXPLAIN ANALYZE: every output column computed,
    nothing sent), so client decoding is not in the figure."""
    times = []
    for _ in range(repeat):
        plan = await conn.fetchval(f"EXPLAIN (ANALYZE, TIMING OFF, FORMAT JSON) {sql}", *args)
        times.append(json.loads(plan)[0]["Execution Time"] / 1000)
    return statistics.median(times)


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", help="A PostgreSQL server (default: an embedded one).")
    parser.add_argument("--users", type=int, default=1_000_000)
    parser.add_argument("--days", type=int, default=30)
    args = parser.parse_args()
    out: dict[str, Any] = {"users": args.users, "days": args.days, "events": EVENTS}
    with server_url(args.url) as server:
        async with scratch_database(server, "history_bench") as url:
            engine = db.make_engine(sqlalchemy_url(url))
            try:
                await db.upgrade(engine)
            finally:
                await engine.dispose()
            conn = await asyncpg.connect(url)
            try:
                run = await conn.fetchval(
                    "INSERT INTO runs (environment, status) VALUES ('uat', 'succeeded') "
                    "RETURNING id"
                )
                print(f"generating {args.users:,} users x {args.days} days ...", flush=True)
                total = 0
                for day in range(args.days + 1):
                    total += await add_day(conn, run, args.users, day)
                await conn.execute("VACUUM ANALYZE changes")
                out["changes"] = total
                as_of = T0 + dt.timedelta(days=args.days // 2, hours=12)
                event = "EVENT-1"

                # --- views: nothing to build or maintain --------------------------------------
                secs, rows = await timed(conn, as_of_query(USERS, event=True), as_of, event)
                out["view_one_event_s"], out["one_event_users"] = round(secs, 3), rows
                out["view_one_event_server_s"] = round(
                    await server_seconds(conn, as_of_query(USERS, event=True), as_of, event), 3
                )
                secs, rows = await timed(conn, as_of_query(USERS), as_of, repeat=1)
                out["view_all_users_s"], out["all_users"] = round(secs, 3), rows

                # --- a maintained table: build, index, query, fold one more day -------------
                started = time.perf_counter()
                await conn.execute("CREATE TABLE h AS SELECT * FROM users_history")
                await conn.execute("CREATE INDEX ON h (event_guid, valid_from)")
                await conn.execute("CREATE INDEX ON h (event_guid, user_ref) WHERE is_current")
                await conn.execute("VACUUM ANALYZE h")
                out["table_build_s"] = round(time.perf_counter() - started, 2)
                out["table_size_mb"] = round(
                    await conn.fetchval("SELECT pg_total_relation_size('h')") / 1e6, 1
                )
                table_sql = as_of_query(USERS, event=True).replace("users_history", "h")
                secs, _ = await timed(conn, table_sql, as_of, event)
                out["table_one_event_s"] = round(secs, 3)
                out["table_one_event_server_s"] = round(
                    await server_seconds(conn, table_sql, as_of, event), 3
                )
                table_all = as_of_query(USERS).replace("users_history", "h")
                secs, _ = await timed(conn, table_all, as_of, repeat=1)
                out["table_all_users_s"] = round(secs, 3)

                watermark = await conn.fetchval("SELECT max(seq) FROM changes")
                folded = await add_day(conn, run, args.users, args.days + 1)
                started = time.perf_counter()
                async with conn.transaction():
                    await conn.execute(
                        """
                        UPDATE h SET valid_to = c.captured_at, is_current = false,
                               ended_by_seq = c.seq
                        FROM changes c
                        WHERE c.seq > $1 AND c.entity = 'user' AND h.is_current
                          AND h.event_guid = c.event_guid AND h.user_ref = c.record_key
                        """,
                        watermark,
                    )
                    # The view's own projection over the new changes only (one per key per run).
                    body = (
                        view_sql(USERS)
                        .split(" AS\n", 1)[1]
                        .replace(
                            "FROM changes WHERE entity = 'user'",
                            "FROM changes WHERE entity = 'user' AND seq > $1",
                        )
                    )
                    await conn.execute(f"INSERT INTO h {body}", watermark)
                out["table_fold_one_day_changes"] = folded
                out["table_fold_one_day_s"] = round(time.perf_counter() - started, 2)
            finally:
                await conn.close()
    out["cpus"], out["loadavg_1m"] = os.cpu_count(), os.getloadavg()[0]
    print(json.dumps(out))


if __name__ == "__main__":
    asyncio.run(main())
