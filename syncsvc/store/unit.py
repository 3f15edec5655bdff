"""One unit of work into PostgreSQL: stage a dump with COPY, diff it, apply it, in one transaction.

The scheduler's API::

    run_id = await create_run(engine, environment=settings.environment, api_host=host)
    fetch_id = await create_fetch(engine, run_id=run_id, resource=USERS, scope="all")
    async with UnitWriter(engine, run_id=run_id, fetch_id=fetch_id,
                          resource=USERS, scope="all") as unit:
        fetched = await client.fetch(USERS, "all", parse.consumer(USERS, unit.stage, encoded=True))
        result = await unit.apply(
            complete=True,                    # the client's iterator ended normally
            covered_events=event_guids,       # scope "all": the events event.do listed
            hold=HoldPolicy.from_settings(settings),
            override_hold=settings_or_cli_override,
        )
    await finish_fetch(engine, fetch_id, status=result.status, attempts=fetched.attempts, ...)
    # result: inserted/updated/deleted/rekeyed, held (per event), rejected, duplicates, seqs

- `UnitWriter.begin()` (called by the first `stage` or `apply`, so a unit holds no connection
  while it waits for its budget or its server's first bytes) checks a connection out of the
  engine, opens the unit's transaction on its asyncpg driver connection and reads the unit's
  account: its run's (`runs.account`); every statement of the unit is that account's (the
  diff's scope, deletes, rekeys, holds, changes).
  `__aexit__` rolls back anything not applied (an exception, a cancelled task, a fetch that never
  completed).
- `stage(batches)` is the parse's sink (batches: an async iterable of EncodedBatch staging rows,
  or of lists of records as `unit.normalize` returns them). It (re)creates the temporary staging
  table (ON COMMIT DROP), truncates it when called again (a retried fetch starts over) and streams
  the records into it with one COPY under a savepoint, so memory stays flat and a dump failing
  half-way leaves the transaction usable. Records without their key (or, in a per-event unit, of
  another event) are counted as rejected, never staged. Returns a StageResult.
- `apply(...)` refuses (IncompleteDumpError, nothing applied) unless `complete=True`. Then, in the
  same transaction, one method per step (the steps `fetches.details.step_seconds` times):
  `_dedupe` drops duplicate keys (last wins, counted), `_lock_scope` takes the scope's advisory
  locks, `_diff` diffs the staged rows against the scope's current rows, `_pair_rekeys` turns
  clientID moves into `rekey`s, `_decide_holds` holds the scopes that would delete more than the
  hold allows (nothing of theirs is applied; `override_hold=True` applies them; the decision
  itself is `store.hold.decide_holds`, pure), `_apply_state` updates the current-state table
  (soft delete, upsert), `_emit_changes` checks the fence, then numbers the change rows under a
  transaction-level advisory lock held until commit, so seq order is commit order (and the feed's
  NOTIFY goes with them; a unit with no change row takes no seq and not the lock), and `_commit`
  writes the fetch row's counts and commits. The SQL is `store.queries`, in this order.
- A first load (the scope holds no row at all, checked under its locks, so exactly) skips the
  diff: `_load_state` writes the state rows and `_emit_changes` the change rows straight from
  the stage (`queries.load_state`, `load_changes`), the very rows the diff would have written
  (every distinct staged row is an insert; no rekey, delete or hold is possible). The steps
  between pass at once, so a checkpoint sees the same sequence. `ApplyResult.first_load` says so.
- A unit's scope (`syncsvc.scope.Scope`, or the shorthand: a GUID, or "all"): one event; every
  event present in the dump plus `covered_events` (events the dump speaks for even when it holds
  none of their records: all their live rows are deleted, or held); for event.do, the whole
  account ('*'). Without `covered_events`, an event=all unit never deletes an event that is
  absent from its dump.
- Database and OS errors leave as StoreError (`store.boundary`), never a driver's exception.
- `apply_records(...)` stages an iterable of records as one complete dump and applies it.
- `checkpoint` (tests only) is called with each step's name (STEPS); a test kills the process or
  pauses the unit there.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any

import asyncpg
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from syncsvc.catalog import Resource, resolve
from syncsvc.errors import IncompleteDumpError, RunFencedError, StoreError, UnitClosedError
from syncsvc.logs import get_logger
from syncsvc.normalize import Normalizer, normalizer
from syncsvc.parse.segments import EncodedBatch, staging_line
from syncsvc.records import Record, codec
from syncsvc.scope import ACCOUNT_NAME, Scope
from syncsvc.store import queries
from syncsvc.store.boundary import DB_ERRORS, boundary
from syncsvc.store.db import raw_connection
from syncsvc.store.hold import HeldScope as HeldScope  # part of this module's API (ApplyResult)
from syncsvc.store.hold import HoldDecision, ScopeDiff, decide_holds
from syncsvc.store.hold import HoldPolicy as HoldPolicy  # part of this module's API (apply)

log = get_logger(__name__)


DEFAULT_BATCH_ROWS = 10_000

# What staging translates: the database's errors. An OSError raised by the batches (the fetch
# reading its body) passes unchanged: the client's retry policy judges it.
_COPY_ERRORS = (asyncpg.PostgresError, asyncpg.InterfaceError)

# The steps a unit passes, in order (rekeys_paired: entities with clientID only).
STEPS = (
    "begun",
    "staging_ready",
    "batch_staged",
    "staged",
    "deduped",
    "scope_locked",
    "diffed",
    "rekeys_paired",
    "hold_checked",
    "state_deleted",
    "state_upserted",
    "seq_locked",
    "changes_inserted",
    "before_commit",
    "committed",
)

# Test hook: called with each step's name (may return an awaitable to pause the unit there).
Checkpoint = Callable[[str], Awaitable[None] | None]


@dataclass(frozen=True, slots=True)
class StageResult:
    """What one staging attempt took in (the client's FetchResult.value)."""

    records: int  # staged, duplicates included
    rejected: int  # without their key (or outside the unit's event), never staged
    events: tuple[str, ...]  # event GUIDs present in the dump
    unidentified: int = 0  # of `rejected`: without their key or eventGUID


@dataclass(frozen=True, slots=True)
class ApplyResult:
    """What a unit applied, and what it held."""

    status: str  # "applied" | "held" (at least one scope held, override not given)
    records: int  # distinct records in the dump
    rejected: int
    duplicates: int  # extra copies of a key dropped (last wins)
    inserted: int = 0
    updated: int = 0
    deleted: int = 0
    rekeyed: int = 0
    held: tuple[HeldScope, ...] = ()  # not applied
    overridden: tuple[HeldScope, ...] = ()  # would have been held; applied by override
    first_seq: int | None = None
    last_seq: int | None = None
    unidentified: int = 0  # records without their key or eventGUID (in `rejected`)
    oversized: int = 0  # records whose keys are too long to store (in `rejected`)
    deletes_suppressed: int = 0  # deletes not applied because some records were unidentified
    stage_seconds: float = 0.0
    apply_seconds: float = 0.0
    scope_events: tuple[str, ...] = field(default=())
    first_load: bool = False  # the scope held no row: written straight from the stage

    @property
    def changes(self) -> int:
        return self.inserted + self.updated + self.deleted + self.rekeyed


@dataclass(slots=True)
class _StageCounts:
    staged: int = 0
    rejected: int = 0
    unidentified: int = 0


class UnitWriter:
    """Stage, diff and apply one unit (resource, scope) in one transaction. See the module doc."""

    def __init__(
        self,
        engine: AsyncEngine,
        *,
        run_id: int,
        resource: Resource | str,
        scope: Scope | str,
        fetch_id: int | None = None,
        batch_rows: int = DEFAULT_BATCH_ROWS,
        checkpoint: Checkpoint | None = None,
    ) -> None:
        self.resource = resolve(resource)
        self.scope = Scope.parse(scope) if isinstance(scope, str) else scope
        if not self.resource.per_event and self.scope.only is not None:
            raise ValueError("event.do units have scope 'all' (the whole account)")
        self.engine = engine
        self.run_id = run_id
        self.fetch_id = fetch_id
        self.batch_rows = batch_rows
        self.normalize: Normalizer = normalizer(self.resource)
        self._sql = queries.statements(self.resource)
        self._checkpoint = checkpoint
        self.account = ""  # the run's, read when the unit begins
        self._conn: AsyncConnection | None = None
        self._raw: Any = None
        self._tx: Any = None
        self._staged = False
        self._done = False
        self._records = 0
        self._rejected = 0
        self._unidentified = 0
        self._events: dict[str, int] = {}
        self._stage_seconds = 0.0
        self._timings: dict[str, float] = {}
        self._last_step = time.perf_counter()
        fields = self.resource.fields
        self._guid_at = fields.index(self.resource.field("eventGUID"))
        self._key_at = fields.index(self.resource.key_field)
        self._codec = codec(self.resource)

    # --- lifecycle -------------------------------------------------------------------------------

    async def __aenter__(self) -> UnitWriter:
        # Nothing yet: the transaction begins with the dump's first bytes (`begin`), so a unit
        # waiting for its token's budget or for a slow server holds no connection (a planner of
        # many accounts, or a worker with many units in flight, would run out of them).
        return self

    async def begin(self) -> None:
        """Check a connection out and open the unit's transaction (idempotent; `stage` and
        `apply` call it)."""
        if self._tx is not None:
            return
        with boundary(f"{self.resource.entity} unit could not begin", resource=self.resource.path):
            for attempt in (1, 2):
                self._conn = await self.engine.connect()
                try:
                    self._raw = await raw_connection(self._conn)
                    # READ COMMITTED whatever the server's default: the seq and scope locks rely
                    # on each statement seeing what committed before the lock was granted.
                    tx = self._raw.transaction(isolation="read_committed")
                    await tx.start()
                    self._tx = tx
                    break
                except (asyncpg.InterfaceError, OSError):
                    # A pooled connection whose backend died (terminated, restarted, a
                    # failover): drop it and take a fresh one, once.
                    await self._conn.invalidate()
                    await self._conn.close()
                    self._conn = None
                    if attempt == 2:
                        raise
                except BaseException:
                    # Interrupted (a cancelled task) with BEGIN in flight: asyncpg still counts
                    # the transaction open on this connection and the pool's reset does not end
                    # it, so every later user's transaction would nest in it, never committed.
                    await self._conn.invalidate()
                    await self._conn.close()
                    self._conn = None
                    raise
        account = await self._fetch(queries.BEGUN, self.run_id)
        if not account:
            raise StoreError(f"run {self.run_id} does not exist", resource=self.resource.path)
        self.account = str(account[0]["account"])
        await self._step("begun")

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        try:
            if not self._done and self._tx is not None:
                try:
                    await self._tx.rollback()
                except BaseException as exc:
                    # The server rolls back on its own when the connection ends; never hand a
                    # connection in an unknown state back to the pool (a rollback cut short by
                    # a second cancellation leaves the transaction open under asyncpg's feet).
                    if self._conn is not None:
                        await self._conn.invalidate()
                    if not isinstance(exc, DB_ERRORS):
                        raise
                    log.warning("unit_rollback_failed", resource=self.resource.path)
        finally:
            if self._conn is not None:
                await self._conn.close()

    def _mark(self, name: str) -> None:
        # Seconds from the previous mark to this one: the fetch row keeps them, so a slow unit
        # shows which statement it spent its time in.
        now = time.perf_counter()
        self._timings[name] = round(now - self._last_step, 3)
        self._last_step = now

    async def _step(self, name: str) -> None:
        if name != "batch_staged":
            self._mark(name)
        if self._checkpoint is not None:
            pending = self._checkpoint(name)
            if pending is not None:
                await pending

    async def _execute(self, sql: str, *args: Any) -> str:
        with boundary(f"{self.resource.entity} unit failed", resource=self.resource.path):
            status: str = await self._raw.execute(sql, *args)
        return status

    async def _fetch(self, sql: str, *args: Any) -> list[Any]:
        with boundary(f"{self.resource.entity} unit failed", resource=self.resource.path):
            rows: list[Any] = await self._raw.fetch(sql, *args)
        return rows

    # --- stage -----------------------------------------------------------------------------------

    async def _prepare_staging(self) -> None:
        if self._done:
            raise StoreError("this unit is already applied", resource=self.resource.path)
        await self.begin()
        await self._execute(self._sql.create_stage)
        if self._staged:
            await self._execute(self._sql.truncate_stage)
        self._staged = True
        self._records = self._rejected = self._unidentified = 0
        self._events = {}
        await self._step("staging_ready")

    async def stage(self, batches: AsyncIterable[Sequence[Record | None]]) -> StageResult:
        """Stage a whole dump (a client sink); calling it again starts over.

        One COPY streams the whole dump, so the server stores rows while this process still
        parses the next ones; asyncpg flushes its buffer every few hundred kB, so memory stays
        flat. The COPY runs under a savepoint: when the dump fails half-way (the client will
        retry), the savepoint is rolled back and the unit's transaction lives on.
        """
        started = time.perf_counter()
        await self._prepare_staging()
        counts = _StageCounts()
        with boundary(
            f"staging {self.resource.entity} records failed",
            errors=_COPY_ERRORS,
            resource=self.resource.path,
        ):
            savepoint = self._raw.transaction()
            await savepoint.start()
            try:
                await self._raw.copy_to_table(
                    queries.STAGE,
                    source=self._rows(batches, counts),
                    columns=self._sql.stage_columns,
                    format="text",
                )
            except BaseException:
                with contextlib.suppress(*DB_ERRORS):
                    await savepoint.rollback()
                raise
            await savepoint.commit()
        self._records = counts.staged
        self._rejected = counts.rejected
        self._unidentified = counts.unidentified
        self._stage_seconds = time.perf_counter() - started
        if counts.rejected:
            log.warning(
                "records_rejected",
                resource=self.resource.path,
                scope=str(self.scope),
                rejected=counts.rejected,
                reason="missing key or eventGUID, or outside the unit's event",
            )
        await self._step("staged")
        return StageResult(
            records=counts.staged,
            rejected=counts.rejected,
            events=tuple(self._events),
            unidentified=counts.unidentified,
        )

    async def _rows(
        self, batches: AsyncIterable[Sequence[Record | None] | EncodedBatch], counts: _StageCounts
    ) -> AsyncIterator[bytes]:
        """COPY text from batches: records (rendered here) or EncodedBatch (rendered by a parse
        worker); rejects counted, `ord` in document order, `kh` for the dedupe."""
        only = self.scope.only
        guid_at, key_at = self._guid_at, self._key_at
        events = self._events
        data_line = self._codec.data_line
        ordinal = 0
        async for batch in batches:
            if isinstance(batch, EncodedBatch):
                if batch.only != only:
                    raise StoreError(
                        "a batch was parsed for another scope", resource=self.resource.path
                    )
                counts.rejected += batch.rejected
                counts.unidentified += batch.unidentified
                counts.staged += batch.staged
                for event, n in batch.events.items():
                    events[event] = events.get(event, 0) + n
                yield batch.data
                await self._step("batch_staged")
                continue
            lines = []
            for record in batch:
                if record is None:
                    counts.rejected += 1
                    counts.unidentified += 1
                    continue
                guid: Any = record[guid_at]
                key: Any = record[key_at]
                if guid is None or key is None:
                    counts.rejected += 1
                    counts.unidentified += 1
                    continue
                if only is not None and guid != only:
                    counts.rejected += 1
                    continue
                events[guid] = events.get(guid, 0) + 1
                ordinal += 1
                line = data_line(record[:-1])
                lines.append(staging_line(line, record[-1], ordinal, guid, key))
            counts.staged += len(lines)
            yield "".join(lines).encode()
            await self._step("batch_staged")

    async def stage_records(self, records: Iterable[Record]) -> StageResult:
        """Stage records from a plain iterable (tests, benchmarks): `stage` in batches."""
        batch_rows = self.batch_rows

        async def batches() -> Any:
            batch: list[Record] = []
            for r in records:
                batch.append(r)
                if len(batch) >= batch_rows:
                    yield batch
                    batch = []
            if batch:
                yield batch

        return await self.stage(batches())

    # --- diff + apply: the steps, in order ----------------------------------------------------

    async def apply(
        self,
        *,
        complete: bool,
        covered_events: Iterable[str] | None = None,
        hold: HoldPolicy | None = None,
        override_hold: bool = False,
        transport: dict[str, Any] | None = None,
    ) -> ApplyResult:
        """Diff the staged dump against the current state and apply it; commit. See module doc.

        `transport`: the fetch's figures (attempts, http_status, bytes, fetch_seconds), written
        on the fetch row in this transaction, so a run's totals are exactly its committed units'.
        """
        await self._refuse_unless(complete)
        await self.begin()
        started = time.perf_counter()
        hold = hold or HoldPolicy()
        if not self._staged:
            await self._prepare_staging()  # an empty dump: everything in scope is gone
        scope_events = self._scope_events(covered_events)
        dups = await self._dedupe()
        await self._lock_scope(scope_events)
        first_load = not await self._scope_has_rows(scope_events)
        if first_load:
            n_oversized, counts = await self._load_state(sum(dups.values()))
            decision, suppressed = HoldDecision(), 0  # nothing to delete
            seqs = await self._emit_changes(self._sql.load_changes, sum(counts.values()))
        elif await self._diff_keys(scope_events):
            oversized, suppressed = await self._diff()
            if self.resource.has_client_id:
                await self._pair_rekeys()
            decision = await self._decide_holds(hold, override_hold, dups, oversized)
            counts = await self._apply_state()
            seqs = await self._emit_changes(self._sql.insert_changes, sum(counts.values()))
            n_oversized = sum(oversized.values())
        else:
            # Not one staged or current row differs (most units of a quiet night): the diff
            # table, the rekeys, the hold's counts and the state's writes would all be empty,
            # so their statements are not sent; their steps pass, in the usual order.
            for step in ("diffed", "rekeys_paired", "hold_checked", "state_deleted"):
                if step != "rekeys_paired" or self.resource.has_client_id:
                    await self._step(step)
            await self._step("state_upserted")
            n_oversized, suppressed, counts = 0, 0, {}
            decision = decide_holds(hold, [], override=override_hold)
            seqs = await self._emit_changes(self._sql.insert_changes, 0)
        duplicates = sum(dups.values())
        result = ApplyResult(
            status="held" if decision.held else "applied",
            records=self._records - duplicates - n_oversized,
            rejected=self._rejected + n_oversized,
            duplicates=duplicates,
            inserted=counts.get("insert", 0),
            updated=counts.get("update", 0),
            deleted=counts.get("delete", 0),
            rekeyed=counts.get("rekey", 0),
            held=decision.held,
            overridden=decision.overridden,
            first_seq=seqs["first_seq"],
            last_seq=seqs["last_seq"],
            unidentified=self._unidentified,
            oversized=n_oversized,
            deletes_suppressed=suppressed,
            stage_seconds=self._stage_seconds,
            apply_seconds=time.perf_counter() - started,
            scope_events=tuple(scope_events),
            first_load=first_load,
        )
        await self._commit(result, hold, transport or {})
        log.info(
            "unit_applied",
            resource=self.resource.path,
            scope=str(self.scope),
            status=result.status,
            inserted=result.inserted,
            updated=result.updated,
            deleted=result.deleted,
            rekeyed=result.rekeyed,
            held=len(result.held),
            first_load=first_load,
            apply_seconds=round(result.apply_seconds, 3),
        )
        return result

    async def _refuse_unless(self, complete: bool) -> None:
        if self._done:
            raise StoreError("this unit is already applied", resource=self.resource.path)
        if not complete:
            if self._tx is not None:
                await self._tx.rollback()
            self._done = True
            raise IncompleteDumpError(
                "apply refused: the dump is not complete; nothing applied",
                resource=self.resource.path,
                event_guid=self.scope.only,
            )

    def _scope_events(self, covered_events: Iterable[str] | None) -> list[str]:
        if not self.resource.per_event:
            return []
        if self.scope.only is not None:
            return [self.scope.only]
        return sorted(set(self._events) | set(covered_events or ()))

    async def _dedupe(self) -> dict[str, int]:
        """Drop duplicate keys (last one wins); the copies dropped, per event."""
        rows = await self._fetch(self._sql.dedupe_stage)
        dups = {r["event_guid"]: int(r["duplicates"]) for r in rows}
        if duplicates := sum(dups.values()):
            log.warning(
                "duplicate_keys_found",
                resource=self.resource.path,
                scope=str(self.scope),
                duplicates=duplicates,
                kept="last",
            )
        await self._step("deduped")
        return dups

    async def _lock_scope(self, scope_events: list[str]) -> None:
        await self._execute(self._sql.lock_scope, scope_events or [ACCOUNT_NAME], self.account)
        await self._step("scope_locked")

    async def _scope_has_rows(self, scope_events: list[str]) -> bool:
        """Whether the scope holds any row, deleted ones too (exact: under the scope's locks)."""
        args = (scope_events, self.account) if self.resource.per_event else (self.account,)
        await self._execute(queries.SEQSCAN_OFF)
        (row,) = await self._fetch(self._sql.scope_has_rows, *args)
        await self._execute(queries.SEQSCAN_ON)
        self._mark("scope_checked")
        return bool(row["found"])

    async def _load_state(self, duplicates: int) -> tuple[int, dict[str, int]]:
        """The first load: the state rows straight from the stage; (keys too long, changes).

        Every distinct staged row is an insert, so the diff table, the rekey pairing and the hold
        have nothing to do; their steps pass at once, so a checkpoint sees the usual sequence."""
        for step in ("diffed", "rekeys_paired", "hold_checked", "state_deleted"):
            if step != "rekeys_paired" or self.resource.has_client_id:
                await self._step(step)
        status = await self._execute(self._sql.load_state, self.run_id, self.account)
        inserted = int(status.split()[-1])
        # The rows left out are those whose keys are too long to store (counted like the diff's).
        oversized = self._records - duplicates - inserted
        self._log_oversized(oversized)
        await self._step("state_upserted")
        return oversized, {"insert": inserted} if inserted else {}

    def _log_oversized(self, n: int) -> None:
        if n:
            log.warning(
                "records_rejected",
                resource=self.resource.path,
                scope=str(self.scope),
                rejected=n,
                reason=f"a key (event GUID, {self.resource.key_field.api} or clientID) longer"
                f" than {queries.MAX_KEY_BYTES} bytes cannot be stored",
            )

    async def _diff_keys(self, scope_events: list[str]) -> bool:
        """The keys of the rows that differ (or are too long to store); whether there is one."""
        args = (scope_events, self.account) if self.resource.per_event else (self.account,)
        status = await self._execute(self._sql.diff_keys, *args)
        self._mark("diff_keys")
        return int(status.split()[-1]) > 0

    async def _diff(self) -> tuple[dict[str, int], int]:
        """Fill the diff table; (keys too long to store, per event; deletes suppressed)."""
        sql = self._sql
        oversized = {
            r["event_guid"]: int(r["rejected"]) for r in await self._fetch(sql.take_rejects)
        }
        self._log_oversized(sum(oversized.values()))
        await self._execute(sql.diff)
        self._mark("diff_rows")
        suppressed = 0
        if self._unidentified:
            status = await self._execute(sql.suppress_deletes)
            suppressed = int(status.split()[-1])
            log.warning(
                "deletes_suppressed",
                resource=self.resource.path,
                scope=str(self.scope),
                unidentified=self._unidentified,
                deletes=suppressed,
            )
        await self._execute(sql.analyze_diff)
        await self._step("diffed")
        return oversized, suppressed

    async def _pair_rekeys(self) -> None:
        await self._execute(queries.NESTLOOP_OFF)
        await self._execute(self._sql.pair_rekeys)
        await self._execute(queries.NESTLOOP_ON)
        await self._step("rekeys_paired")

    async def _decide_holds(
        self, hold: HoldPolicy, override: bool, dups: dict[str, int], oversized: dict[str, int]
    ) -> HoldDecision:
        """Hold the scopes that would lose too much (their rows leave the diff), or override."""
        if self.resource.per_event:
            staged = {e: n - dups.get(e, 0) - oversized.get(e, 0) for e, n in self._events.items()}
        else:
            dropped = sum(dups.values()) + sum(oversized.values())
            staged = {ACCOUNT_NAME: self._records - dropped}
        scopes = [
            ScopeDiff(
                r["event_guid"],
                staged.get(r["event_guid"], 0),
                int(r["inserts"]),
                int(r["deletes"]),
            )
            for r in await self._fetch(self._sql.diff_counts)
        ]
        decision = decide_holds(hold, scopes, override=override)
        if decision.held:
            await self._execute(self._sql.drop_held, [h.event_guid for h in decision.held])
        for h in decision.held:
            log.warning(
                "mass_delete_held",
                resource=self.resource.path,
                event_guid=h.event_guid,
                live=h.live,
                deletes=h.deletes,
                share=round(h.deletes / h.live, 3),
                threshold=hold.ratio,
            )
        await self._step("hold_checked")
        return decision

    async def _apply_state(self) -> dict[str, int]:
        """The current-state table from the diff (soft deletes, then upserts); changes per op."""
        sql = self._sql
        counts = {r["op"]: int(r["count"]) for r in await self._fetch(sql.count_changes)}
        self._mark("counted")
        await self._execute(sql.soft_delete_state, self.run_id)
        await self._step("state_deleted")
        await self._execute(sql.upsert_state, self.run_id, self.account)
        await self._step("state_upserted")
        return counts

    async def _emit_changes(self, insert_changes: str, changes: int) -> Any:
        """The `changes` change rows (`insert_changes` or, on a first load, `load_changes`),
        numbered under the seq lock; (first_seq, last_seq)."""
        # The fence first: its row locks are held to commit all the same, and the seq lock,
        # which every unit of every account waits for, is then held for as few statements as
        # can be (the insert with its NOTIFY, the fetch row, the commit).
        await self._check_fence()
        if not changes:
            # No seq to number, so no order to keep: a unit that found nothing changed (most
            # units of a quiet night) commits without queueing behind every other unit's commit.
            # The counts are the insert's own rows (the same filter, after the holds).
            await self._step("seq_locked")
            await self._step("changes_inserted")
            return {"first_seq": None, "last_seq": None}
        # Only now take the seq lock: it is held until commit, so seq order is commit order.
        await self._execute(self._sql.lock_seq, queries.SEQ_LOCK_KEY)
        await self._step("seq_locked")
        # The statement also wakes the change feed's followers and webhook deliveries when (and
        # only if) this commits; the payload is the new high seq, never data (docs/change-feed.md).
        (seqs,) = await self._fetch(insert_changes, self.run_id, self.fetch_id, self.account)
        await self._step("changes_inserted")
        return seqs

    async def _commit(
        self, result: ApplyResult, hold: HoldPolicy, transport: dict[str, Any]
    ) -> None:
        # The fence was checked just before the seq lock (`_emit_changes`).
        if self.fetch_id is not None:
            await self._record_fetch(result, hold, transport)
        await self._step("before_commit")
        with boundary(
            f"committing the {self.resource.entity} unit failed", resource=self.resource.path
        ):
            await self._tx.commit()
        self._done = True
        await self._step("committed")

    async def _check_fence(self) -> None:
        """The fence, after the whole download, diff and state writes, before the change rows:
        this run must still be `running`. The run row's lock is held to commit, so a newer run's
        UPDATE to `abandoned` waits for this commit, or this check sees `abandoned` and the unit
        rolls back. The fetch row's lock comes next, as every writer takes them."""
        rows = await self._fetch(self._sql.check_fence, self.run_id)
        if not rows or rows[0]["status"] != "running":
            newer = rows[0]["newer"] if rows else None
            raise RunFencedError(
                run_id=self.run_id,
                superseded_by=int(newer) if newer is not None else None,
                resource=self.resource.path,
            )
        if self.fetch_id is not None:
            rows = await self._fetch(queries.CHECK_UNIT_OPEN, self.fetch_id)
            if rows and rows[0]["status"] not in ("pending", "running"):
                raise UnitClosedError(
                    f"unit {self.fetch_id} was closed ({rows[0]['status']}) before this attempt"
                    " committed; nothing applied",
                    resource=self.resource.path,
                )

    async def _record_fetch(
        self, result: ApplyResult, hold: HoldPolicy, transport: dict[str, Any]
    ) -> None:
        note = None
        if result.deletes_suppressed or result.unidentified:
            note = (
                f"{result.unidentified} record(s) without their key or eventGUID: deletes in"
                f" this unit's scope were not applied ({result.deletes_suppressed} held back)"
            )
        details = {
            "hold": {"ratio": hold.ratio, "min_rows": hold.min_rows},  # what `status` compares to
            "held": [vars_of(h) for h in result.held],
            "overridden": [vars_of(h) for h in result.overridden],
            "scope_events": list(result.scope_events),
            "first_seq": result.first_seq,
            "last_seq": result.last_seq,
            "step_seconds": dict(self._timings),
            "unidentified": result.unidentified,
            "oversized": result.oversized,
            "deletes_suppressed": result.deletes_suppressed,
        }
        await self._execute(
            self._sql.record_fetch,
            self.fetch_id,
            result.status,
            result.records,
            result.rejected,
            result.duplicates,
            result.inserted,
            result.updated,
            result.deleted,
            result.rekeyed,
            result.stage_seconds,
            result.apply_seconds,
            json.dumps(details),
            transport.get("attempts"),
            transport.get("http_status"),
            transport.get("bytes"),
            transport.get("fetch_seconds"),
            note,
        )


def vars_of(h: HeldScope) -> dict[str, Any]:
    return {"event_guid": h.event_guid, "live": h.live, "deletes": h.deletes}


async def apply_records(
    engine: AsyncEngine,
    *,
    run_id: int,
    resource: Resource | str,
    scope: Scope | str,
    records: Iterable[Record],
    fetch_id: int | None = None,
    covered_events: Iterable[str] | None = None,
    hold: HoldPolicy | None = None,
    override_hold: bool = False,
) -> ApplyResult:
    """Stage `records` as one complete dump of (resource, scope) and apply it (tests, tools)."""
    async with UnitWriter(
        engine, run_id=run_id, fetch_id=fetch_id, resource=resource, scope=scope
    ) as unit:
        await unit.stage_records(records)
        return await unit.apply(
            complete=True, covered_events=covered_events, hold=hold, override_hold=override_hold
        )
