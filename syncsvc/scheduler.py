"""Plan a run's units, fan them out under the run's one budget, and keep the run's record.

A run: take the database's run lock, sync `event.do` (events are diffed like any entity), plan
one `event=all` unit per resource where the catalog and the token allow it (else one unit per
event), run the units concurrently (a unit's failure never cancels its siblings; 101/102 stop
everything), fall back to per-event units when `event=all` is refused or fails, and close the
run with its status. Exit codes follow from the status (see `EXIT_CODES`).
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from sqlalchemy.ext.asyncio import AsyncEngine

from syncsvc import cascade, logs
from syncsvc.budget import RateBudget
from syncsvc.catalog import DATA_RESOURCES, EVENTS
from syncsvc.cvent.client import CventClient, FetchProgress
from syncsvc.errors import (
    RunFencedError,
    RunStoppingError,
    StoreError,
    SyncError,
    UnitClosedError,
)
from syncsvc.metrics import Metrics
from syncsvc.parse.stream import ParseStage
from syncsvc.settings import DEFAULT_ACCOUNT, Settings
from syncsvc.store import jobs, read
from syncsvc.store import runs as run_rows
from syncsvc.store.hold import HoldPolicy
from syncsvc.store.ratebudget import open_budget
from syncsvc.store.runlock import RUN_LOCK_KEY as RUN_LOCK_KEY  # where tests and tools look
from syncsvc.store.runlock import LockSession, RunLock
from syncsvc.store.unit import ApplyResult, UnitWriter
from syncsvc.units import Unit, UnitOutcome, fallback, plan, run_status, select_events
from syncsvc.vocab import ExitCode, Op, RunStatus, UnitStatus

log = logs.get_logger(__name__)

# How often a queued run's planner looks at its units (one small query on fetches and runs).
QUEUE_POLL_SECONDS = 0.5

# How often a run checks its lock session (a query on it also keeps `idle_session_timeout` and
# idle-killing poolers away from it).
LOCK_CHECK_SECONDS = 5.0

# A finished run's status -> its exit code (same name); any other status exits as failed.
EXIT_CODES = {
    s: ExitCode[s.name]
    for s in (RunStatus.SUCCEEDED, RunStatus.FAILED, RunStatus.PARTIAL, RunStatus.HELD)
}


# Several accounts in one invocation exit with the worst of their codes, in this order (a code
# not listed, such as an interruption, is worse than all).
SEVERITY = (
    ExitCode.FAILED,
    ExitCode.LOCKED,
    ExitCode.PARTIAL,
    ExitCode.HELD,
    ExitCode.SUCCEEDED,
)


def worst_exit(codes: list[int]) -> int:
    """The worst of several accounts' exit codes (SEVERITY); no code at all: succeeded."""
    ranked = [int(c) for c in SEVERITY]
    return min(codes, key=lambda c: ranked.index(c) if c in ranked else -1, default=0)


@dataclass(slots=True)
class RunResult:
    run_id: int
    status: RunStatus
    outcomes: list[UnitOutcome] = field(default_factory=list)
    error: str | None = None
    account: str = DEFAULT_ACCOUNT
    # Closed already (a queued run's last unit closes its run on the worker that ran it).
    closed: bool = False

    @property
    def exit_code(self) -> int:
        return EXIT_CODES.get(self.status, ExitCode.FAILED)

    def totals(self) -> dict[tuple[str, str], int]:
        """(entity, op) -> count over applied units."""
        out: dict[tuple[str, str], int] = {}
        for o in self.outcomes:
            if o.result is None:
                continue
            for op in ("inserted", "updated", "deleted", "rekeyed"):
                key = (o.unit.resource.entity, op)
                out[key] = out.get(key, 0) + getattr(o.result, op)
        return out


OnUnit = Callable[[UnitOutcome], None]
OnPlan = Callable[[int], None]
OnFetch = Callable[[Unit], FetchProgress | None]  # a unit's live progress (a terminal's display)


