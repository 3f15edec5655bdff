"""Benchmark: stage + diff/apply of a 1,000,000-user snapshot with about 2% changed (no HTTP).

Prints records/s and peak RSS. Creates a scratch database on the given server and drops it.

    .venv/bin/python benchmarks/store_1m.py [--url postgresql://postgres@127.0.0.1:5432/postgres]
        [--users 1000000] [--events 20] [--changed 0.02] [--settle]
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import resource
import time
import uuid
from collections.abc import Iterator
from typing import Any

import asyncpg
from lxml import etree

from syncsvc.catalog import USERS
from syncsvc.normalize import normalizer
from syncsvc.records import Record, from_typed
from syncsvc.store import db
from syncsvc.store.runs import create_run
from syncsvc.store.unit import HoldPolicy, UnitWriter

T0 = dt.datetime(2026, 5, 1, 9, 30, tzinfo=dt.UTC)
T1 = dt.datetime(2026, 5, 2, 9, 30, tzinfo=dt.UTC)


def rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


class Source:
    """Users generated on the fly (memory stays flat); day 1 changes `changed` of them."""

    def __init__(self, n: int, events: int, changed: float) -> None:
        self.n, self.events, self.changed = n, events, changed
        self.seconds = 0.0  # time spent generating records (not the store's)

    def typed(self, i: int, day: int) -> dict[str, Any] | None:
        period = max(1, round(1 / self.changed))
        # Of every `period` users on day 1: one is updated (70%), deleted (15%) or new (15%).
        kind = (i // period) % 20 if i % period == 0 else -1
        if day == 1 and 14 <= kind < 17:
            return None  # deleted
        new = day == 1 and kind >= 17
        ref = f"N{i:07}" if new else f"U{i:07}"
        city = "Oslo" if day == 1 and 0 <= kind < 14 else "Bergen"
        return {
            "userRef": ref,
            "clientID": f"D{i:07}" if new else f"C{i:07}",
            "eventGUID": f"EVENT-{i % self.events:04}",
            "firstName": f"First{i % 997}",
            "lastName": f"Last{i % 1009}",
            "email": f"user{i}@example.org",
            "company": f"Company {i % 503}",
            "title": "Engineer",
            "phone": "+47 555 0100",
            "city": city,
            "country": "NO",
            "attendeeType": "Attendee",
            "registrationStatus": "Accepted",
            "registrationDate": T0,
            "lastModified": T1 if city == "Oslo" else T0,
            "customFields": {"type_business": "govt", "diet": f"d{i % 5}"},
        }

    def records(self, day: int) -> Iterator[Record]:
        started = time.perf_counter()
        for i in range(self.n):
            t = self.typed(i, day)
            if t is not None:
                rec = from_typed("user", t)
                self.seconds += time.perf_counter() - started
                yield rec
                started = time.perf_counter()
        self.seconds += time.perf_counter() - started


class StepClock:
    """Seconds from each unit step to the next (the unit's checkpoint hook), after staging."""

    def __init__(self) -> None:
        self.steps: dict[str, float] = {}
        self._last = time.perf_counter()

    def __call__(self, step: str) -> None:
        now = time.perf_counter()
        if step != "batch_staged":
            self.steps[step] = round(now - self._last, 2)
        self._last = now

    def after_staging(self) -> str:
        names = list(self.steps)
        later = names[names.index("staged") + 1 :] if "staged" in names else names
        return " ".join(f"{n} {self.steps[n]:.2f}" for n in later)


async def sync(engine: Any, source: Source, day: int) -> dict[str, Any]:
    run_id = await create_run(engine)
    source.seconds = 0.0
    clock = StepClock()
    started = time.perf_counter()
    async with UnitWriter(
        engine, run_id=run_id, resource="user", scope="all", checkpoint=clock
    ) as unit:
        await unit.stage_records(source.records(day))
        staged = time.perf_counter()
        result = await unit.apply(complete=True, hold=HoldPolicy(ratio=1.0, min_rows=10**9))
    done = time.perf_counter()
    return {
        "gen": source.seconds,
        "stage": staged - started - source.seconds,
        "apply": done - staged,
        "result": result,
        "steps": clock.after_staging(),
    }


def bench_normalize(n: int = 100_000) -> float:
    """Normalize throughput on parsed <user> elements (records/s, parse not included)."""
    norm = normalizer(USERS)
    src = Source(n, 20, 0.02)
    parts = []
    for i in range(2000):
        t = src.typed(i, 0)
        assert t is not None
        xml = "".join(
            f"<{k}>{v.isoformat() if isinstance(v, dt.datetime) else v}</{k}>"
            for k, v in t.items()
            if k != "customFields"
        )
        parts.append(
            f"<user>{xml}<customFields><type_business>govt</type_business></customFields></user>"
        )
    elems = [etree.fromstring(p) for p in parts]
    started = time.perf_counter()
    for k in range(n):
        norm(elems[k % len(elems)])
    return n / (time.perf_counter() - started)


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--url", default="postgresql://postgres@127.0.0.1:5432/postgres")
    parser.add_argument("--users", type=int, default=1_000_000)
    parser.add_argument("--events", type=int, default=20)
    parser.add_argument("--changed", type=float, default=0.02)
    parser.add_argument(
        "--settle",
        action="store_true",
        help="VACUUM ANALYZE and CHECKPOINT after day 0, so day 1 runs without day 0's"
        " background work (autovacuum, the checkpoint its writes bring on)",
    )
    args = parser.parse_args()

    print(f"normalize (lxml element -> typed record + hash): {bench_normalize():,.0f} records/s")
    name = f"syncsvc_bench_{uuid.uuid4().hex[:8]}"
    admin = await asyncpg.connect(args.url)
    await admin.execute(f'CREATE DATABASE "{name}"')
    base = db.sqlalchemy_url(args.url)
    engine = db.make_engine(base.set(database=name))
    try:
        await db.upgrade(engine)
        source = Source(args.users, args.events, args.changed)
        for day, label in ((0, "initial load (all inserts)"), (1, f"~{args.changed:.0%} changed")):
            f = await sync(engine, source, day)
            r = f["result"]
            total = f["stage"] + f["apply"]
            print(
                f"day {day} {label}: {r.records:,} records; stage {f['stage']:.2f} s "
                f"(+{f['gen']:.2f} s generating), diff+apply {f['apply']:.2f} s; "
                f"stage+diff {total:.2f} s = {r.records / total:,.0f} records/s; "
                f"ins {r.inserted:,} upd {r.updated:,} del {r.deleted:,} rekey {r.rekeyed:,}; "
                f"peak RSS {rss_mb():.0f} MB"
            )
            print(f"  apply steps (s): {f['steps']}")
            if args.settle and day == 0:
                bench = await asyncpg.connect(db.libpq_url(base.set(database=name)))
                try:
                    await bench.execute("VACUUM ANALYZE users, changes")
                    await bench.execute("CHECKPOINT")
                finally:
                    await bench.close()
    finally:
        await engine.dispose()
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


if __name__ == "__main__":
    asyncio.run(main())
