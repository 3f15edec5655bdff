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

- `UnitWriter.__aenter__` checks a connection out of the engine and opens the unit's
  transaction on its asyncpg driver connection; `__aexit__` rolls back anything not applied
  (an exception, a cancelled task, a fetch that never completed).
- `stage(batches)` is the parse's sink (batches: an async iterable of EncodedBatch staging rows,
  or of lists of records as `unit.normalize` returns them). It (re)creates the temporary staging
  table (ON COMMIT DROP), truncates it when called again (a retried fetch starts over) and streams
  the records into it with one COPY under a savepoint, so memory stays flat and a dump failing
  half-way leaves the transaction usable. Records without their key (or, in a per-event unit, of
  another event) are counted as rejected, never staged. Returns a StageResult.
- `apply(...)` refuses (IncompleteDumpError, nothing applied) unless `complete=True`. Then, in the
  same transaction: duplicate keys are dropped (last wins, counted), the scope's advisory locks are
  taken, the staged rows are diffed against the scope's current rows, clientID moves become
  `rekey`s, scopes that would delete more than the hold allows are held (nothing of theirs is
  applied; `override_hold=True` applies them), the current-state table is updated (soft delete,
  upsert) and finally, under a transaction-level advisory lock held until commit, the change rows
  get `seq` numbers, so seq order is commit order. The fetch row (if any) gets the counts. Commit.
- A unit's scope: its event GUID; for "all", every event present in the dump plus
  `covered_events` (events the dump speaks for even when it holds none of their records: all
  their live rows are deleted, or held); for event.do, the whole account ('*'). Without
  `covered_events`, an event=all unit never deletes an event that is absent from its dump.
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

from syncsvc.catalog import EVENT_ALL, Resource, resolve
from syncsvc.errors import IncompleteDumpError, RunFencedError, StoreError
from syncsvc.feed import notify as feed_notify
from syncsvc.logs import get_logger
from syncsvc.normalize import Normalizer, normalizer
from syncsvc.parse.segments import EncodedBatch, staging_line
from syncsvc.records import Record, codec
from syncsvc.settings import Settings
from syncsvc.store import queries
from syncsvc.store.db import raw_connection

log = get_logger(__name__)

DEFAULT_BATCH_ROWS = 10_000

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
class HoldPolicy:
    """The mass-delete hold: a scope with at least `min_rows` live rows is held when the unit
    would delete more than `ratio` of them."""

    ratio: float = 0.5
    min_rows: int = 20

    @classmethod
    def from_settings(cls, settings: Settings) -> HoldPolicy:
        return cls(ratio=settings.delete_hold_ratio, min_rows=settings.delete_hold_min_rows)

    def holds(self, live: int, deletes: int) -> bool:
        return live >= self.min_rows and deletes > self.ratio * live