class Runner:
    """One run of the sync against one database and one API client."""

    def __init__(
        self,
        settings: Settings,
        engine: AsyncEngine,
        client: CventClient,
        *,
        metrics: Metrics | None = None,
        override_hold: bool = False,
        stop: asyncio.Event | None = None,
        on_unit: OnUnit | None = None,
        on_plan: OnPlan | None = None,
        trigger: str = "run",
        on_fetch: OnFetch | None = None,
        budget: RateBudget | None = None,
        parse: ParseStage | None = None,
        lock_session: LockSession | None = None,
    ) -> None:
        self.on_plan = on_plan
        self.lock_session = lock_session
        self.on_fetch = on_fetch
        self.settings = settings
        self.account = settings.account  # every row this run writes is this account's
        self.engine = engine
        self.client = client
        # Its workers start with the first dump they parse; a queue worker hands in its own.
        self.parse = parse or ParseStage(settings)
        self.metrics = metrics or Metrics()
        self.override_hold = override_hold
        self.stop = stop or asyncio.Event()
        self._halt = asyncio.Event()  # set when this run lost the right to write
        self.on_unit = on_unit
        self.trigger = trigger
        self.hold = HoldPolicy.from_settings(settings)
        self.run_id = 0
        self.outcomes: list[UnitOutcome] = []
        self.fenced: RunFencedError | None = None
        self._deadline_at: float | None = None  # the event loop's clock, when run_deadline is set
        self.lock_check_seconds = LOCK_CHECK_SECONDS
        # The client's, unless handed the same one (run_once builds it once for both): units run
        # at most its max_in_flight at once.
        self.budget = budget or client.budget

    @property
    def stopping(self) -> bool:
        """Told to stop (serve's stop event), or this run lost the right to write."""
        return self.stop.is_set() or self._halt.is_set()

    async def run(self, *, wait_lock: bool = False) -> RunResult:
        lock = RunLock(self.engine, self.account, self.lock_session)
        await lock.acquire(wait=wait_lock)
        try:
            return await self._locked_run(lock)
        finally:
            try:
                await asyncio.shield(lock.release())
            finally:
                await asyncio.to_thread(self.parse.close)

    async def _locked_run(self, lock: RunLock) -> RunResult:
        # We hold the run lock: any run still marked running has lost the right to write.
        stale = await run_rows.abandon_stale_runs(self.engine, self.account)
        if stale:
            log.warning("stale_runs_abandoned", runs=stale)
        self.run_id = await run_rows.create_run(
            self.engine,
            account=self.account,
            environment=self.settings.environment,
            api_host=urlsplit(self.settings.base_url or "").hostname,
            trigger=self.trigger,
            options={
                "override_hold": self.override_hold,
                # The hold's threshold in force, so a held run's page shows what it was held at.
                "delete_hold_ratio": self.settings.delete_hold_ratio,
                "delete_hold_min_rows": self.settings.delete_hold_min_rows,
            },
        )
        logs.bind(run_id=self.run_id, account=self.account)
        # inc/dec, not set: serve may run several accounts at once in one process.
        self.metrics.running.inc()
        started = time.monotonic()
        watch = asyncio.create_task(self._watch_lock(lock), name="run-lock-watch")
        try:
            result = await self._run_within_deadline()
            if self.fenced is not None:
                raise self.fenced
        except BaseException as exc:
            status, message = _failure(exc)
            if isinstance(exc, RunFencedError):
                # A newer run owns the database: this run's row is `abandoned` and stays so.
                await self._quietly(
                    run_rows.close_open_units, self.engine, self.run_id, message=str(exc)
                )
                log.error("run_fenced", run_id=self.run_id, error=str(exc))
            else:
                await self._quietly(
                    run_rows.finish_run,
                    self.engine,
                    self.run_id,
                    status=status,
                    error_code=getattr(exc, "code", None),
                    error_message=message,
                )
            self._count_run(status, started)
            raise
        finally:
            watch.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watch
            self.metrics.running.dec()
            logs.unbind("run_id", "account")
        if result.closed:
            self._count_run(result.status, started)
            log.info("run_finished", run_id=self.run_id, status=result.status)
            return result
        closed = await self._quietly(
            run_rows.finish_run,
            self.engine,
            self.run_id,
            status=result.status,
            error_message=result.error,
        )
        if closed is False:
            fenced = RunFencedError(run_id=self.run_id)
            log.error("run_fenced", run_id=self.run_id, error=str(fenced))
            self._count_run(RunStatus.ABANDONED, started)
            raise fenced
        self._count_run(result.status, started)
        log.info("run_finished", run_id=self.run_id, status=result.status)
        return result

    async def _watch_lock(self, lock: RunLock) -> None:
        """Check the lock session every LOCK_CHECK_SECONDS; once the run has lost the right to
        write, stop taking units (in-flight ones cannot commit: the fence)."""
        while True:
            await asyncio.sleep(self.lock_check_seconds)
            try:
                held = await lock.check(self.run_id)
            except StoreError as exc:
                # The database itself is unreachable: units cannot commit either. Try again.
                cause = exc.__cause__ or exc
                log.warning("run_lock_check_failed", run_id=self.run_id, error=type(cause).__name__)
                continue
            if not held:
                self.fenced = RunFencedError(run_id=self.run_id)
                log.error("run_lock_lost", run_id=self.run_id, error=str(self.fenced))
                self._halt.set()  # this run only: serve's stop stays its own
                return

    async def _quietly(self, fn: Callable[..., Awaitable[Any]], *args: Any, **kw: Any) -> Any:
        """A bookkeeping write, tried twice (the first may meet a pooled connection that died;
        SQLAlchemy then discards the pool's connections). A failure to record a failure is
        logged, never raised: the run goes on, and a later run repairs what stayed open."""
        for attempt in (1, 2):
            try:
                return await fn(*args, **kw)
            except SyncError as exc:  # the store's writes raise StoreError only
                first = str(exc).splitlines()[0] if str(exc) else ""
                log.warning(
                    "bookkeeping_write_failed",
                    write=getattr(fn, "__name__", "?"),
                    attempt=attempt,
                    error=f"{type(exc).__name__}: {first}"[:300],
                )
        return None

    def _cancel_reason(self) -> str:
        """Why a unit is being cancelled: the run's deadline, or an interruption."""
        at = self._deadline_at
        if at is not None and asyncio.get_running_loop().time() >= at:
            return self._deadline_passed()
        return "the run was stopped before the unit committed"

    def _deadline_passed(self) -> str:
        return f"the run passed its deadline (run_deadline {self.settings.run_deadline:g} s)"

    async def _run_within_deadline(self) -> RunResult:
        """`_run`, bounded by run_deadline. Past it the units in flight are cancelled (each
        rolls back whole, as any unit that does not commit), the rest never start, and the run
        ends partial (something was applied) or failed, saying so."""
        limit = self.settings.run_deadline
        deadline = asyncio.timeout(limit or None)
        if limit:
            self._deadline_at = asyncio.get_running_loop().time() + limit
        try:
            async with deadline:
                return await self._run()
        except TimeoutError:
            if not deadline.expired():
                raise
        passed = self._deadline_passed()
        swept = await run_rows.cancel_running_units(
            self.engine, self.run_id, message=f"cancelled: {passed}"
        )
        result = self._result(None)
        # Units cancelled in flight closed their own rows; the sweep catches any that could not.
        cancelled = swept + sum(1 for o in result.outcomes if o.status == UnitStatus.CANCELLED)
        applied = any(o.status in (UnitStatus.APPLIED, UnitStatus.HELD) for o in result.outcomes)
        result.status = RunStatus.PARTIAL if applied else RunStatus.FAILED
        said = f"{passed}: {cancelled} unit(s) cancelled in flight, the rest not started"
        result.error = f"{said}; {result.error}" if result.error else said
        log.error("run_deadline_passed", run_deadline=limit, cancelled=cancelled)
        return result

    def _count_run(self, status: RunStatus, started: float) -> None:
        now = time.time()
        self.metrics.runs.labels(status=status).inc()
        self.metrics.last_finished.set(now)
        self.metrics.last_duration.set(time.monotonic() - started)
        if status == RunStatus.SUCCEEDED:
            self.metrics.last_success.set(now)

    async def _run(self) -> RunResult:
        events_outcome = await self._run_unit(Unit(EVENTS, None))
        if events_outcome.status == UnitStatus.HELD:
            # The event list would lose more than the hold allows (a token pointed at another
            # account, an outage upstream): nothing of it is stored, not even the events it
            # adds, so a data unit now would sync against a list nobody has confirmed (an
            # event=all dump would store records of events that are not stored). The run ends
            # here, held, for an operator to look at and re-run with the override.
            return RunResult(
                self.run_id,
                RunStatus.HELD,
                list(self.outcomes),
                "event.do held: it would delete more of the account's events than the hold"
                " allows; no other unit ran (re-run with --override-hold)",
                self.account,
            )
        if events_outcome.status != UnitStatus.APPLIED:
            return self._result(f"event.do failed: {events_outcome.error}")
        guids, orphaned = await read.plan_inputs(self.engine, self.account)
        by_table = {r.table: r for r in DATA_RESOURCES}
        resources = [by_table[name] for name in self.settings.resources]
        # An event=all dump carries every event: with an include/exclude list, per-event units
        # keep the excluded events out of the store entirely.
        filtered = bool(self.settings.events_include or self.settings.events_exclude)
        units = plan(
            resources,
            select_events(self.settings, guids),
            use_event_all=self.settings.use_event_all and not filtered,
        )
        vanished = cascade.units(orphaned)
        if self.on_plan is not None:
            self.on_plan(len(units) + len(vanished))
        await self._apply_vanished(vanished)
        if self.settings.executor == "queue":
            return await self._run_queued(units)
        # As many tasks as the budget has places, each taking the next unit from one queue that
        # fallback units join too: a task per unit waiting for a place costs memory in
        # proportion to the account (measured: 2,000 events, 6,000 units, +30 MB of peak RSS),
        # and as many units as places means a unit never waits for one.
        queue: asyncio.Queue[Unit | None] = asyncio.Queue()
        for unit in units:
            queue.put_nowait(unit)

        async def drain() -> None:
            while (unit := await queue.get()) is not None:
                try:
                    await self._run_with_fallback(unit, queue.put_nowait)
                finally:
                    queue.task_done()

        tasks = self.budget.max_in_flight
        try:
            async with asyncio.TaskGroup() as tg:
                for i in range(tasks):
                    tg.create_task(drain(), name=f"units-{i}")
                # Every unit done, and no unit left that could still queue its fallback units.
                await queue.join()
                for _ in range(tasks):
                    queue.put_nowait(None)
        except* (RunStoppingError, RunFencedError) as group:
            raise _first_leaf(group) from None
        except* Exception as group:
            # Never expected (units record their own failures); one line, not an ExceptionGroup.
            first = _first_leaf(group)
            raise SyncError(f"unexpected {type(first).__name__}: {first}") from first
        return self._result(None)

    async def _run_queued(self, units: list[Unit]) -> RunResult:
        """The units as jobs for `syncsvc worker` processes, committed in one transaction; then
        wait until the run is closed by its last unit (or close it, when every unit is final
        first), reporting units as they end. Stopping closes the run `interrupted`: units not
        started are skipped, and the fence keeps running ones from committing."""
        await jobs.enqueue_units(
            self.engine, self.run_id, [u.queued() for u in units], self.budget.max_in_flight
        )
        log.info("units_queued", units=len(units))
        watch = jobs.watch(self.engine, QUEUE_POLL_SECONDS)
        changed = watch.changed(self.run_id)
        try:
            seen: set[int] = set()
            while True:
                changed.clear()
                now = await jobs.progress(self.engine, self.run_id, seen)
                if now is None:  # never deleted while running; were it, say so, do not spin
                    raise SyncError(f"run {self.run_id} is no longer in the database")
                self._report_queued(now.units, seen)
                if now.status != RunStatus.RUNNING:
                    # Closed by its last unit's worker (or a unit that met 101/102: it stops all).
                    return RunResult(
                        self.run_id,
                        RunStatus(now.status),
                        list(self.outcomes),
                        now.error_message,
                        self.account,
                        closed=True,
                    )
                if now.still_open == 0:
                    await close_if_done(self.engine, self.run_id)
                    continue
                if self.stopping:
                    # One snapshot: the units ended since are reported so, the rest skipped.
                    last = await jobs.progress(self.engine, self.run_id, seen, with_open=True)
                    rows = [] if last is None else last.units
                    self._report_queued([r for r in rows if UnitStatus(r.status).final], seen)
                    for row in rows:
                        if row.id not in seen:
                            self._done(UnitOutcome(Unit.from_queued(row.unit), UnitStatus.SKIPPED))
                    return self._result(None)
                # Until the watch sees the run move; every poll interval, a look at whether
                # this run was told to stop.
                while not self.stopping:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(changed.wait(), QUEUE_POLL_SECONDS)
                        break
        finally:
            watch.forget(self.run_id)

    def _report_queued(self, rows: list[jobs.UnitRow], seen: set[int]) -> None:
        """Report the queued units that have ended since the last look, once each."""
        for row in rows:
            if row.id not in seen:
                seen.add(row.id)
                self._done(
                    UnitOutcome(
                        Unit.from_queued(row.unit),
                        UnitStatus(row.status),
                        fetch_id=row.id,
                        records=row.records,
                        bytes=row.bytes,
                        error=SyncError(row.error_message) if row.error_message else None,
                    )
                )

    async def execute(self, run_id: int, unit: Unit, fetch_id: int) -> UnitOutcome:
        """One queued unit of run `run_id`, on its existing fetch row (`syncsvc worker`)."""
        self.run_id = run_id
        outcome = UnitOutcome(unit, UnitStatus.PENDING, fetch_id=fetch_id)
        return await self._fetch_and_apply(unit, outcome)

    def _writer(self, outcome: UnitOutcome) -> UnitWriter:
        """The store's writer for the unit's one transaction, on its fetch row."""
        assert outcome.fetch_id is not None
        return UnitWriter(
            self.engine,
            run_id=self.run_id,
            fetch_id=outcome.fetch_id,
            resource=outcome.unit.resource,
            scope=outcome.unit.scope,
        )

    async def _apply_vanished(self, units: list[Unit]) -> None:
        """Apply each vanished event's unit (syncsvc/cascade.py) as an empty complete dump of its
        event, recorded like any unit."""
        for unit in units:
            outcome = UnitOutcome(unit, UnitStatus.PENDING)
            if self.stopping:
                outcome.status = UnitStatus.SKIPPED
                self._done(outcome)
                continue
            outcome.fetch_id = await run_rows.create_fetch(
                self.engine, run_id=self.run_id, resource=unit.resource, scope=unit.scope
            )
            started = time.monotonic()
            try:
                async with self._writer(outcome) as writer:
                    result = await writer.apply(
                        complete=True, hold=self.hold, override_hold=self.override_hold
                    )
                outcome.result = result
                outcome.status = UnitStatus(result.status)
                outcome.seconds = time.monotonic() - started
                await run_rows.finish_fetch(
                    self.engine,
                    outcome.fetch_id,
                    status=result.status,
                    attempts=0,
                    bytes_read=0,
                    details={"cascade": cascade.REASON},
                )
                self._count_applied(unit, result, 0)
                log.info(
                    "event_records_deleted",
                    unit=unit.name,
                    status=result.status,
                    deleted=result.deleted,
                )
            except RunFencedError:
                raise  # a newer run owns the database: the run stops (see scheduler)
            except SyncError as exc:
                outcome.status = UnitStatus.FAILED
                outcome.error = exc
                await self._record_failure(outcome, exc)
                log.warning("unit_failed", unit=unit.name, error=str(exc))
            self._done(outcome)

    async def _run_with_fallback(self, unit: Unit, queue: Callable[[Unit], None]) -> None:
        """Run `unit`; when it is an `event=all` unit that failed, `queue` its replacements."""
        outcome = await self._run_unit(unit)
        # Refused (103/104) or failed after retries: per-event units can still get the data.
        failed = outcome.status == UnitStatus.FAILED
        if unit.account_wide and failed and outcome.error is not None:
            replacements = fallback(unit, outcome.error)
            outcome.status = UnitStatus.SUPERSEDED
            if outcome.fetch_id is not None:
                await self._quietly(
                    run_rows.finish_fetch,
                    self.engine,
                    outcome.fetch_id,
                    status=UnitStatus.SUPERSEDED,
                )
            log.warning(
                "event_all_fell_back",
                resource=unit.resource.path,
                reason=str(outcome.error),
                units=len(replacements),
            )
            for u in replacements:
                queue(u)

    async def _run_unit(self, unit: Unit) -> UnitOutcome:
        outcome = UnitOutcome(unit, UnitStatus.PENDING)
        if self.stopping:
            outcome.status = UnitStatus.SKIPPED
            return self._done(outcome)
        return await self._fetch_and_apply(unit, outcome)

    async def _fetch_and_apply(self, unit: Unit, outcome: UnitOutcome) -> UnitOutcome:
        if outcome.fetch_id is None:  # a queued unit's row exists already
            outcome.fetch_id = await self._quietly(
                run_rows.create_fetch,
                self.engine,
                run_id=self.run_id,
                resource=unit.resource,
                scope=unit.scope,
            )
        if outcome.fetch_id is None:
            outcome.status = UnitStatus.FAILED
            outcome.error = StoreError("could not record the unit's start in the database")
            return self._done(outcome)
        started = time.monotonic()
        with structlog_unit(unit):
            try:
                async with self._writer(outcome) as writer:
                    # fetch -> parse -> stage: the parse stays in process or runs in workers,
                    # and stages rows either way (syncsvc/parse/stream.py).
                    fetched = await self.client.fetch(
                        unit.resource,
                        unit.event,
                        self.parse.consumer(unit.resource, writer.stage, encoded=True),
                        progress=self.on_fetch(unit) if self.on_fetch else None,
                        single_event=unit.event is not None and not unit.account_wide,
                    )
                    outcome.records = fetched.records
                    outcome.bytes = fetched.bytes
                    outcome.attempts = fetched.attempts
                    # The fetch row is closed in the unit's own transaction (status, counts
                    # and transport figures): nothing is left to write after the commit.
                    result = await writer.apply(
                        complete=True,
                        covered_events=unit.covered or None,
                        hold=self.hold,
                        override_hold=self.override_hold,
                        transport={
                            "attempts": fetched.attempts,
                            "http_status": fetched.http_status,
                            "bytes": fetched.bytes,
                            "fetch_seconds": fetched.elapsed,
                        },
                    )
                outcome.result = result
                outcome.status = UnitStatus(result.status)
                outcome.seconds = time.monotonic() - started
                self._count_applied(unit, result, fetched.bytes)
            except RunFencedError as exc:
                outcome.error = exc
                outcome.status = UnitStatus.CANCELLED
                await self._record_failure(outcome, exc, status=UnitStatus.CANCELLED)
                self.fenced = self.fenced or exc
                self._halt.set()  # this run only: serve's stop stays its own
                self._done(outcome)
                raise
            except RunStoppingError as exc:
                outcome.error = exc
                outcome.status = UnitStatus.FAILED
                await self._record_failure(outcome, exc)
                self._done(outcome)
                raise
            except UnitClosedError as exc:
                # Another attempt of this queued unit committed first: this one applied nothing
                # and its row already says how the unit ended.
                outcome.error = exc
                outcome.status = UnitStatus.SUPERSEDED
                log.info("unit_attempt_redundant", unit=unit.name, fetch_id=outcome.fetch_id)
                return outcome
            except SyncError as exc:
                outcome.error = exc
                outcome.status = UnitStatus.FAILED
                await self._record_failure(outcome, exc)
                log.warning("unit_failed", unit=unit.name, error=str(exc))
            except Exception as exc:
                # Not one of ours (a bug, a connection that died under the unit): this unit fails
                # and is recorded; its siblings go on, as for any other unit failure.
                first = str(exc).splitlines()[0] if str(exc) else ""
                wrapped = SyncError(f"unexpected {type(exc).__name__}: {first}"[:500])
                wrapped.__cause__ = exc
                log.error("unit_crashed", unit=unit.name, error=str(wrapped))
                outcome.error = wrapped
                outcome.status = UnitStatus.FAILED
                await self._record_failure(outcome, wrapped)
            except asyncio.CancelledError:
                # Interrupted, or a sibling stopped the run: rolled back, nothing applied. The
                # row is closed here, or by finish_run's sweep when this write cannot happen.
                outcome.status = UnitStatus.CANCELLED
                await asyncio.shield(
                    self._quietly(
                        run_rows.finish_fetch,
                        self.engine,
                        outcome.fetch_id,
                        status=UnitStatus.CANCELLED,
                        error_message=f"cancelled: {self._cancel_reason()}; nothing applied",
                    )
                )
                self._done(outcome)
                raise
            return self._done(outcome)

    async def _record_failure(
        self, outcome: UnitOutcome, exc: SyncError, status: UnitStatus = UnitStatus.FAILED
    ) -> None:
        assert outcome.fetch_id is not None
        attempts = exc.context.get("attempts")
        await self._quietly(
            run_rows.finish_fetch,
            self.engine,
            outcome.fetch_id,
            status=status,
            attempts=attempts if isinstance(attempts, int) else None,
            error_code=exc.code,
            error_message=str(exc),
        )

    def _count_applied(self, unit: Unit, result: ApplyResult, nbytes: int) -> None:
        entity = unit.resource.entity
        m = self.metrics
        m.records.labels(entity=entity).inc(result.records)
        m.bytes.inc(nbytes)
        for op, n in (
            (Op.INSERT, result.inserted),
            (Op.UPDATE, result.updated),
            (Op.DELETE, result.deleted),
            (Op.REKEY, result.rekeyed),
        ):
            if n:
                m.changes.labels(entity=entity, op=op).inc(n)

    def _done(self, outcome: UnitOutcome) -> UnitOutcome:
        self.outcomes.append(outcome)
        self.metrics.units.labels(resource=outcome.unit.resource.path, status=outcome.status).inc()
        if self.on_unit is not None:
            self.on_unit(outcome)
        return outcome

    def _result(self, error: str | None) -> RunResult:
        status, error = run_status([(o.status, o.unit.name) for o in self.outcomes], error)
        return RunResult(self.run_id, status, list(self.outcomes), error, self.account)


