"""Task-queue candidates for issue 18, measured on this machine's services: printed figures only.

    .venv/bin/pip install -e '.[queue,queue-bench]'
    nice -n 19 .venv/bin/python benchmarks/queue_bench.py [--only procrastinate,celery,dramatiq]

Candidates: procrastinate on PostgreSQL (a database of its own, created and dropped here), Celery on
RabbitMQ (a queue of its own, deleted at the end), Dramatiq on Redis (db 14, a namespace of its own
whose keys are deleted at the end). Per candidate:

(a) enqueue-to-start latency of a no-op job, 1 worker process, jobs enqueued one every 25 ms;
(b) throughput: 2,000 no-op jobs enqueued at once, 4 worker processes of one job at a time each,
    from the first enqueue to the last job's end;
(c) a worker SIGKILLed mid-job (its whole process group, as when a machine or pod dies), with a
    second worker alive: is the job started again, on which worker, how long after the kill;
(d) procrastinate only: the enqueue inside the transaction that writes the plan (a rollback
    enqueues nothing, a commit enqueues the job);
(e) an `async def` job function: does it run as a coroutine.

Every job appends one line to a file per event (`start`, `done`) with the monotonic clock, which is
system-wide on Linux, so enqueue and start times taken in different processes compare. Workers are
this script re-run as `_worker KIND ...` in a process group of their own; the group is SIGTERMed
then SIGKILLed on every exit path, so none outlives the script.
"""

from __future__ import annotations

import argparse
import asyncio
import atexit
import contextlib
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

PG_ADMIN = "postgresql://postgres@127.0.0.1:5432/postgres"
AMQP = "amqp://guest:guest@127.0.0.1:5672//"
REDIS_DB = 14
QUEUE = "qbench"
LAT_JOBS = 200
LAT_GAP = 0.025
THR_JOBS = 2000
THR_WORKERS = 4
KILL_JOB_SECONDS = 60.0
# Recovery settings used in (c); the defaults are printed beside them.
PROC_HEARTBEAT_S = 1.0
PROC_STALLED_S = 3.0
DRAMATIQ_HEARTBEAT_MS = 3000

_groups: list[subprocess.Popen[bytes]] = []


