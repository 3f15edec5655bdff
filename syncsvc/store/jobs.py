"""A queued run's units as rows and jobs: the plan committed with its jobs, a worker's claim on a
unit, and the close of a run by its last unit (docs/task-queue.md).

A queued unit is a `fetches` row (status `pending`) plus one procrastinate job naming it. Both
are written in one transaction through procrastinate's own SQL function, so a plan never exists
without its jobs, nor a job without its unit. Nothing here imports procrastinate: the enqueue is
SQL on syncsvc's asyncpg connection, and only `syncsvc worker` (syncsvc/worker.py) runs jobs.

Exactly once, whatever the queue redelivers: a unit's transaction commits only while its run is
`running` (the fence in store/unit.py) and only while its fetch row is still open
(`claim`/`still_open`); a second attempt of a unit that committed finds its row closed and does
nothing but the run's close.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import weakref
from collections.abc import AsyncIterator, Collection, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from syncsvc.store import runs
from syncsvc.store.boundary import boundary, guarded
from syncsvc.store.db import autocommit, raw_connection
from syncsvc.vocab import UnitStatus

QUEUE = "syncsvc"
TASK = "syncsvc.unit"

# procrastinate's schema, present once `syncsvc db upgrade` applied it (syncsvc/worker.py).
JOBS_TABLE = "procrastinate_jobs"

# procrastinate_job_to_defer_v1: (queue, task, priority, lock, queueing_lock, args, scheduled_at).
DEFER = """
SELECT unnest(procrastinate_defer_jobs_v1(array_agg(
    ROW(:queue, :task, 0, j.lock, NULL, j.args, NULL)::procrastinate_job_to_defer_v1)))
FROM jsonb_to_recordset(CAST(:jobs AS jsonb)) AS j(lock text, args jsonb)
"""

INSERT_UNIT = """
INSERT INTO fetches (run_id, account, resource, entity, scope, status, details)
SELECT :run_id, r.account, u.resource, u.entity, u.scope, 'pending', u.details
FROM runs r, jsonb_to_recordset(CAST(:units AS jsonb)) AS u(resource text, entity text,
                                                           scope text, details jsonb)
WHERE r.id = :run_id
RETURNING id, scope, resource
"""

# A worker's claim: the unit is still open and its run still `running`. A unit found open in a
# run that is no longer running is closed `skipped` (it never started) or `cancelled`.
CLAIM = """
WITH unit AS (
    SELECT f.id, f.run_id, f.resource, f.scope, f.status, f.details, r.status AS run_status,
           r.options, r.account
    FROM fetches f JOIN runs r ON r.id = f.run_id
    WHERE f.id = :fetch_id
)
UPDATE fetches f
SET status = CASE WHEN unit.run_status = 'running' THEN 'running'
                  WHEN unit.status = 'pending' THEN 'skipped' ELSE 'cancelled' END,
    started_at = coalesce(f.started_at, now()),
    details = f.details || jsonb_build_object(
        'worker', CAST(:worker AS text),
        'claims', coalesce(CAST(f.details->>'claims' AS int), 0) + 1),
    finished_at = CASE WHEN unit.run_status = 'running' THEN NULL ELSE now() END
FROM unit
WHERE f.id = unit.id AND f.status IN ('pending', 'running')
RETURNING f.run_id, f.resource, f.entity, f.scope, f.details, unit.run_status, unit.options,
          unit.status AS was, unit.account
