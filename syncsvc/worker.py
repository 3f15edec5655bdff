"""`syncsvc worker`: run queued units, as procrastinate jobs, in this process (docs/task-queue.md).

A run with `executor = "queue"` commits its plan and one job per unit (store/jobs.py); any number
of worker processes, on any machines reaching the database, take the jobs. Each job runs one unit
exactly as a run in one process would (`Runner.execute`: fetch, parse, stage, diff, apply, one
transaction), and the worker that finds its run's last unit closed closes the run.

A worker that dies (SIGKILL, a lost machine) stops writing its heartbeat; after
`worker_stalled_after` seconds the others find its jobs stalled and run them again. A second
attempt of a unit that had committed finds its row closed and applies nothing (store/jobs.py); one
that had not commits as the first would have: every change is recorded once.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from sqlalchemy.engine import URL
from sqlalchemy.ext.asyncio import AsyncEngine

from syncsvc import logs
from syncsvc.cvent.client import CventClient
from syncsvc.errors import ConfigError, RunFencedError, RunStoppingError, StoreError
from syncsvc.metrics import Metrics
from syncsvc.parse.stream import ParseStage
from syncsvc.scheduler import Runner, close_if_done
from syncsvc.settings import Settings
from syncsvc.store import db, jobs
from syncsvc.store import runs as run_rows
from syncsvc.store.ratebudget import open_budget
from syncsvc.units import Unit, fallback
from syncsvc.vocab import RunStatus, UnitStatus

if TYPE_CHECKING:
    import procrastinate

log = logs.get_logger(__name__)

# A job whose unit could not even be claimed or closed (the database unreachable or out of
# connections) is tried again every JOB_RETRY_SECONDS, for about an hour: given up earlier, its
# unit would stay open and its run wait for it until the run's deadline. The unit's own failures
# are recorded on its row and never raise.
JOB_ATTEMPTS = 720
JOB_RETRY_SECONDS = 5

# How often an idle worker looks for jobs besides the notifications of new ones: one small query.
JOB_POLL_SECONDS = 0.5


def _procrastinate() -> Any:
    try:
        import procrastinate
    except ImportError:
        raise ConfigError(
            "executor = queue needs the queue extra: pip install 'syncsvc[queue]'",
            setting="executor",
        ) from None
    return procrastinate


def psycopg_conninfo(url: URL) -> tuple[str, dict[str, Any]]:
    """procrastinate's psycopg connection string for syncsvc's database, and the password apart
    (a keyword argument of the pool's connections, never part of a string that can be logged)."""
    kwargs: dict[str, Any] = {}
    if isinstance(url.password, str):
        kwargs["password"] = url.password
    conninfo = url.set(drivername="postgresql", password=None).render_as_string(hide_password=False)
    return conninfo, kwargs


@dataclass(slots=True)
class Worker:
    """What one worker process shares between its jobs: the engine, one parse pool, and per
    account one API client (one budget, one HTTP session), opened with the account's first unit."""

    settings: Settings  # the deployment's: every account's, by name
    engine: AsyncEngine
    parse: ParseStage
    metrics: Metrics
    name: str  # host-pid: recorded on the units it runs
    stack: contextlib.AsyncExitStack
    clients: dict[str, CventClient] = field(default_factory=dict)
    opening: asyncio.Lock = field(default_factory=asyncio.Lock)

    async def client_for(self, account: str) -> tuple[Settings, CventClient]:
        settings = self.settings.for_account(account)
        async with self.opening:
            client = self.clients.get(account)
            if client is None:
                settings.require_api()
                # The token's budget: this process's own, or shared by every worker in the
                # database (rate_budget = shared; docs/task-queue.md).
                budget = await self.stack.enter_async_context(open_budget(settings, self.engine))
                client = await self.stack.enter_async_context(
                    CventClient.open(settings, budget=budget)
                )
                self.clients[account] = client
        return settings, client

    async def run_job(self, run_id: int, fetch_id: int, lane: str | None = None) -> None:
        """Run one queued unit; `lane` is its job's lock (store/jobs.py, `job_lock`)."""
        claim = await jobs.claim(self.engine, fetch_id, self.name)
        if claim is None or not claim.run_running:
            # Committed by an earlier attempt, or its run has ended: only the close is left.
            log.info("unit_already_closed", run_id=run_id, fetch_id=fetch_id)
            await close_if_done(self.engine, run_id)
            return
        try:
            settings, client = await self.client_for(claim.account)
        except ConfigError as exc:
            # This worker's configuration lacks the run's account: the unit fails, saying so.
            await run_rows.finish_fetch(
                self.engine, fetch_id, status=UnitStatus.FAILED, error_message=str(exc)
            )
            log.error("unit_account_unknown", run_id=run_id, account=claim.account, error=str(exc))
            await close_if_done(self.engine, run_id)
            return
        unit = Unit.from_queued(claim.unit)
        runner = Runner(
            settings,
            self.engine,
            client,
            metrics=self.metrics,
            override_hold=bool(claim.options.get("override_hold")),
            trigger="worker",
            parse=self.parse,
        )
        logs.bind(run_id=run_id, account=claim.account)
        try:
            outcome = await runner.execute(run_id, unit, fetch_id)
        except RunFencedError:
            log.warning("unit_fenced", run_id=run_id, unit=unit.name)
            return
        except RunStoppingError as exc:
            # 101/102 stop the whole run, as in one process: close it failed; the fence keeps
            # the units running elsewhere from committing, and their jobs find it closed.
            await run_rows.finish_run(
                self.engine,
                run_id,
                status=RunStatus.FAILED,
                error_code=exc.code,
                error_message=str(exc),
            )
            log.error("run_stopped_by_unit", run_id=run_id, unit=unit.name, error=str(exc))
            return
        finally:
            logs.unbind("run_id", "account")
        if unit.account_wide and outcome.status == UnitStatus.FAILED and outcome.error:
            replacements = fallback(unit, outcome.error)
            await jobs.supersede(
                self.engine,
                run_id,
                fetch_id,
                [u.queued() for u in replacements],
                client.budget.max_in_flight,
            )
            log.warning(
                "event_all_fell_back",
                resource=unit.resource.path,
                reason=str(outcome.error),
                units=len(replacements),
            )
        try:
            await jobs.rebalance(self.engine, run_id, lane)
        except StoreError as exc:  # only an evener spread lost; the lanes run on as queued
            log.warning("lanes_not_rebalanced", run_id=run_id, error=str(exc))
        await close_if_done(self.engine, run_id)


def prompt_worker(app: procrastinate.App, **options: Any) -> Any:
    """procrastinate's worker, made to look for jobs again as soon as one of its own is done.

    A run's units wait on its lanes (store/jobs.py, `job_lock`): the next unit of a lane can be
    taken only once the previous one is finished, and procrastinate sends no notification then,
    so every worker would find it at its next poll, up to JOB_POLL_SECONDS later, once per unit
    of the lane. The worker whose job just ended has a place free and the lane's next job is now
    ready: it looks at once, with the one fetch its next poll would have made. (A fetch already
    under way that comes back empty clears the wake; the poll then finds the job, as before.)
    procrastinate 3's worker wakes its fetch loop on `_new_job_event`, as a notification of a
    new job does; without that attribute, as in another version, the worker polls as before."""
    _procrastinate()  # the extra's message when it is missing
    from procrastinate.worker import Worker

    class PromptWorker(Worker):
        async def _process_job(self, context: Any) -> None:
            try:
                await super()._process_job(context)
            finally:
                wake = getattr(self, "_new_job_event", None)
                if isinstance(wake, asyncio.Event):
                    wake.set()

    return PromptWorker(app=app, **{**app.worker_defaults, **options})


def make_app(url: URL) -> procrastinate.App:
    pc = _procrastinate()
    conninfo, kwargs = psycopg_conninfo(url)
    # procrastinate's own connections: its LISTEN, job fetches and status writes.
    connector = pc.PsycopgConnector(conninfo=conninfo, kwargs=kwargs, min_size=1, max_size=2)
    app: procrastinate.App = pc.App(connector=connector)
    return app


async def recover_stalled(app: procrastinate.App, settings: Settings) -> None:
    """Run again the jobs of workers that stopped their heartbeats (procrastinate leaves this to
    the application). Every worker does it; a job retried twice is retried once."""
    while True:
        await asyncio.sleep(settings.worker_heartbeat)
        try:
            stalled = await app.job_manager.get_stalled_jobs(
                queue=jobs.QUEUE,
                task_name=jobs.TASK,
                seconds_since_heartbeat=settings.worker_stalled_after,
            )
            for job in stalled:
                with contextlib.suppress(Exception):  # another worker retried it first
                    await app.job_manager.retry_job(job)
                    log.warning("stalled_unit_retried", job_id=job.id, args=job.task_kwargs)
        except Exception as exc:  # the database away for a moment: try again next beat
            log.warning("stalled_check_failed", error=type(exc).__name__)


async def serve_worker(settings: Settings, *, concurrency: int | None = None) -> None:
    """Take and run queued units until SIGTERM/SIGINT; then finish the running ones and exit."""
    pc = _procrastinate()
    for account in settings.accounts():  # a missing base URL or token: now, not at a unit
        account.require_api()
    places = concurrency or settings.worker_concurrency
    # A unit holds one connection for its transaction; its claim and its run's close take one
    # briefly besides.
    async with db.connect(settings, pool_size=places, max_overflow=1) as engine:
        await db.require_current(engine)
        await jobs.require_queue_schema(engine)
        parse = ParseStage(settings)
        try:
            async with contextlib.AsyncExitStack() as stack:
                name = f"{socket.gethostname()}-{os.getpid()}"
                worker = Worker(settings, engine, parse, Metrics(), name, stack)
                app = make_app(engine.url)

                async def unit(context: Any, run_id: int, fetch_id: int) -> None:
                    await worker.run_job(run_id, fetch_id, context.job.lock)

                app.task(
                    name=jobs.TASK,
                    queue=jobs.QUEUE,
                    retry=pc.RetryStrategy(max_attempts=JOB_ATTEMPTS, wait=JOB_RETRY_SECONDS),
                    pass_context=True,
                )(unit)
                log.info("worker_started", name=name, concurrency=places)
                async with app.open_async():
                    recovery = asyncio.create_task(recover_stalled(app, settings))
                    try:
                        await prompt_worker(
                            app,
                            queues=[jobs.QUEUE],
                            name=name,
                            concurrency=places,
                            update_heartbeat_interval=settings.worker_heartbeat,
                            # A job freed by its lane's previous one (store/jobs.py, job_lock)
                            # sends no notification: without a short poll it would wait 5 s.
                            fetch_job_polling_interval=JOB_POLL_SECONDS,
                            stalled_worker_timeout=settings.worker_stalled_after,
                            # No shutdown_graceful_timeout: on SIGTERM no new unit starts and
                            # the running ones finish (a unit cut short by a SIGKILL commits
                            # nothing and runs again elsewhere after the stall).
                            delete_jobs="successful",
                        ).run()
                    finally:
                        recovery.cancel()
                        with contextlib.suppress(asyncio.CancelledError):
                            await recovery
        finally:
            await asyncio.to_thread(parse.close)
    log.info("worker_stopped")