def record(tag: str, enq: float, phase: str) -> None:
    line = f"{tag} {enq:.6f} {time.monotonic():.6f} {os.getpid()} {phase}\n"
    fd = os.open(os.environ["QBENCH_OUT"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line.encode())  # one write under PIPE_BUF: lines never interleave
    finally:
        os.close(fd)


# --- the three apps, built the same way by the orchestrator and by its workers ---------------


def procrastinate_app(dsn: str) -> Any:
    import procrastinate

    app = procrastinate.App(connector=procrastinate.PsycopgConnector(conninfo=dsn))

    @app.task(name="bench_job", queue=QUEUE)
    async def bench_job(tag: str, enq: float, sleep: float) -> None:
        record(tag, enq, "start")
        if sleep:
            await asyncio.sleep(sleep)
        record(tag, enq, "done")

    return app


def celery_app(queue: str) -> Any:
    from celery import Celery

    app = Celery("qbench", broker=AMQP)
    app.conf.update(
        task_acks_late=True,  # ack after the job, so a dead worker's job goes back to the queue
        task_reject_on_worker_lost=True,  # prefork: a killed child's job is requeued, not acked
        worker_prefetch_multiplier=1,
        task_ignore_result=True,
        task_default_queue=queue,
        worker_enable_remote_control=False,  # no pidbox queues left behind
        worker_hijack_root_logger=False,
        broker_connection_retry_on_startup=True,
    )

    @app.task(name="bench_job")
    def bench_job(tag: str, enq: float, sleep: float) -> None:
        record(tag, enq, "start")
        if sleep:
            time.sleep(sleep)
        record(tag, enq, "done")

    @app.task(name="bench_async")
    async def bench_async(tag: str, enq: float, sleep: float) -> None:
        record(tag, enq, "start")

    return app


def dramatiq_broker(namespace: str) -> tuple[Any, Any, Any]:
    import dramatiq
    from dramatiq.brokers.redis import RedisBroker
    from dramatiq.middleware.asyncio import AsyncIO

    broker = RedisBroker(
        host="127.0.0.1",
        port=6379,
        db=REDIS_DB,
        namespace=namespace,
        heartbeat_timeout=DRAMATIQ_HEARTBEAT_MS,
        # out of 1,000,000 commands; the default is 1,000. Maintenance is what requeues a dead
        # worker's unacked messages, so (c) measures the best case.
        maintenance_chance=1_000_000,
    )
    broker.add_middleware(AsyncIO())
    dramatiq.set_broker(broker)

    def bench_job(tag: str, enq: float, sleep: float) -> None:
        record(tag, enq, "start")
        if sleep:
            time.sleep(sleep)
        record(tag, enq, "done")

    async def bench_async(tag: str, enq: float, sleep: float) -> None:
        record(tag, enq, "start")

    job = dramatiq.actor(bench_job, actor_name="bench_job", queue_name=QUEUE, max_retries=0)
    ajob = dramatiq.actor(bench_async, actor_name="bench_async", queue_name=QUEUE, max_retries=0)
    return broker, job, ajob


# --- worker processes -------------------------------------------------------------------------


def run_worker(kind: str, arg: str) -> None:
    ready = lambda: record("ready", 0.0, "ready")  # noqa: E731
    if kind == "procrastinate":
        asyncio.run(_procrastinate_worker(arg, ready))
    elif kind == "celery":
        from celery.signals import worker_ready

        app = celery_app(arg)
        worker_ready.connect(lambda **_: ready(), weak=False)
        app.worker_main(
            [
                "worker",
                # prefork, one child: Celery's usual pool (the solo pool stalled ~10 s between
                # jobs here with acks_late and prefetch 1)
                "--pool=prefork",
                "--concurrency=1",
                "--without-heartbeat",
                "--without-gossip",
                "--without-mingle",
                "--loglevel=WARNING",
                "-Q",
                arg,
            ]
        )
    elif kind == "dramatiq":
        import dramatiq

        broker, _, _ = dramatiq_broker(arg)
        worker = dramatiq.Worker(broker, worker_threads=1)
        stop = False

        def on_term(signum: int, frame: object) -> None:
            nonlocal stop
            stop = True

        signal.signal(signal.SIGTERM, on_term)
        worker.start()
        ready()
        while not stop:
            time.sleep(0.1)
        worker.stop(timeout=2000)


async def _procrastinate_worker(dsn: str, ready: Callable[[], None]) -> None:
    app = procrastinate_app(dsn)
    async with app.open_async():

        async def recover_stalled() -> None:
            # procrastinate marks a job stalled (its worker's heartbeat is old) but leaves the
            # retry to the application: this loop is that application's side.
            while True:
                for job in await app.job_manager.get_stalled_jobs(
                    seconds_since_heartbeat=PROC_STALLED_S
                ):
                    await app.job_manager.retry_job(job)
                await asyncio.sleep(0.5)

        recovery = asyncio.create_task(recover_stalled())
        ready()
        try:
            await app.run_worker_async(
                queues=[QUEUE],
                concurrency=1,
                update_heartbeat_interval=PROC_HEARTBEAT_S,
                stalled_worker_timeout=PROC_STALLED_S,
                shutdown_graceful_timeout=2,
            )
        finally:
            recovery.cancel()


def start_workers(kind: str, arg: str, n: int, out: Path) -> list[subprocess.Popen[bytes]]:
    env = {**os.environ, "QBENCH_OUT": str(out)}
    procs = []
    for _ in range(n):
        p = subprocess.Popen(
            [sys.executable, __file__, "_worker", kind, arg],
            env=env,
            start_new_session=True,  # its own process group: killpg reaches its children
            stdout=subprocess.DEVNULL,
            stderr=open(out.with_suffix(".log"), "ab"),  # noqa: SIM115
        )
        _groups.append(p)
        procs.append(p)
    wait_lines(out, lambda r: r[4] == "ready", n, 60.0)
    return procs


def stop_group(p: subprocess.Popen[bytes], sig: int = signal.SIGTERM) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(p.pid, sig)
    try:
        p.wait(timeout=5)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(p.pid, signal.SIGKILL)
        p.wait()
    # a worker's children may outlive its leader; the group id is still the leader's pid
    with contextlib.suppress(ProcessLookupError):
        os.killpg(p.pid, signal.SIGKILL)
    if p in _groups:
        _groups.remove(p)


def stop_all() -> None:
    for p in list(_groups):
        stop_group(p)


def read_rows(out: Path) -> list[list[str]]:
    if not out.exists():
        return []
    return [line.split() for line in out.read_text().splitlines() if line]


def wait_lines(
    out: Path, pred: Callable[[list[str]], bool], n: int, timeout: float
) -> list[list[str]]:
    deadline = time.monotonic() + timeout
    while True:
        rows = [r for r in read_rows(out) if pred(r)]
        if len(rows) >= n or time.monotonic() > deadline:
            return rows
        time.sleep(0.01)


# --- the measurements -------------------------------------------------------------------------


class Candidate:
    name = ""
    arg = ""

    def setup(self) -> None: ...
    def teardown(self) -> None: ...
    def enqueue(self, tag: str, sleep: float = 0.0) -> None: ...
    def enqueue_async(self, tag: str) -> None: ...

    def enqueue_many(self, tags: list[str]) -> None:
        for tag in tags:
            self.enqueue(tag)

    recovery = ""
    async_note = ""


class Procrastinate(Candidate):
    name = "procrastinate"
    recovery = (
        f"worker heartbeat every {PROC_HEARTBEAT_S:g}s (default 10), a job is stalled when its "
        f"worker's heartbeat is {PROC_STALLED_S:g}s old (default 30), and an application loop "
        "calls get_stalled_jobs() + retry_job() every 0.5s (procrastinate has no automatic retry)"
    )

    def setup(self) -> None:
        import psycopg

        self.db = f"qbench_{os.getpid()}"
        with psycopg.connect(PG_ADMIN, autocommit=True) as c:
            c.execute(f'CREATE DATABASE "{self.db}"')
        self.arg = PG_ADMIN.rsplit("/", 1)[0] + "/" + self.db
        self.app = procrastinate_app(self.arg)
        self.app.open()
        self.app.schema_manager.apply_schema()
        self.task = self.app.tasks["bench_job"]

    def teardown(self) -> None:
        import psycopg

        with contextlib.suppress(Exception):
            self.app.close()
        with psycopg.connect(PG_ADMIN, autocommit=True) as c:
            c.execute(f'DROP DATABASE IF EXISTS "{self.db}" WITH (FORCE)')

    def enqueue(self, tag: str, sleep: float = 0.0) -> None:
        self.task.defer(tag=tag, enq=time.monotonic(), sleep=sleep)

    def enqueue_async(self, tag: str) -> None:
        self.enqueue(tag)  # bench_job itself is an `async def`

    def enqueue_many(self, tags: list[str]) -> None:
        # one INSERT for all, as a run's plan would enqueue its units
        now = time.monotonic()
        self.task.batch_defer(*({"tag": t, "enq": now, "sleep": 0.0} for t in tags))


class CeleryRabbit(Candidate):
    name = "celery"
    recovery = (
        "task_acks_late=True, task_reject_on_worker_lost=True, prefetch 1: RabbitMQ returns an "
        "unacked message to the queue when the consumer's connection closes (RabbitMQ has no "
        "visibility timeout; its consumer_timeout, default 30 min, closes the channel of a job "
        "that runs longer)"
    )

    def setup(self) -> None:
        self.arg = f"{QUEUE}-{os.getpid()}"
        self.app = celery_app(self.arg)
        self.job = self.app.tasks["bench_job"]
        self.ajob = self.app.tasks["bench_async"]

    def teardown(self) -> None:
        with self.app.connection_for_write() as conn:
            conn.default_channel.queue_delete(self.arg)

    def enqueue(self, tag: str, sleep: float = 0.0) -> None:
        self.job.apply_async(args=(tag, time.monotonic(), sleep), queue=self.arg)

    def enqueue_async(self, tag: str) -> None:
        self.ajob.apply_async(args=(tag, time.monotonic(), 0.0), queue=self.arg)


class DramatiqRedis(Candidate):
    name = "dramatiq"
    recovery = (
        f"heartbeat_timeout={DRAMATIQ_HEARTBEAT_MS}ms (default 60000), maintenance_chance=1000000 "
        "per million commands (default 1000): a live worker's maintenance requeues the unacked "
        "messages of a broker whose heartbeat is older than the timeout"
    )

    def setup(self) -> None:
        import redis

        self.arg = f"qbench-{os.getpid()}"
        self.broker, self.job, self.ajob = dramatiq_broker(self.arg)
        self.redis = redis.Redis(host="127.0.0.1", port=6379, db=REDIS_DB)

    def teardown(self) -> None:
        keys = list(self.redis.scan_iter(match=f"{self.arg}*"))
        if keys:
            self.redis.delete(*keys)
        self.broker.close()

    def enqueue(self, tag: str, sleep: float = 0.0) -> None:
        self.job.send(tag, time.monotonic(), sleep)

    def enqueue_async(self, tag: str) -> None:
        self.ajob.send(tag, time.monotonic(), 0.0)


def pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, round(q * (len(xs) - 1)))]


