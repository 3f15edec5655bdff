"""`syncsvc serve`: runs on a cron schedule and serves /healthz and /metrics.

Health is judged from the database, so it survives restarts: the last finished run's status and
finish time against the schedule. Unhealthy when that run `failed` or was `held` (the reason is
its error), or when a scheduled run is overdue: the last run finished before the latest fire time
that is more than `grace` seconds old. A refused token (101) or address (102) fails the run and
so makes the service unhealthy with that reason; it keeps serving and tries again at the next
fire. SIGTERM (or SIGINT) stops taking units; in-flight units finish (or, past `drain_seconds`,
are cancelled and roll back); the process exits 0. It exits 2 only on a configuration error at
start (a port in use included).
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import time
from collections.abc import Callable, Coroutine, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from aiohttp import web
from croniter import croniter
from sqlalchemy.ext.asyncio import AsyncEngine

from syncsvc import logs
from syncsvc.errors import ConfigError, SyncError
from syncsvc.metrics import Metrics
from syncsvc.settings import Settings
from syncsvc.store.schema import runs
from syncsvc.vocab import RunStatus

log = logs.get_logger(__name__)

RunFn = Callable[[asyncio.Event], Coroutine[Any, Any, object]]
# Adds routes to the app (other features' pages and endpoints share the port).
RouteRegistrar = Callable[[web.Application], None]

# Finished runs that say something about the data. `interrupted` and `abandoned` runs stopped
# before they could (a deploy, a kill): the run before them is the last word.
VERDICTS = (RunStatus.SUCCEEDED, RunStatus.PARTIAL, RunStatus.FAILED, RunStatus.HELD)
UNHEALTHY = (RunStatus.FAILED, RunStatus.HELD)
DB_TIMEOUT = 5.0  # seconds a probe waits for the database before answering 503


@dataclass(frozen=True, slots=True)
class LastRun:
    """The last finished run with a verdict, as the database has it."""

    run_id: int
    status: str
    finished_at: float
    error_message: str | None = None


def judge(
    schedule: str, grace: float, started_at: float, last: LastRun | None, now: float
) -> tuple[bool, str]:
    """(healthy, reason) from the schedule and the last finished run (pure: tests give `now`)."""
    due = croniter(schedule, datetime.fromtimestamp(now, UTC)).get_prev(float)
    if now < due + grace:
        # The latest fire is still within its grace: judge by the one before it.
        due = croniter(schedule, datetime.fromtimestamp(due, UTC)).get_prev(float)
    if last is not None:
        what = f"run {last.run_id} {last.status} at {_iso(last.finished_at)}"
        if last.status in UNHEALTHY:
            return False, what + (f": {last.error_message}" if last.error_message else "")
        if last.finished_at >= due:
            return True, what
        return False, f"the run due at {_iso(due)} has not finished (last: {what})"
    if due < started_at:
        return True, "no run yet, and none was due since the service started"
    return False, f"the run due at {_iso(due)} has not finished (no run yet)"


async def last_run(engine: AsyncEngine, account: str | None = None) -> LastRun | None:
    """The last finished run with a verdict (of `account`; None: of any)."""
    where: list[sa.ColumnElement[bool]] = [
        runs.c.status.in_(VERDICTS),
        runs.c.finished_at.is_not(None),
    ]
    if account is not None:
        where.append(runs.c.account == account)
    async with engine.connect() as conn:
        row = (
            await conn.execute(
                sa.select(
                    runs.c.id,
                    runs.c.status,
                    sa.extract("epoch", runs.c.finished_at),
                    runs.c.error_message,
                )
                .where(*where)
                .order_by(runs.c.id.desc())
                .limit(1)
            )
        ).first()
    return None if row is None else LastRun(row[0], row[1], float(row[2]), row[3])


async def prime_metrics(engine: AsyncEngine, metrics: Metrics) -> None:
    """Set the last-run gauges from the database, so a restart does not zero them (a staleness
    alert on `syncsvc_last_success_timestamp_seconds` would fire after every deploy)."""
    epoch = sa.extract("epoch", runs.c.finished_at)
    async with engine.connect() as conn:
        success = await conn.scalar(
            sa.select(sa.func.max(epoch)).where(runs.c.status == RunStatus.SUCCEEDED)
        )
        last = (
            await conn.execute(
                sa.select(epoch, sa.extract("epoch", runs.c.finished_at - runs.c.started_at))
                .where(runs.c.finished_at.is_not(None))
                .order_by(runs.c.finished_at.desc())
                .limit(1)
            )
        ).first()
    if success is not None:
        metrics.last_success.set(float(success))
    if last is not None:
        metrics.last_finished.set(float(last[0]))
        metrics.last_duration.set(float(last[1]))


Background = Callable[[asyncio.Event], Coroutine[Any, Any, None]]


@dataclass(slots=True)
class Health:
    """What /healthz judges from: the schedule, when the service started, and the database."""

    engine: AsyncEngine
    schedule: str
    started_at: float
    grace: float
    # Several accounts: (name, schedule) each, judged on its own runs; unhealthy when any is.
    accounts: tuple[tuple[str, str], ...] = ()

    async def check(self, now: float | None = None) -> tuple[bool, str]:
        now = time.time() if now is None else now
        try:
            async with asyncio.timeout(DB_TIMEOUT):
                if not self.accounts:
                    last = await last_run(self.engine)
                    return judge(self.schedule, self.grace, self.started_at, last, now)
                verdicts = [
                    (
                        name,
                        *judge(
                            sched,
                            self.grace,
                            self.started_at,
                            await last_run(self.engine, name),
                            now,
                        ),
                    )
                    for name, sched in self.accounts
                ]
        except (TimeoutError, OSError, sa.exc.SQLAlchemyError) as exc:
            return False, f"the database does not answer: {type(exc).__name__}"
        bad = [f"account {name}: {why}" for name, ok, why in verdicts if not ok]
        if bad:
            return False, "; ".join(bad)
        return True, "; ".join(f"account {name}: {why}" for name, _, why in verdicts)


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="seconds")


Pages = Callable[[web.Application, "Health"], None]


def make_app(
    health: Health,
    metrics: Metrics,
    routes: Sequence[RouteRegistrar] = (),
    pages: Pages | None = None,
    detail: Callable[[], dict[str, Any]] | None = None,
) -> web.Application:
    async def healthz(_: web.Request) -> web.Response:
        ok, why = await health.check()
        body: dict[str, Any] = {"healthy": ok, "reason": why}
        if detail is not None:  # e.g. the change feed's consumers; reported, not judged
            body.update(detail())
        return web.json_response(body, status=200 if ok else 503)

    async def metrics_view(_: web.Request) -> web.Response:
        return web.Response(body=metrics.render(), content_type="text/plain", charset="utf-8")

    app = web.Application()
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/metrics", metrics_view)
    for register in routes:
        register(app)
    if pages is not None:  # the status pages (syncsvc.web), given by the CLI with its engine
        pages(app, health)
    return app


async def serve(
    settings: Settings,
    run: RunFn,
    metrics: Metrics,
    *,
    grace: float = 3600.0,
    drain_seconds: float = 60.0,
    run_now: bool = False,
    ready: Callable[[int], None] | None = None,
    engine: AsyncEngine,
    routes: Sequence[RouteRegistrar] = (),
    pages: Pages | None = None,
    background: Sequence[Background] = (),
    health_detail: Callable[[], dict[str, Any]] | None = None,
    account_runs: Mapping[str, RunFn] | None = None,
) -> int:
    """Serve until SIGTERM/SIGINT; returns the exit code (0 on a signal-driven stop).

    `account_runs` (several accounts): account name -> its run; each account runs on its own
    schedule (`settings.for_account(name).schedule`), in a loop of its own, so one account's
    long run never delays another's; `run` is then unused.

    `background`: coroutines run beside the schedule until the stop (e.g. webhook delivery);
    `health_detail`: extra keys for /healthz. Raises ConfigError when the port cannot be
    listened on (exit 2)."""
    await prime_metrics(engine, metrics)
    loops: list[tuple[str, RunFn, str | None]] = (
        [(settings.for_account(name).schedule, fn, name) for name, fn in account_runs.items()]
        if account_runs
        else [(settings.schedule, run, None)]
    )
    health = Health(
        engine,
        settings.schedule,
        time.time(),
        grace,
        tuple((name, sched) for sched, _, name in loops if name is not None),
    )
    app = make_app(health, metrics, routes, pages, health_detail)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, settings.serve_host, settings.serve_port)
    try:
        await site.start()
    except OSError as exc:
        await runner.cleanup()
        raise ConfigError(
            f"cannot listen on {settings.serve_host}:{settings.serve_port} "
            f"(SYNCSVC_SERVE_HOST, SYNCSVC_SERVE_PORT): {exc.strerror or exc}",
            setting="serve_port",
        ) from exc
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    port = runner.addresses[0][1] if runner.addresses else settings.serve_port
    log.info("serve_started", host=settings.serve_host, port=port, schedule=settings.schedule)
    if ready is not None:
        ready(port)
    exit_code = 0
    services = [asyncio.create_task(b(stop), name="serve-background") for b in background]
    try:
        await asyncio.gather(
            *(
                _schedule(sched, fn, stop, health, drain_seconds, run_now, name)
                for sched, fn, name in loops
            )
        )
    finally:
        stop.set()
        for service in services:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await asyncio.wait_for(service, timeout=drain_seconds)
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
        await runner.cleanup()
        log.info("serve_stopped", exit_code=exit_code)
    return exit_code


async def _schedule(
    schedule: str,
    run: RunFn,
    stop: asyncio.Event,
    health: Health,
    drain: float,
    run_now: bool,
    account: str | None,
) -> None:
    """One account's runs, on its schedule, until the stop."""
    fire = croniter(schedule, datetime.now(UTC))
    next_at = time.time() if run_now else fire.get_next(float)
    while not stop.is_set():
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), timeout=max(0.0, next_at - time.time()))
        if stop.is_set():
            break
        if account is not None:
            log.info("scheduled_run", account=account)
        await _one_run(run, stop, health, drain)
        next_at = fire.get_next(float)
        while next_at <= time.time():  # a run longer than the interval skips missed fires
            next_at = fire.get_next(float)