"""

# The run's units as its close counts them (the close holds the run row's lock meanwhile).
UNIT_ROWS = sa.text(
    "SELECT id, resource, entity, scope, status, error_message, details, records, bytes"
    " FROM fetches WHERE run_id = :run_id ORDER BY id"
)
LOCK_RUN = sa.text("SELECT status FROM runs WHERE id = :run_id FOR UPDATE")
# Every watched run's status and count of final units (`RunWatch`).
MARKS = sa.text(
    "SELECT r.id, r.status,"
    " count(f.id) FILTER (WHERE f.status <> ALL(CAST(:open AS text[]))) AS final"
    " FROM runs r LEFT JOIN fetches f ON f.run_id = r.id"
    " WHERE r.id = ANY(CAST(:ids AS bigint[])) GROUP BY r.id"
)
OPEN = [s.value for s in UnitStatus if not s.final]  # a unit's statuses before it ends

ANY_OPEN = sa.text(
    "SELECT EXISTS (SELECT FROM fetches WHERE run_id = :run_id"
    " AND status = ANY(CAST(:open AS text[])))"
)

# The run and its units not yet reported, in one statement (`progress`).
PROGRESS = sa.text(
    "SELECT r.status AS run_status, r.error_message AS run_error,"
    " (SELECT count(*) FROM fetches o WHERE o.run_id = r.id"
    "  AND o.status = ANY(CAST(:open AS text[]))) AS still_open,"
    " f.id, f.resource, f.entity, f.scope, f.status, f.error_message, f.details, f.records, f.bytes"
    " FROM runs r LEFT JOIN fetches f ON f.run_id = r.id"
    " AND (CAST(:with_open AS boolean) OR f.status <> ALL(CAST(:open AS text[])))"
    # NOT IN a subquery, hashed once, not <> ALL(array): a run of 6,000 units polled whole
    # would compare each row with every reported id.
    " AND f.id NOT IN (SELECT unnest(CAST(:seen AS bigint[])))"
    " WHERE r.id = :run_id ORDER BY f.id"
)


@dataclass(frozen=True, slots=True)
class QueuedUnit:
    """What a job's unit is: enough to rebuild its `Unit` in any process."""

    resource: str  # the catalog path, e.g. userData.do
    entity: str
    scope: str  # as the fetch row records it
    event: str | None  # the `event` parameter
    covered: tuple[str, ...] = ()
    account_wide: bool = False

    def details(self) -> dict[str, Any]:
        return {
            "queued": {
                "event": self.event,
                "covered": list(self.covered),
                "account_wide": self.account_wide,
            }
        }

    @classmethod
    def from_row(cls, resource: str, entity: str, scope: str, details: Any) -> QueuedUnit:
        q = (details or {}).get("queued") or {}
        return cls(
            resource=resource,
            entity=entity,
            scope=scope,
            event=q.get("event"),
            covered=tuple(q.get("covered") or ()),
            account_wide=bool(q.get("account_wide")),
        )


@dataclass(frozen=True, slots=True)
class Claim:
    """A worker's hold on an open unit, or the news that its run has ended."""

    run_id: int
    account: str  # the run's: which account's settings, token and budget the unit runs with
    unit: QueuedUnit
    run_running: bool  # False: the row was just closed skipped/cancelled; nothing to do
    options: dict[str, Any]


@dataclass(frozen=True, slots=True)
class UnitRow:
    id: int
    unit: QueuedUnit
    status: str
    error_message: str | None
    records: int
    bytes: int

    @property
    def name(self) -> str:
        """entity:scope, as a run's messages name its units."""
        return f"{self.unit.entity}:{self.unit.scope}"


def job_lock(run_id: int, fetch_id: int, lanes: int) -> str:
    """The job's procrastinate lock: one of the run's `lanes` (its budget's requests in flight).

    procrastinate runs the jobs of one lock one at a time, in the order they were queued, so at
    most `lanes` units of a run (of an account: one token) run at once, across every worker. A
    worker's places never fill with units that would only wait for their token's budget while
    another account's units, with budget to spare, wait for a place."""
    return f"{_lane_prefix(run_id)}{fetch_id % max(1, lanes)}"


def _lane_prefix(run_id: int) -> str:
    return f"syncsvc:run-{run_id}:"


