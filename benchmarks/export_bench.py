"""Benchmark: `syncsvc export changes` of a large change log to Parquet, rows/s and peak RSS.

Fills a scratch database's change log with N user changes shaped like full-1m's (whole 17-field
images with custom fields; 70% updates with both images, 15% inserts, 15% deletes), then runs
the real CLI as a subprocess and samples its VmHWM. Prints figures; never passes or fails.
Target (issue 15): 1,000,000 changes at >= 100,000 rows/s with peak RSS < 150 MB.

    .venv/bin/python benchmarks/export_bench.py [--url postgresql://postgres@127.0.0.1:5432/postgres]
        [--changes 1000000]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

import asyncpg

sys.path.insert(0, str(Path(__file__).resolve().parent))

from run import run_measured, scratch_database, server_url

from syncsvc.store import db
from syncsvc.store.db import sqlalchemy_url

IMAGE = """jsonb_build_object(
    'userRef', 'U' || lpad(g::text, 7, '0'), 'clientID', 'C' || lpad(g::text, 7, '0'),
    'eventGUID', 'EVENT-' || lpad((g % 20)::text, 4, '0'),
    'firstName', 'First' || (g % 997), 'lastName', 'Last' || (g % 1009),
    'email', 'user' || g || '@example.org', 'company', 'Company ' || (g % 503),
    'title', 'Engineer', 'phone', '+47 555 0100', 'city', {city}, 'state', null,
    'country', 'NO', 'attendeeType', 'Attendee', 'registrationStatus', 'Accepted',
    'registrationDate', '2026-05-01T09:30:00+00:00', 'lastModified', {modified},
    'customFields', jsonb_build_object('type_business', 'govt', 'diet', 'd' || (g % 5)),
    'extras', null)"""
BEFORE = IMAGE.format(city="'Bergen'", modified="'2026-05-01T09:30:00+00:00'")
AFTER = IMAGE.format(city="'Oslo'", modified="'2026-05-02T09:30:00+00:00'")


async def fill(url: str, n: int) -> None:
    conn = await asyncpg.connect(url)
    try:
        run = await conn.fetchval(
            "INSERT INTO runs (environment, status) VALUES ('production', 'succeeded') RETURNING id"
        )
        step = 100_000
        for start in range(1, n + 1, step):
            await conn.execute(
                f"""
                INSERT INTO changes (seq, run_id, fetch_id, entity, event_guid, record_key,
                                     client_id, op, changed_fields, before, after,
                                     source_modified_at)
                SELECT g, $1, 1, 'user', 'EVENT-' || lpad((g % 20)::text, 4, '0'),
                       'U' || lpad(g::text, 7, '0'), 'C' || lpad(g::text, 7, '0'),
                       CASE WHEN g % 20 < 14 THEN 'update'
                            WHEN g % 20 < 17 THEN 'insert' ELSE 'delete' END,
                       CASE WHEN g % 20 < 14 THEN ARRAY['city', 'lastModified']
                            ELSE '{{}}'::text[] END,
                       CASE WHEN g % 20 < 14 OR g % 20 >= 17 THEN {BEFORE} END,
                       CASE WHEN g % 20 < 17 THEN {AFTER} END,
                       '2026-05-02T09:30:00+00:00'
                FROM generate_series($2::bigint, $3::bigint) AS g
                """,
                run,
                start,
                min(n, start + step - 1),
            )
        await conn.execute("VACUUM ANALYZE changes")
    finally:
        await conn.close()


def read_manifest(out: str) -> dict[str, Any]:
    found: dict[str, Any] = json.loads(next(Path(out).glob("*/manifest.json")).read_text())
    return found


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", help="A PostgreSQL server (default: an embedded one).")
    parser.add_argument("--changes", type=int, default=1_000_000)
    args = parser.parse_args()
    with server_url(args.url) as server:
        async with scratch_database(server, "export_bench") as url:
            engine = db.make_engine(sqlalchemy_url(url))
            try:
                await db.upgrade(engine)
            finally:
                await engine.dispose()
            print(f"filling {args.changes:,} changes ...", flush=True)
            await fill(url, args.changes)
            conn = await asyncpg.connect(url)
            try:
                size = await conn.fetchval(
                    "SELECT pg_size_pretty(pg_total_relation_size('changes'))"
                )
            finally:
                await conn.close()
            with tempfile.TemporaryDirectory(prefix="syncsvc-export-bench-") as out:
                env = {k: v for k, v in os.environ.items() if not k.startswith("SYNCSVC_")}
                env.update(SYNCSVC_DATABASE_URL=url, SYNCSVC_LOG_LEVEL="warning")
                code, wall, peak, _, tail = run_measured(
                    [
                        sys.executable,
                        "-m",
                        "syncsvc",
                        "export",
                        "changes",
                        "--since",
                        "0",
                        "--to",
                        out,
                    ],
                    env,
                )
                if code != 0:
                    raise SystemExit(f"export failed ({code}): {tail}")
                manifest = read_manifest(out)
                parquet = sum(f["bytes"] for f in manifest["files"])
    rows = manifest["rows"]
    print(
        json.dumps(
            {
                "changes": rows,
                "change_log_size": size,
                "files": len(manifest["files"]),
                "parquet_mb": round(parquet / 1e6, 1),
                "wall_s": round(wall, 2),
                "rows_per_s": round(rows / wall),
                "peak_rss_mb": round(peak, 1),
                "cpus": os.cpu_count(),
                "loadavg_1m": os.getloadavg()[0],
            }
        )
    )


if __name__ == "__main__":
    asyncio.run(main())