async def _one_run(run: RunFn, stop: asyncio.Event, health: Health, drain: float) -> int:
    task: asyncio.Task[object] = asyncio.create_task(run(stop), name="scheduled-run")
    waiter = asyncio.create_task(stop.wait())
    done, _ = await asyncio.wait({task, waiter}, return_when=asyncio.FIRST_COMPLETED)
    if task not in done:
        # Stopping: the run takes no new units; give in-flight ones time to finish.
        log.info("serve_draining", seconds=drain)
        try:
            await asyncio.wait_for(asyncio.shield(task), timeout=drain)
        except TimeoutError:
            task.cancel()  # in-flight units roll back: their transactions never commit
            with contextlib.suppress(asyncio.CancelledError, SyncError):
                await task
    waiter.cancel()
    if task.done() and not task.cancelled():
        exc = task.exception()
        if exc is not None and not isinstance(exc, SyncError):
            # A bug in one run: it is recorded failed; the service goes on and says so.
            log.error("run_crashed", error=f"{type(exc).__name__}: {exc}", exc_info=exc)
        elif exc is not None:
            # 101/102 too: the run is recorded failed, /healthz answers 503 with its reason,
            # and the next scheduled run tries again (a new token is read at restart).
            log.error("run_failed", error=str(exc), next="the next scheduled run")
    if not stop.is_set():
        ok, why = await health.check()
        if not ok:
            log.error("serve_unhealthy", reason=why)
    return 0
