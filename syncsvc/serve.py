"""`syncsvc serve`: runs on a cron schedule and serves /healthz and /metrics.

Health means the scheduler is alive and keeping its schedule: healthy until a scheduled run is
overdue, i.e. the last run finished before the latest fire time that is more than `grace`
seconds old. SIGTERM (or SIGINT) stops taking units; in-flight units finish (or, past
`drain_seconds`, are cancelled and roll back); the process exits 0.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import time
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from aiohttp import web
from croniter import croniter

from syncsvc import logs
from syncsvc.errors import RunStoppingError, SyncError
from syncsvc.metrics import Metrics
from syncsvc.settings import Settings

log = logs.get_logger(__name__)

RunFn = Callable[[asyncio.Event], Coroutine[Any, Any, object]]
Background = Callable[[asyncio.Event], Coroutine[Any, Any, None]]


@dataclass(slots=True)
class Health:
    """What /healthz judges from: the schedule, when the service started, the last run's end."""

    schedule: str
    started_at: float
    grace: float
    last_finished: float | None = None
    running_since: float | None = None

    def healthy(self, now: float | None = None) -> tuple[bool, str]:
        now = time.time() if now is None else now
        due = croniter(self.schedule, datetime.fromtimestamp(now, UTC)).get_prev(float)
        overdue_at = due + self.grace
        if now < overdue_at:
            # The latest fire is still within its grace: judge by the one before it.
            due = croniter(self.schedule, datetime.fromtimestamp(due, UTC)).get_prev(float)
        if due < self.started_at:
            return True, "no run was due since the service started"
        if self.last_finished is not None and self.last_finished >= due:
            return True, f"last run finished at {_iso(self.last_finished)}"
        return False, f"the run due at {_iso(due)} has not finished"


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="seconds")


def make_app(
    health: Health, metrics: Metrics, detail: Callable[[], dict[str, Any]] | None = None
) -> web.Application:
    async def healthz(_: web.Request) -> web.Response:
        ok, why = health.healthy()
        body: dict[str, Any] = {"healthy": ok, "reason": why}
        if detail is not None:  # e.g. the change feed's consumers; reported, not judged
            body.update(detail())
        return web.json_response(body, status=200 if ok else 503)

    async def metrics_view(_: web.Request) -> web.Response:
        return web.Response(body=metrics.render(), content_type="text/plain", charset="utf-8")

    app = web.Application()
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/metrics", metrics_view)
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
    background: Sequence[Background] = (),
    health_detail: Callable[[], dict[str, Any]] | None = None,
) -> int:
    """Serve until SIGTERM/SIGINT; returns the exit code (0 on a signal-driven stop).

    `background`: coroutines run beside the schedule until the stop (e.g. webhook delivery);
    `health_detail`: extra keys for /healthz.
    """
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    health = Health(settings.schedule, time.time(), grace)
    runner = web.AppRunner(make_app(health, metrics, health_detail), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, settings.serve_host, settings.serve_port)
    await site.start()
    port = runner.addresses[0][1] if runner.addresses else settings.serve_port
    log.info("serve_started", host=settings.serve_host, port=port, schedule=settings.schedule)
    if ready is not None:
        ready(port)
    exit_code = 0
    services = [asyncio.create_task(b(stop), name="serve-background") for b in background]
    try:
        fire = croniter(settings.schedule, datetime.now(UTC))
        next_at = time.time() if run_now else fire.get_next(float)
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=max(0.0, next_at - time.time()))
            if stop.is_set():
                break
            exit_code = await _one_run(run, stop, health, drain_seconds)
            if exit_code:
                break
            next_at = fire.get_next(float)
            while next_at <= time.time():  # a run longer than the interval skips missed fires
                next_at = fire.get_next(float)
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


async def _one_run(run: RunFn, stop: asyncio.Event, health: Health, drain: float) -> int:
    health.running_since = time.time()
    task: asyncio.Task[object] = asyncio.create_task(run(stop), name="scheduled-run")
    try:
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
            if isinstance(exc, RunStoppingError):
                log.error("run_stopped_service", error=str(exc))
                return 1
            if exc is not None and not isinstance(exc, SyncError):
                raise exc
            if exc is not None:
                log.error("run_failed", error=str(exc))
        return 0
    finally:
        health.running_since = None
        health.last_finished = time.time()