def bench(c: Candidate, workdir: Path) -> dict[str, Any]:
    res: dict[str, Any] = {"candidate": c.name}
    c.setup()
    try:
        # (a) latency, one worker; then (e) on the same worker
        out = workdir / f"{c.name}-lat.txt"
        procs = start_workers(c.name, c.arg, 1, out)
        for i in range(LAT_JOBS):
            c.enqueue(f"lat{i}")
            time.sleep(LAT_GAP)
        rows = wait_lines(out, lambda r: r[0].startswith("lat") and r[4] == "start", LAT_JOBS, 30)
        lat = [(float(r[2]) - float(r[1])) * 1000 for r in rows]
        res["latency_ms"] = {
            "n": len(lat),
            "p50": round(statistics.median(lat), 2),
            "p99": round(pct(lat, 0.99), 2),
            "max": round(max(lat), 2),
        }
        c.enqueue_async("async")
        ran = wait_lines(out, lambda r: r[0] == "async" and r[4] == "start", 1, 5.0)
        res["async_def_job_ran"] = bool(ran)
        for p in procs:
            stop_group(p)

        # (b) throughput, four workers
        out = workdir / f"{c.name}-thr.txt"
        procs = start_workers(c.name, c.arg, THR_WORKERS, out)
        t0 = time.monotonic()
        c.enqueue_many([f"thr{i}" for i in range(THR_JOBS)])
        t_enq = time.monotonic() - t0
        rows = wait_lines(out, lambda r: r[0].startswith("thr") and r[4] == "done", THR_JOBS, 120)
        t_end = max(float(r[2]) for r in rows)
        starts = [r for r in read_rows(out) if r[0].startswith("thr") and r[4] == "start"]
        t_first = min(float(r[2]) for r in starts)
        per_pid: dict[str, int] = {}
        for r in rows:
            per_pid[r[3]] = per_pid.get(r[3], 0) + 1
        res["throughput"] = {
            "jobs_done": len(rows),
            "enqueue_s": round(t_enq, 3),
            "wall_s": round(t_end - t0, 3),
            "jobs_per_s": round(len(rows) / (t_end - t0), 1),
            "first_start_to_last_done_s": round(t_end - t_first, 3),
            "jobs_per_worker": sorted(per_pid.values()),
        }
        for p in procs:
            stop_group(p)

        # (c) SIGKILL mid-job with a survivor
        out = workdir / f"{c.name}-kill.txt"
        procs = start_workers(c.name, c.arg, 2, out)
        c.enqueue("kill", KILL_JOB_SECONDS)
        first = wait_lines(out, lambda r: r[0] == "kill" and r[4] == "start", 1, 30)
        victim_pid = int(first[0][3])
        victim = next(p for p in procs if os.getpgid(victim_pid) == p.pid)
        t_kill = time.monotonic()
        os.killpg(victim.pid, signal.SIGKILL)
        victim.wait()
        _groups.remove(victim)
        again = wait_lines(
            out, lambda r: r[0] == "kill" and r[4] == "start" and float(r[2]) > t_kill, 1, 90
        )
        if again:
            res["sigkill"] = {
                "redelivered": True,
                "after_s": round(float(again[0][2]) - t_kill, 2),
                "on_other_worker": again[0][3] != str(victim_pid),
                "settings": c.recovery,
            }
        else:
            res["sigkill"] = {"redelivered": False, "waited_s": 90, "settings": c.recovery}
        for p in procs:
            if p in _groups:
                stop_group(p, signal.SIGKILL)  # the redelivered job sleeps; no need to wait

        if isinstance(c, Procrastinate):
            res["same_transaction_enqueue"] = asyncio.run(same_transaction(c.arg))
        else:
            res["same_transaction_enqueue"] = "no: the broker is not the database"
    finally:
        stop_all()
        c.teardown()
    return res