async def enqueue(
    conn: AsyncConnection, run_id: int, units: Sequence[QueuedUnit], lanes: int
) -> list[int]:
    """In the caller's transaction: one pending fetch row and one job per unit (on one of the
    run's `lanes`, see `job_lock`); the fetch ids."""
    if not units:
        return []
    rows = (
        await conn.execute(
            sa.text(INSERT_UNIT),
            {
                "run_id": run_id,
                "units": json.dumps(
                    [
                        {
                            "resource": u.resource,
                            "entity": u.entity,
                            "scope": u.scope,
                            "details": u.details(),
                        }
                        for u in units
                    ]
                ),
            },
        )
    ).all()
    ids = [int(r.id) for r in rows]
    jobs = [
        {
            "lock": job_lock(run_id, fetch_id, lanes),
            "args": {"run_id": run_id, "fetch_id": fetch_id},
        }
        for fetch_id in ids
    ]
    await conn.execute(sa.text(DEFER), {"queue": QUEUE, "task": TASK, "jobs": json.dumps(jobs)})
    return ids


@guarded("could not queue the run's units")
async def enqueue_units(
    engine: AsyncEngine, run_id: int, units: Sequence[QueuedUnit], lanes: int
) -> list[int]:
    async with engine.begin() as conn:
        return await enqueue(conn, run_id, units, lanes)


@guarded("could not queue the units replacing a refused event=all unit")
async def supersede(
    engine: AsyncEngine,
    run_id: int,
    fetch_id: int,
    replacements: Sequence[QueuedUnit],
    lanes: int,
) -> list[int]:
    """A failed `event=all` unit becomes `superseded` and its per-event units are queued, in one
    transaction: the run's close never sees the unit closed and its replacements not yet there."""
    async with engine.begin() as conn:
        await conn.execute(
            sa.text(
                "UPDATE fetches SET status = 'superseded', finished_at = now()"
                " WHERE id = :id AND status IN ('pending', 'running', 'failed')"
            ),
            {"id": fetch_id},
        )
        return await enqueue(conn, run_id, replacements, lanes)


# A lane left with no unit takes the last one of the run's lane with the most waiting (its lock
# moved before any worker took it). Lanes are assigned when the plan is queued, blind to the
# units' sizes: one lane can draw an account's big events and the other its small ones (measured:
# an account's second lane ending 2 s after its first, in an 18 s run). The lane stays
# exclusive, so at most `lanes` units of the run still run at once; SKIP LOCKED leaves a job that
# a worker is taking, or another lane is moving, where it is. (It reads the queue's waiting jobs,
# which no index narrows to one run: fine for the thousands a plan queues, not for millions.)
REBALANCE = """
WITH busiest AS (
    SELECT lock FROM procrastinate_jobs
    WHERE queue_name = :queue AND lock LIKE :run_lanes AND lock <> :lane AND status = 'todo'
      AND (scheduled_at IS NULL OR scheduled_at <= now())
      AND NOT EXISTS (SELECT FROM procrastinate_jobs m WHERE m.lock = :lane AND m.status = 'todo')
    GROUP BY lock
    -- A lane's only waiting job with nothing running before it starts as soon as a worker
    -- looks: moved behind this lane's own job, it would wait for that one (or, were this worker
    -- to die first, for the stall).
    HAVING count(*) > 1 OR EXISTS (SELECT FROM procrastinate_jobs d
                                   WHERE d.lock = procrastinate_jobs.lock AND d.status = 'doing')
    ORDER BY count(*) DESC, lock
    LIMIT 1
), last AS (
    SELECT j.id FROM procrastinate_jobs j JOIN busiest b ON j.lock = b.lock
    WHERE j.status = 'todo' AND (j.scheduled_at IS NULL OR j.scheduled_at <= now())
    ORDER BY j.id DESC
    LIMIT 1
    FOR UPDATE OF j SKIP LOCKED
)
UPDATE procrastinate_jobs j SET lock = :lane FROM last
WHERE j.id = last.id AND j.status = 'todo'
RETURNING j.id
"""


@guarded("could not rebalance the run's lanes")
async def rebalance(engine: AsyncEngine, run_id: int, lane: str | None) -> int | None:
    """When `lane` (the lock of the job that just ran a unit of the run) has no unit waiting,
    move the last waiting unit of the run's busiest lane to it; the job moved, or None."""
    prefix = _lane_prefix(run_id)
    if lane is None or not lane.startswith(prefix):
        return None  # not one of this run's lanes (a job queued another way)
    async with autocommit(engine) as conn:
        moved = await conn.scalar(
            sa.text(REBALANCE), {"queue": QUEUE, "run_lanes": prefix + "%", "lane": lane}
        )
    return int(moved) if moved is not None else None


