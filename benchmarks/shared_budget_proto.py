"""Prototype of issue 18's shared rate budget: one PostgreSQL row per API token, many processes.

    nice -n 19 .venv/bin/python benchmarks/shared_budget_proto.py [--rate 50] [--seconds 8]

The semantics are today's in-process budget (syncsvc/budget.py; before issue 17 the client's
Throttler and Semaphore) moved into the database:

- at most `rate_limit` request starts in any window of `rate_period * 1.05` seconds (asyncio-
  throttle's sliding window, stretched by RATE_SAFETY as the client does);
- at most `max_in_flight` requests in flight (the Semaphore), held as lease rows that expire at
  start + fetch deadline, so a worker that dies mid-request gives its slots back by itself;
- a 429 or code 301 (`budget_backoff`) pauses every start of every worker until the back-off
  ends (at least one rate period), halves the start rate once per pause, and the rate climbs back
  by one per `rate_limit` successful calls (AIMD, as today).

A start is one call of `budget_take`, which reserves the earliest allowed start time, at most
HORIZON seconds ahead, and returns it; the caller sleeps until then. Grants are first come, first
served (a reservation is never earlier than the last one), so the reserved start times stay sorted
and the window check is one array lookup. A caller whose slot lies beyond the horizon is told when
to ask again; starts reserved before a back-off (at most HORIZON ahead) still go, as do the
in-process throttler's waiters today. A caller refused for want of an in-flight slot waits for the
NOTIFY that `budget_done` sends (or 0.25 s at most).

The script creates a database of its own, runs 4 processes of TASKS asyncio tasks each that loop
take -> sleep to the start -> "request" (a sleep of 50-150 ms) -> done, injects one back-off, and
prints what a server counting arrivals per token would have seen: starts/s against R, the most
starts in any window of the server's period (above R would be a rejection), the most requests in
flight, and the cost of one start in database calls and time. A second, short run with an
unreachable rate shows the most starts/s one row can grant here. Printed figures only.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

PG_ADMIN = "postgresql://postgres@127.0.0.1:5432/postgres"
PROCESSES = 4
TASKS = 8
HORIZON = 0.25  # seconds a start may be reserved ahead
LEASE = 300.0  # seconds: the fetch deadline, the longest one request may hold an in-flight slot
RATE_SAFETY = 1.05
# A start later than this after its granted time is not made: granted starts R apart are at least
# RATE_SAFETY periods apart, so starts up to (RATE_SAFETY - 1) periods late still keep R + 1 starts
# out of any one of the server's windows.
LATE_MAX = 1.0 * (RATE_SAFETY - 1)
KEY = "token:demo"  # a digest of the token in real use, never the token

SCHEMA = """
CREATE TABLE rate_budget (
    token_key text PRIMARY KEY,
    configured int NOT NULL,           -- starts per period, as configured
    rate_limit int NOT NULL,           -- starts per period now (a back-off halves it)
    rate_period double precision NOT NULL,
    max_in_flight int NOT NULL,
    starts double precision[] NOT NULL DEFAULT '{}',  -- the last `configured` starts, sorted
    paused_until double precision NOT NULL DEFAULT 0,
    successes int NOT NULL DEFAULT 0
);
CREATE TABLE rate_budget_lease (
    id bigserial PRIMARY KEY,
    token_key text NOT NULL REFERENCES rate_budget,
    expires double precision NOT NULL
);
CREATE INDEX ON rate_budget_lease (token_key, expires);

-- One start: (lease_id, start_at, wait) when granted, (NULL, NULL, retry_in) when the window or a
-- pause refuses, (NULL, NULL, NULL) when the in-flight slots are taken: then budget_done's NOTIFY
-- says when one is free.
CREATE FUNCTION budget_take(_key text, _horizon double precision, _lease double precision)
RETURNS TABLE (lease_id bigint, start_at double precision, wait double precision)
LANGUAGE plpgsql AS $$
DECLARE
    b rate_budget;
    now_ double precision := extract(epoch FROM clock_timestamp());
    n int;
    t double precision;
    lid bigint;