async def close_if_done(engine: AsyncEngine, run_id: int) -> bool:
    """Close a queued run once none of its units is open, with the status its units give (the
    same rules as a run in one process); True if this call closed it. Under the run row's lock:
    of two callers finding the last unit closed, one closes and the other finds it closed.

    Every unit's worker calls it after its unit's row is final, so a look without the lock
    that finds a unit open may stop there: that unit's worker calls it later and sees this one
    final. It spares the lock and three round trips for every unit but a run's last. Should
    that worker die between its commit and this call, its job is run again after the stall
    (the claim finds the row closed and only calls this), and the planner closes a run whose
    units it finds all final."""
    if await jobs.any_open(engine, run_id):
        return False
    async with jobs.closing(engine, run_id) as units:
        if units is None or any(not UnitStatus(u.status).final for u in units):
            return False
        status, error = run_status([(UnitStatus(u.status), u.name) for u in units], None)
        await units.close(status, error)
    log.info("run_closed_by_units", run_id=run_id, status=status)
    return True


def _first_leaf(group: BaseExceptionGroup[Any]) -> BaseException:
    error: BaseException = group
    while isinstance(error, BaseExceptionGroup):
        error = error.exceptions[0]
    return error


def _failure(exc: BaseException) -> tuple[RunStatus, str]:
    """A run's status and message for the exception that ended it."""
    if isinstance(exc, asyncio.CancelledError | KeyboardInterrupt):
        return RunStatus.INTERRUPTED, "interrupted (SIGINT/SIGTERM, or serve's drain limit)"
    if isinstance(exc, RunFencedError):
        return RunStatus.ABANDONED, str(exc)
    if isinstance(exc, SyncError):
        return RunStatus.FAILED, str(exc)
    first = str(exc).splitlines()[0] if str(exc) else ""
    return RunStatus.FAILED, f"{type(exc).__name__}: {first}"[:500]