@guarded("could not claim the unit")
async def claim(engine: AsyncEngine, fetch_id: int, worker: str) -> Claim | None:
    """Mark the unit `running` for `worker` (recorded on the row, with the attempt's number);
    None when it is already closed (an earlier attempt committed it, or its run closed it)."""
    async with autocommit(engine) as conn:
        row = (await conn.execute(sa.text(CLAIM), {"fetch_id": fetch_id, "worker": worker})).first()
        if row is None:
            return None
    unit = QueuedUnit.from_row(row.resource, row.entity, row.scope, row.details)
    return Claim(
        run_id=int(row.run_id),
        account=str(row.account),
        unit=unit,
        run_running=row.run_status == "running",
        options=dict(row.options or {}),
    )


@dataclass(frozen=True, slots=True)
class Progress:
    """A queued run as its planner watches it: its status, how many of its units are still
    open, and its units not yet reported (ids not in `seen`; the final ones only, unless asked
    for the open ones too), in id order."""

    status: str
    error_message: str | None
    still_open: int
    units: list[UnitRow]


@guarded("could not read the run's units")
async def progress(
    engine: AsyncEngine, run_id: int, seen: Collection[int], *, with_open: bool = False
) -> Progress | None:
    """One statement, no transaction: read when the run's watch saw it move."""
    params = {
        "run_id": run_id,
        "seen": list(seen),
        "open": OPEN,
        "with_open": with_open,
    }
    async with autocommit(engine) as conn:
        rows = (await conn.execute(PROGRESS, params)).all()
    if not rows:
        return None
    return Progress(
        str(rows[0].run_status),
        rows[0].run_error,
        int(rows[0].still_open),
        _unit_rows(r for r in rows if r.id is not None),
    )


def _unit_rows(result: Iterable[Any]) -> list[UnitRow]:
    return [
        UnitRow(
            int(r.id),
            QueuedUnit.from_row(r.resource, r.entity, r.scope, r.details),
            str(r.status),
            r.error_message,
            int(r.records),
            int(r.bytes),
        )
        for r in result
    ]


class RunWatch:
    """Every queued run one process waits on, watched in one statement per interval.

    A planner waits on each account's run until its last unit closes it. Asking per run meant
    40 statements a second for 20 accounts, and on a busy 2-core machine the planner spent a
    quarter of the runs' span on them, beside the workers it waits for (docs/task-queue.md).
    Now one statement reads every watched run's status and count of final units; a run whose
    mark moved has its event set, and only its waiter reads its units."""

    def __init__(self, engine: AsyncEngine, interval: float) -> None:
        # Weakly: the process's watches are kept per engine, and must not keep theirs alive.
        self._engine = weakref.ref(engine)
        self.interval = interval
        self._events: dict[int, asyncio.Event] = {}
        self._marks: dict[int, tuple[str, int] | None] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._task: asyncio.Task[None] | None = None

    def changed(self, run_id: int) -> asyncio.Event:
        """The run's event: set once its status or its count of final units has moved since
        the waiter last cleared it (and when a watch's read fails: the waiter's own read meets
        the error and reports it)."""
        loop = asyncio.get_running_loop()
        if self._loop is not loop:  # a new event loop (one per `asyncio.run`): start afresh
            self._events.clear()
            self._marks.clear()
            self._loop, self._task = loop, None
        event = self._events.setdefault(run_id, asyncio.Event())
        if self._task is None or self._task.done():
            self._task = loop.create_task(self._watch(), name="run-watch")
        return event

    def forget(self, run_id: int) -> None:
        self._events.pop(run_id, None)
        self._marks.pop(run_id, None)

    async def _watch(self) -> None:
        while self._events:
            await asyncio.sleep(self.interval)
            ids = list(self._events)
            try:
                marks = await self._look(ids)
            except LookupError:  # the engine is gone
                return
            for run_id in ids:
                if run_id not in self._events:  # forgotten while the look was out
                    continue
                mark = None if marks is None else marks.get(run_id)
                if marks is None or mark != self._marks.get(run_id, ()):
                    self._marks[run_id] = mark
                    if (event := self._events.get(run_id)) is not None:
                        event.set()

    async def _look(self, ids: list[int]) -> dict[int, tuple[str, int]] | None:
        """run id -> (status, final units); None when the read failed."""
        engine = self._engine()
        if engine is None:
            raise LookupError("engine")
        try:
            async with autocommit(engine) as conn:
                rows = await conn.execute(MARKS, {"ids": ids, "open": OPEN})
                return {int(r.id): (str(r.status), int(r.final)) for r in rows}
        except Exception:  # told to the waiters: their own read meets it and reports it
            return None