BEGIN
    SELECT * INTO b FROM rate_budget WHERE token_key = _key FOR UPDATE;
    SELECT count(*) INTO n FROM rate_budget_lease WHERE token_key = _key AND expires > now_;
    IF n >= b.max_in_flight THEN
        RETURN QUERY SELECT NULL::bigint, NULL::float8, NULL::float8;  -- wait for a release
        RETURN;
    END IF;
    t := greatest(now_, b.paused_until, b.starts[cardinality(b.starts)]);
    IF cardinality(b.starts) >= b.rate_limit THEN
        t := greatest(t, b.starts[cardinality(b.starts) - b.rate_limit + 1]
                         + b.rate_period * 1.05);
    END IF;
    IF t > now_ + _horizon THEN
        RETURN QUERY SELECT NULL::bigint, NULL::float8, t - now_ - _horizon;
        RETURN;
    END IF;
    UPDATE rate_budget
       SET starts = (starts || t)[greatest(1, cardinality(starts) + 2 - configured):]
     WHERE token_key = _key;
    INSERT INTO rate_budget_lease (token_key, expires) VALUES (_key, t + _lease)
    RETURNING id INTO lid;
    RETURN QUERY SELECT lid, t, t - now_;
END $$;

-- The request ended: its in-flight slot goes back; a success counts toward the rate's climb.
CREATE FUNCTION budget_done(_key text, _lease_id bigint, _ok boolean) RETURNS void
LANGUAGE sql AS $$
    DELETE FROM rate_budget_lease WHERE id = _lease_id;
    SELECT pg_notify('rate_budget', _key);
    UPDATE rate_budget
       SET rate_limit = rate_limit + (successes + 1 >= rate_limit)::int,
           successes = CASE WHEN successes + 1 >= rate_limit THEN 0 ELSE successes + 1 END
     WHERE token_key = _key AND _ok AND rate_limit < configured;
$$;

-- A 429 or code 301: every worker's starts wait; one halving per pause.
CREATE FUNCTION budget_backoff(_key text, _delay double precision) RETURNS double precision
LANGUAGE sql AS $$
    UPDATE rate_budget
       SET rate_limit = CASE WHEN paused_until <= extract(epoch FROM clock_timestamp())
                             THEN greatest(1, rate_limit / 2) ELSE rate_limit END,
           paused_until = greatest(paused_until, extract(epoch FROM clock_timestamp())
                                   + greatest(_delay, rate_period)),
           successes = 0
     WHERE token_key = _key
    RETURNING paused_until;