@contextlib.contextmanager
def structlog_unit(unit: Unit) -> Any:
    logs.bind(unit=unit.name, event_guid=str(unit.scope))
    try:
        yield
    finally:
        logs.unbind("unit", "event_guid")


@contextlib.asynccontextmanager
async def cancel_on_sigterm() -> AsyncIterator[None]:
    """SIGTERM cancels the current task, as asyncio.run does for SIGINT: the run closes as
    `interrupted` (its uncommitted units `cancelled`) instead of dying with its row `running`."""
    loop = asyncio.get_running_loop()
    task = asyncio.current_task()
    assert task is not None
    loop.add_signal_handler(signal.SIGTERM, task.cancel)
    try:
        yield
    finally:
        loop.remove_signal_handler(signal.SIGTERM)


async def run_once(
    settings: Settings,
    engine: AsyncEngine,
    *,
    metrics: Metrics | None = None,
    override_hold: bool = False,
    wait_lock: bool = False,
    stop: asyncio.Event | None = None,
    on_unit: OnUnit | None = None,
    on_plan: OnPlan | None = None,
    trigger: str = "run",
    on_fetch: OnFetch | None = None,
    lock_session: LockSession | None = None,
) -> RunResult:
    """One whole run with its own API client (its run lock on `lock_session` when given: many
    accounts' runs at once on one connection)."""
    settings.require_api()
    metrics = metrics or Metrics()
    async with (
        open_budget(settings, engine) as budget,
        CventClient.open(settings, budget=budget) as client,
    ):
        runner = Runner(
            settings,
            engine,
            client,
            metrics=metrics,
            override_hold=override_hold,
            stop=stop,
            on_unit=on_unit,
            on_plan=on_plan,
            trigger=trigger,
            on_fetch=on_fetch,
            budget=budget,
            lock_session=lock_session,
        )
        try:
            return await runner.run(wait_lock=wait_lock)
        finally:
            # One client per run: its counters are this run's.
            metrics.retries.inc(client.stats.retries)
            metrics.rate_limit_wait.inc(client.stats.rate_limit_wait_seconds)