@dataclass(frozen=True, slots=True)
class HeldScope:
    """One event (or '*' for event.do) whose deletes tripped the hold."""

    event_guid: str
    live: int
    deletes: int


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
        scope: str,
        fetch_id: int | None = None,
        batch_rows: int = DEFAULT_BATCH_ROWS,
        checkpoint: Checkpoint | None = None,
    ) -> None:
        self.resource = resolve(resource)
        if not self.resource.per_event and scope != EVENT_ALL:
            raise ValueError("event.do units have scope 'all' (the whole account)")
        self.engine = engine
        self.run_id = run_id
        self.fetch_id = fetch_id
        self.scope = scope
        self.batch_rows = batch_rows
        self.normalize: Normalizer = normalizer(self.resource)
        self._sql = queries.statements(self.resource)
        self._checkpoint = checkpoint
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
        for attempt in (1, 2):
            self._conn = await self.engine.connect()
            try:
                self._raw = await raw_connection(self._conn)
                # READ COMMITTED whatever the server's default: the seq and scope locks rely on
                # each statement seeing what committed before the lock was granted.
                self._tx = self._raw.transaction(isolation="read_committed")
                await self._tx.start()
                break
            except (asyncpg.InterfaceError, OSError) as exc:
                # A pooled connection whose backend died (terminated, restarted, a failover):
                # drop it and take a fresh one, once.
                await self._conn.invalidate()
                await self._conn.close()
                if attempt == 2:
                    raise StoreError(
                        f"{self.resource.entity} unit could not begin: {_one_line(exc)}",
                        resource=self.resource.path,
                    ) from exc
            except BaseException:
                await self._conn.close()
                raise
        await self._step("begun")
        return self

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
                except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError):
                    # The server rolls back on its own when the connection dies; never hand a
                    # connection in an unknown state back to the pool.
                    log.warning("unit_rollback_failed", resource=self.resource.path)
                    if self._conn is not None:
                        await self._conn.invalidate()
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
        try:
            status: str = await self._raw.execute(sql, *args)
        except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError) as exc:
            raise StoreError(
                f"{self.resource.entity} unit failed: {_one_line(exc)}",
                resource=self.resource.path,
            ) from exc
        return status

    async def _fetch(self, sql: str, *args: Any) -> list[Any]:
        try:
            rows: list[Any] = await self._raw.fetch(sql, *args)
        except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError) as exc:
            raise StoreError(
                f"{self.resource.entity} unit failed: {_one_line(exc)}",
                resource=self.resource.path,
            ) from exc
        return rows

    # --- stage -----------------------------------------------------------------------------------

    async def _prepare_staging(self) -> None:
        if self._done:
            raise StoreError("this unit is already applied", resource=self.resource.path)
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
        savepoint = self._raw.transaction()
        await savepoint.start()
        try:
            await self._raw.copy_to_table(
                queries.STAGE,
                source=self._rows(batches, counts),
                columns=self._sql.stage_columns,
                format="text",
            )
        except BaseException as exc:
            with contextlib.suppress(asyncpg.PostgresError, asyncpg.InterfaceError, OSError):
                await savepoint.rollback()
            if isinstance(exc, asyncpg.PostgresError | asyncpg.DataError | asyncpg.InterfaceError):
                raise StoreError(
                    f"staging {self.resource.entity} records failed: {_one_line(exc)}",
                    resource=self.resource.path,
                ) from exc
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
                scope=self.scope,
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
        only = None if self.scope == EVENT_ALL else self.scope
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

    # --- diff + apply ----------------------------------------------------------------------------

    def _scope_events(self, covered_events: Iterable[str] | None) -> list[str]:
        if not self.resource.per_event:
            return []
        if self.scope != EVENT_ALL:
            return [self.scope]
        return sorted(set(self._events) | set(covered_events or ()))

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
        if self._done:
            raise StoreError("this unit is already applied", resource=self.resource.path)
        if not complete:
            await self._tx.rollback()
            self._done = True
            raise IncompleteDumpError(
                "apply refused: the dump is not complete; nothing applied",
                resource=self.resource.path,
                event_guid=None if self.scope == EVENT_ALL else self.scope,
            )
        started = time.perf_counter()
        hold = hold or HoldPolicy()
        sql = self._sql
        if not self._staged:
            await self._prepare_staging()  # an empty dump: everything in scope is gone
        scope_events = self._scope_events(covered_events)
        args = (scope_events,) if self.resource.per_event else ()
        # JSON images render timestamps in the session zone: make them UTC. The diff's hash join
        # holds one side in memory; JIT compiles for longer than these set-based statements run.
        await self._execute("SET LOCAL TimeZone = 'UTC'")
        await self._execute("SET LOCAL work_mem = '256MB'")
        await self._execute("SET LOCAL jit = off")

        dup_rows = await self._fetch(sql.dedupe_stage)
        dups = {r["event_guid"]: int(r["duplicates"]) for r in dup_rows}
        duplicates = sum(dups.values())
        if duplicates:
            log.warning(
                "duplicate_keys_found",
                resource=self.resource.path,
                scope=self.scope,
                duplicates=duplicates,
                kept="last",
            )
        await self._step("deduped")
        await self._execute(sql.lock_scope, scope_events or ["*"])
        await self._step("scope_locked")
        await self._execute(sql.diff_keys, *args)
        self._mark("diff_keys")
        rejects = await self._fetch(sql.take_rejects)
        oversized = {r["event_guid"]: int(r["rejected"]) for r in rejects}
        n_oversized = sum(oversized.values())
        if n_oversized:
            log.warning(
                "records_rejected",
                resource=self.resource.path,
                scope=self.scope,
                rejected=n_oversized,
                reason=f"a key (event GUID, {self.resource.key_field.api} or clientID) longer"
                f" than {queries.MAX_KEY_BYTES} bytes cannot be stored",
            )
        await self._execute(sql.diff)
        self._mark("diff_rows")
        suppressed = 0
        if self._unidentified:
            # A record without its key could be any stored row: none of them may be inferred
            # deleted from this dump (its inserts and updates are still right).
            status = await self._execute(f"DELETE FROM {queries.DIFF} WHERE op = 'delete'")
            suppressed = int(status.split()[-1])
            log.warning(
                "deletes_suppressed",
                resource=self.resource.path,
                scope=self.scope,
                unidentified=self._unidentified,
                deletes=suppressed,
            )
        await self._execute(sql.analyze_diff)
        await self._step("diffed")
        if self.resource.has_client_id:
            # The planner guesses a handful of rows for "GROUP BY .. HAVING count(*) = 1" and
            # picks nested loops over the diff table: seconds for a thousand rekeys among 40,000
            # changes (measured: 7.8 s). Hash joins are linear whatever the guess.
            await self._execute("SET LOCAL enable_nestloop = off")
            await self._execute(sql.pair_rekeys)
            await self._execute("SET LOCAL enable_nestloop = on")
            await self._step("rekeys_paired")

        # Live rows before = staged (distinct) - inserts + deletes: no scan of the current table.
        if self.resource.per_event:
            staged = {e: n - dups.get(e, 0) - oversized.get(e, 0) for e, n in self._events.items()}
        else:
            staged = {"*": self._records - duplicates - n_oversized}
        would_hold = []
        for r in await self._fetch(sql.diff_counts):
            scope, deletes = r["event_guid"], int(r["deletes"])
            live = staged.get(scope, 0) - int(r["inserts"]) + deletes
            if deletes and hold.holds(live, deletes):
                would_hold.append(HeldScope(scope, live, deletes))
        would_hold.sort(key=lambda h: h.event_guid)
        held: list[HeldScope] = []
        overridden: list[HeldScope] = []
        if would_hold and override_hold:
            overridden = would_hold
        elif would_hold:
            held = would_hold
            await self._execute(sql.drop_held, [h.event_guid for h in held])
            for h in held:
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

        counts = {r["op"]: int(r["count"]) for r in await self._fetch(sql.count_changes)}
        self._mark("counted")
        await self._execute(sql.soft_delete_state, self.run_id)
        await self._step("state_deleted")
        await self._execute(sql.upsert_state, self.run_id)
        await self._step("state_upserted")

        # Only now take the seq lock: it is held until commit, so seq order is commit order.
        await self._execute(sql.lock_seq, queries.SEQ_LOCK_KEY)
        await self._step("seq_locked")
        (seqs,) = await self._fetch(sql.insert_changes, self.run_id, self.fetch_id)
        await self._step("changes_inserted")

        # The change feed: wake followers and webhook deliveries when (and only if) this commits.
        # The payload is the new high seq, never data (docs/change-feed.md).
        if seqs["last_seq"] is not None:
            await self._execute(feed_notify.SQL, str(seqs["last_seq"]))

        result = ApplyResult(
            status="held" if held else "applied",
            records=self._records - duplicates - n_oversized,
            rejected=self._rejected + n_oversized,
            duplicates=duplicates,
            inserted=counts.get("insert", 0),
            updated=counts.get("update", 0),
            deleted=counts.get("delete", 0),
            rekeyed=counts.get("rekey", 0),
            held=tuple(held),
            overridden=tuple(overridden),
            first_seq=seqs["first_seq"],
            last_seq=seqs["last_seq"],
            unidentified=self._unidentified,
            oversized=n_oversized,
            deletes_suppressed=suppressed,
            stage_seconds=self._stage_seconds,
            apply_seconds=time.perf_counter() - started,
            scope_events=tuple(scope_events),
        )
        # The fence, last before commit (the transaction stayed open for the whole download):
        # this run must still be `running`. The row lock is held to commit, so a newer run's
        # UPDATE to `abandoned` waits for this commit, or this check sees `abandoned` and the
        # unit rolls back. Before the fetch row's update: both take locks in the same order.
        await self._check_fence()
        if self.fetch_id is not None:
            await self._record_fetch(result, hold, transport or {})
        await self._step("before_commit")
        try:
            await self._tx.commit()
        except asyncpg.PostgresError as exc:
            raise StoreError(
                f"committing the {self.resource.entity} unit failed: {exc}",
                resource=self.resource.path,
            ) from exc
        self._done = True
        await self._step("committed")
        log.info(
            "unit_applied",
            resource=self.resource.path,
            scope=self.scope,
            status=result.status,
            inserted=result.inserted,
            updated=result.updated,
            deleted=result.deleted,
            rekeyed=result.rekeyed,
            held=len(result.held),
            apply_seconds=round(result.apply_seconds, 3),
        )
        return result

    async def _check_fence(self) -> None:
        rows = await self._fetch(
            "SELECT status, (SELECT min(id) FROM runs WHERE id > $1) AS newer"
            " FROM runs WHERE id = $1 FOR SHARE",
            self.run_id,
        )
        if not rows or rows[0]["status"] != "running":
            newer = rows[0]["newer"] if rows else None
            raise RunFencedError(
                run_id=self.run_id,
                superseded_by=int(newer) if newer is not None else None,
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
            """
UPDATE fetches SET status = $2, records = $3, rejected = $4, duplicates = $5,
       inserted = $6, updated = $7, deleted = $8, rekeyed = $9,
       stage_seconds = $10, apply_seconds = $11, details = details || $12::jsonb,
       attempts = coalesce($13, attempts), http_status = coalesce($14, http_status),
       bytes = coalesce($15, bytes), fetch_seconds = coalesce($16, fetch_seconds),
       error_message = coalesce($17, error_message), finished_at = now()
WHERE id = $1
""",
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


def _one_line(exc: BaseException) -> str:
    text = str(exc).splitlines()[0] if str(exc) else ""
    return f"{type(exc).__name__}: {text}"[:500]


def vars_of(h: HeldScope) -> dict[str, Any]:
    return {"event_guid": h.event_guid, "live": h.live, "deletes": h.deletes}


async def apply_records(
    engine: AsyncEngine,
    *,
    run_id: int,
    resource: Resource | str,
    scope: str,
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