_WATCHES: weakref.WeakKeyDictionary[AsyncEngine, RunWatch] = weakref.WeakKeyDictionary()


def watch(engine: AsyncEngine, interval: float) -> RunWatch:
    """The process's watch over the queued runs on `engine`."""
    found = _WATCHES.get(engine)
    if found is None:
        found = _WATCHES[engine] = RunWatch(engine, interval)
    return found


class RunClose(list[UnitRow]):
    """A running run's units, read under its row's lock, and the close of the run in the same
    transaction."""

    def __init__(self, conn: AsyncConnection, run_id: int, units: list[UnitRow]) -> None:
        super().__init__(units)
        self.conn = conn
        self.run_id = run_id

    async def close(self, status: str, error_message: str | None) -> None:
        await runs.finish_in(self.conn, self.run_id, status=status, error_message=error_message)


@guarded("could not read the run's units")
async def any_open(engine: AsyncEngine, run_id: int) -> bool:
    """Whether a unit of the run is still open: one statement, no lock."""
    async with autocommit(engine) as conn:
        return bool(await conn.scalar(ANY_OPEN, {"run_id": run_id, "open": OPEN}))


@contextlib.asynccontextmanager
async def closing(engine: AsyncEngine, run_id: int) -> AsyncIterator[RunClose | None]:
    """The run's row locked and its units, or None when it is no longer `running`."""
    with boundary("could not close the run"):
        async with engine.begin() as conn:
            status = await conn.scalar(LOCK_RUN, {"run_id": run_id})
            if status != "running":
                yield None
                return
            units = _unit_rows(await conn.execute(UNIT_ROWS, {"run_id": run_id}))
            yield RunClose(conn, run_id, units)


def queue_schema() -> str | None:
    """procrastinate's schema SQL, or None when the queue extra is not installed."""
    try:
        from procrastinate.schema import SchemaManager
    except ImportError:
        return None
    return str(SchemaManager.get_schema())


@guarded("could not apply the task queue's schema")
async def apply_queue_schema(engine: AsyncEngine) -> bool:
    """Create procrastinate's tables and functions when absent; True if this call created them.
    Its upgrades are procrastinate's own migrations (docs/task-queue.md)."""
    sql = queue_schema()
    if sql is None:
        return False
    async with engine.begin() as conn:
        # One upgrade at a time: two replicas' init containers must not both create it.
        await conn.execute(sa.text("SELECT pg_advisory_xact_lock(hashtext('syncsvc.queue'))"))
        if await conn.scalar(sa.text(f"SELECT to_regclass('{JOBS_TABLE}')")) is not None:
            return False
        raw = await raw_connection(conn)
        await raw.execute(sql)  # many statements: asyncpg's simple protocol
    return True


@guarded("could not check the task queue's schema")
async def require_queue_schema(engine: AsyncEngine) -> None:
    from syncsvc.errors import ConfigError

    async with engine.connect() as conn:
        present = await conn.scalar(sa.text(f"SELECT to_regclass('{JOBS_TABLE}')"))
    if present is None:
        raise ConfigError(
            "the database has no task queue schema: run `syncsvc db upgrade` with the queue"
            " extra installed",
            setting="executor",
        )