async def same_transaction(dsn: str) -> dict[str, Any]:
    """The plan row and its job in one asyncpg transaction, as syncsvc would write them.

    procrastinate's enqueue is a SQL function (procrastinate_defer_jobs_v1), so it runs on the
    connection syncsvc already holds: no psycopg connection, no second transaction.
    """
    import asyncpg

    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute("CREATE TABLE IF NOT EXISTS bench_plan (run_id int PRIMARY KEY)")
        defer = """
            SELECT unnest(procrastinate_defer_jobs_v1(ARRAY[
                ROW($1, 'bench_job', 0, NULL, NULL, $2::jsonb, NULL)
            ]::procrastinate_job_to_defer_v1[]))
        """
        args = json.dumps({"tag": "txn", "enq": 0.0, "sleep": 0.0})

        class Rollback(Exception):
            pass

        t0 = time.monotonic()
        with contextlib.suppress(Rollback):
            async with conn.transaction():
                await conn.execute("INSERT INTO bench_plan VALUES (1)")
                await conn.fetchval(defer, QUEUE, args)
                raise Rollback
        rolled_back = await conn.fetchval(
            "SELECT (SELECT count(*) FROM bench_plan) + (SELECT count(*) FROM procrastinate_jobs"
            " WHERE args->>'tag' = 'txn')"
        )
        async with conn.transaction():
            await conn.execute("INSERT INTO bench_plan VALUES (2)")
            job_id = await conn.fetchval(defer, QUEUE, args)
        committed = await conn.fetchval(
            "SELECT status FROM procrastinate_jobs WHERE id = $1", job_id
        )
        return {
            "rows_after_rollback (plan + jobs)": rolled_back,
            "job_after_commit": committed,
            "ms_for_both": round((time.monotonic() - t0) * 1000, 1),
        }
    finally:
        await conn.close()


def main() -> None:
    if len(sys.argv) >= 4 and sys.argv[1] == "_worker":
        run_worker(sys.argv[2], sys.argv[3])
        return
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", default="procrastinate,celery,dramatiq")
    ap.add_argument("--keep", action="store_true", help="keep the event files and worker logs")
    opts = ap.parse_args()
    atexit.register(stop_all)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    kinds = {"procrastinate": Procrastinate, "celery": CeleryRabbit, "dramatiq": DramatiqRedis}
    print(f"# queue_bench {time.strftime('%Y-%m-%d %H:%M:%S', time.gmtime())} UTC")
    print(f"# load average before: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    tmp = tempfile.mkdtemp(prefix="qbench-")
    try:
        for name in opts.only.split(","):
            res = bench(kinds[name](), Path(tmp))
            print(json.dumps(res, indent=2), flush=True)
    finally:
        stop_all()
        if opts.keep:
            print(f"# event files and worker logs kept in {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    print(f"# load average after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