$$;
"""


# --- one worker process -----------------------------------------------------------------------


async def worker(dsn: str, until: float, work: tuple[float, float], out: Path) -> None:
    import asyncpg

    pool = await asyncpg.create_pool(dsn, min_size=TASKS, max_size=TASKS)
    # One listening connection per process: a released in-flight slot wakes one waiting task
    # here (not all of them: the others would only be refused again).
    freed = asyncio.Condition()

    async def wake_one() -> None:
        async with freed:
            freed.notify(1)

    wakers: set[asyncio.Task[None]] = set()

    def on_release(*_: object) -> None:
        t = asyncio.get_running_loop().create_task(wake_one())
        wakers.add(t)
        t.add_done_callback(wakers.discard)

    listener = await asyncpg.connect(dsn)
    await listener.add_listener("rate_budget", on_release)
    events: list[tuple[float, float, float]] = []  # (start, end, granted start)
    take_ms: list[float] = []
    done_ms: list[float] = []
    calls = 0
    abandoned = 0

    async def task() -> None:
        nonlocal calls, abandoned
        async with pool.acquire() as conn:
            while time.time() < until:
                t0 = time.perf_counter()
                row = await conn.fetchrow(
                    "SELECT * FROM budget_take($1, $2, $3)", KEY, HORIZON, LEASE
                )
                take_ms.append((time.perf_counter() - t0) * 1000)
                calls += 1
                if row["lease_id"] is None and row["wait"] is None:
                    # A release between the refusal and this wait goes unheard: the timeout
                    # bounds that, and the expiry of a dead worker's leases.
                    async with freed:
                        with contextlib.suppress(TimeoutError):
                            await asyncio.wait_for(freed.wait(), 0.25)
                    continue
                if row["lease_id"] is None:
                    # jitter: the refused callers would otherwise all come back at one instant
                    await asyncio.sleep(row["wait"] + random.uniform(0, HORIZON / 2))
                    continue
                await asyncio.sleep(max(0.0, row["start_at"] - time.time()))
                start = time.time()
                if start - row["start_at"] > LATE_MAX:
                    # Woken too late: starting now could put R + 1 starts into one of the
                    # server's windows. The slot is given up (it stays counted, which only
                    # costs rate) and a new one taken.
                    await conn.execute("SELECT budget_done($1, $2, false)", KEY, row["lease_id"])
                    abandoned += 1
                    continue
                await asyncio.sleep(random.uniform(*work))  # the request
                end = time.time()
                t0 = time.perf_counter()
                await conn.execute("SELECT budget_done($1, $2, true)", KEY, row["lease_id"])
                done_ms.append((time.perf_counter() - t0) * 1000)
                events.append((start, end, row["start_at"]))

    await asyncio.gather(*(task() for _ in range(TASKS)))
    await listener.close()
    await pool.close()
    data = {
        "events": events,
        "take_ms": take_ms,
        "done_ms": done_ms,
        "calls": calls,
        "abandoned": abandoned,
    }
    await asyncio.to_thread(out.write_text, json.dumps(data))


# --- orchestration ----------------------------------------------------------------------------


def run(
    dsn: str,
    rate: int,
    max_in_flight: int,
    seconds: float,
    work: tuple[float, float],
    backoff_at: float | None,
    tmp: Path,
) -> dict[str, Any]:
    import psycopg

    with psycopg.connect(dsn, autocommit=True) as c:
        c.execute("DELETE FROM rate_budget_lease")
        c.execute("DELETE FROM rate_budget")
        c.execute(
            "INSERT INTO rate_budget (token_key, configured, rate_limit, rate_period,"
            " max_in_flight) VALUES (%s, %s, %s, 1.0, %s)",
            (KEY, rate, rate, max_in_flight),
        )
    t_begin = time.time() + 1.5  # after the processes have connected
    until = t_begin + seconds
    outs = [tmp / f"w{i}.json" for i in range(PROCESSES)]
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                __file__,
                "_worker",
                dsn,
                repr(t_begin),
                repr(until),
                repr(work[0]),
                repr(work[1]),
                str(o),
            ],
            start_new_session=True,
        )
        for o in outs
    ]
    t_backoff = None
    pause_end = None
    try:
        if backoff_at is not None:
            time.sleep(max(0.0, t_begin + backoff_at - time.time()))
            with psycopg.connect(dsn, autocommit=True) as c:
                t_backoff = time.time()
                row = c.execute("SELECT budget_backoff(%s, 1.0)", (KEY,)).fetchone()
                assert row is not None
                pause_end = row[0]
        for p in procs:
            p.wait(timeout=seconds + 60)
    finally:
        for p in procs:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(p.pid, signal.SIGKILL)
            p.wait()

    events: list[tuple[float, float, float]] = []
    take_ms: list[float] = []
    done_ms: list[float] = []
    calls = 0
    abandoned = 0
    for o in outs:
        d = json.loads(o.read_text())
        events += [tuple(e) for e in d["events"]]
        take_ms += d["take_ms"]
        done_ms += d["done_ms"]
        calls += d["calls"]
        abandoned += d["abandoned"]
    # the tasks stop taking at `until`; starts reserved before then may fall after it
    starts = sorted(e[0] for e in events if t_begin <= e[0] < until)

    # What a server counting arrivals per 1 s window (sliding) would see: for the actual
    # starts, and for the granted start times (the algorithm alone, without the event loop's
    # late wake-ups on this loaded machine).
    def window(ts: list[float]) -> tuple[int, int]:
        worst = over = j = 0
        for i, s in enumerate(ts):
            while ts[j] <= s - 1.0:
                j += 1
            worst = max(worst, i - j + 1)
            over += (i - j + 1) > rate
        return worst, over

    worst, over = window(starts)
    g_worst, g_over = window(sorted(e[2] for e in events if t_begin <= e[2] < until))
    late_ms = [(e[0] - e[2]) * 1000 for e in events]
    # The most requests in flight at once, from the start and end times.
    edges = sorted([(e[0], 1) for e in events] + [(e[1], -1) for e in events])
    cur = peak = 0
    for _, d in edges:
        cur += d
        peak = max(peak, cur)

    res: dict[str, Any] = {
        "configured_R_starts_per_s": rate,
        "max_in_flight": max_in_flight,
        "processes_x_tasks": f"{PROCESSES}x{TASKS}",
        "starts": len(starts),
        "most_starts_in_any_1s_window": worst,
        "starts_over_R_in_a_window (server rejections)": over,
        "granted_times: most_in_1s_window, over_R": [g_worst, g_over],
        "start_late_vs_granted_ms_p50_p99_max": [
            round(statistics.median(late_ms), 1),
            round(sorted(late_ms)[int(0.99 * (len(late_ms) - 1))], 1),
            round(max(late_ms), 1),
        ],
        "peak_in_flight": peak,
        "slots_given_up_late": abandoned,
        "budget_calls_per_start": round(calls / max(1, len(events)), 2),
        "take_ms_p50_p99": [
            round(statistics.median(take_ms), 2),
            round(sorted(take_ms)[int(0.99 * (len(take_ms) - 1))], 2),
        ],
        "done_ms_p50_p99": [
            round(statistics.median(done_ms), 2),
            round(sorted(done_ms)[int(0.99 * (len(done_ms) - 1))], 2),
        ],
    }
    if t_backoff is None:
        res["starts_per_s"] = round(len(starts) / seconds, 1)
        res["share_of_R"] = round(len(starts) / seconds / rate, 3)
        # the long-run bound: R starts per RATE_SAFETY periods (a short run also holds the
        # first window's burst of R starts, which any sliding window allows)
        res["long_run_bound_share_of_R"] = round(1 / RATE_SAFETY, 3)
    else:
        assert pause_end is not None
        assert backoff_at is not None
        before = [s for s in starts if s < t_backoff]
        res["before_backoff_starts_per_s"] = round(len(before) / backoff_at, 1)
        res["before_backoff_share_of_R"] = round(len(before) / backoff_at / rate, 3)
        res["backoff_pause_s"] = round(pause_end - t_backoff, 3)
        late = [s - t_backoff for s in starts if t_backoff <= s < pause_end]
        res["starts_during_pause"] = len(late)
        res["latest_start_into_pause_s"] = round(max(late), 3) if late else None
        after = [s for s in starts if s >= pause_end]
        span = until - pause_end
        res["after_pause_starts_per_s"] = round(len(after) / span, 1) if span > 0 else None
    return res


def main() -> None:
    if len(sys.argv) == 8 and sys.argv[1] == "_worker":
        dsn, t_begin, until, w0, w1, out = sys.argv[2:]
        time.sleep(max(0.0, float(t_begin) - time.time()))
        asyncio.run(worker(dsn, float(until), (float(w0), float(w1)), Path(out)))
        return
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rate", type=int, default=50, help="R: request starts per second")
    ap.add_argument("--in-flight", type=int, default=16)
    ap.add_argument("--seconds", type=float, default=8.0)
    opts = ap.parse_args()

    import psycopg

    db = f"budget_proto_{os.getpid()}"
    with psycopg.connect(PG_ADMIN, autocommit=True) as c:
        c.execute(f'CREATE DATABASE "{db}"')
    dsn = PG_ADMIN.rsplit("/", 1)[0] + "/" + db
    print(f"# shared_budget_proto {time.strftime('%Y-%m-%d %H:%M:%S', time.gmtime())} UTC")
    print(f"# load average before: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    try:
        with psycopg.connect(dsn, autocommit=True) as c:
            c.execute(SCHEMA)
        with tempfile.TemporaryDirectory(prefix="budget-") as tmp:
            steady = run(
                dsn, opts.rate, opts.in_flight, opts.seconds, (0.05, 0.15), None, Path(tmp)
            )
            print(json.dumps({"run": "steady", **steady}, indent=2), flush=True)
            backoff = run(
                dsn,
                opts.rate,
                opts.in_flight,
                opts.seconds,
                (0.05, 0.15),
                opts.seconds / 2,
                Path(tmp),
            )
            print(
                json.dumps({"run": "one 429 halfway (Retry-After 1 s)", **backoff}, indent=2),
                flush=True,
            )
            ceiling = run(dsn, 1000, 1000, 3.0, (0.0, 0.0), None, Path(tmp))
            print(json.dumps({"run": "ceiling: R=1000, no work", **ceiling}, indent=2), flush=True)
    finally:
        with psycopg.connect(PG_ADMIN, autocommit=True) as c:
            c.execute(f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)')
    print(f"# load average after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
