"""The status pages' reads: each page is a few bounded queries on primary keys and indexes.

Nothing here reads a whole change image: a change is shown by its key, its changed fields and,
for at most three of them, the old and new value cut to `VALUE_CHARS` characters (computed in SQL,
so the images never leave the database).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from syncsvc.vocab import UnitStatus

RUNS_PER_PAGE = 50
TREND_DAYS = 30
TREND_MAX_RUNS = 2000  # the chart's points: a run every 20 minutes for 30 days
UNITS_WITH_SAMPLES = 12  # units whose first changes the run page shows
CHANGES_PER_UNIT = 3
FIELDS_PER_CHANGE = 3
VALUE_CHARS = 80
CONSUMERS_MAX = 200
UNITS_MAX = 2000  # a run page lists at most this many units (a large account: ~1 per event)

# Units that need an operator's eye sort first (the same order as `syncsvc status`).
UNIT_ORDER = (
    UnitStatus.FAILED,
    UnitStatus.HELD,
    UnitStatus.ABANDONED,
    UnitStatus.CANCELLED,
    UnitStatus.RUNNING,
    UnitStatus.PENDING,
    UnitStatus.SKIPPED,
)
PROBLEM_UNITS = (UnitStatus.FAILED, UnitStatus.HELD, UnitStatus.CANCELLED, UnitStatus.ABANDONED)


@dataclass(frozen=True, slots=True)
class RunRow:
    id: int
    status: str
    environment: str
    account: str
    trigger: str
    started_at: datetime
    finished_at: datetime | None
    seconds: float | None  # finished - started; for a running run, so far
    units_total: int
    units_failed: int
    units_held: int
    records: int
    bytes: int
    inserted: int
    updated: int
    deleted: int
    rekeyed: int
    error_code: int | None
    error_message: str | None
    options: dict[str, Any]
    # The first unit that explains a partial/held/failed run: "resource scope: code message".
    first_problem: str | None = None

    @property
    def changes(self) -> int:
        return self.inserted + self.updated + self.deleted + self.rekeyed


@dataclass(frozen=True, slots=True)
class HeldScope:
    event_guid: str
    event_title: str | None
    live: int
    deletes: int
    share: float  # deletes / live


@dataclass(frozen=True, slots=True)
class ChangeSample:
    seq: int
    op: str
    entity: str
    event_guid: str
    record_key: str
    changed_fields: tuple[str, ...]
    values: tuple[tuple[str, str | None, str | None], ...]  # (field, old, new), cut


@dataclass(frozen=True, slots=True)
class UnitRow:
    id: int
    resource: str
    entity: str
    scope: str
    status: str
    started_at: datetime | None
    finished_at: datetime | None
    attempts: int
    http_status: int | None
    bytes: int
    records: int
    rejected: int
    inserted: int
    updated: int
    deleted: int
    rekeyed: int
    fetch_seconds: float | None
    stage_seconds: float | None
    apply_seconds: float | None
    error_code: int | None
    error_message: str | None
    step_seconds: tuple[tuple[str, float], ...]
    held: tuple[HeldScope, ...]
    overridden: tuple[HeldScope, ...]
    first_seq: int | None
    last_seq: int | None
    samples: list[ChangeSample] = field(default_factory=list)

    @property
    def changes(self) -> int:
        return self.inserted + self.updated + self.deleted + self.rekeyed


@dataclass(frozen=True, slots=True)
class TrendPoint:
    id: int
    status: str
    started_at: datetime
    seconds: float | None
    records: int
    inserted: int
    updated: int
    deleted: int
    rekeyed: int


@dataclass(frozen=True, slots=True)
class ConsumerRow:
    name: str
    status: str
    cursor: int
    filters: dict[str, Any]
    delivery: str  # "webhook" or "pull": the URL itself is never shown (it may carry a secret)
    last_error: str | None
    failing_since: datetime | None
    last_delivered_at: datetime | None
    lag_rows: int
    lag_seconds: float | None  # age of the oldest change beyond the cursor


@dataclass(frozen=True, slots=True)
class UnitProgress:
    status: str
    units: int
    records: int
    bytes: int


_RUN_COLUMNS = """
    r.id, r.status, r.environment, r.account, r.trigger, r.started_at, r.finished_at,
    extract(epoch FROM coalesce(r.finished_at, now()) - r.started_at)::float8 AS seconds,
    r.units_total, r.units_failed, r.units_held, r.records, r.bytes,
    r.inserted, r.updated, r.deleted, r.rekeyed, r.error_code, r.error_message, r.options
"""


def _run(row: Any, first_problem: str | None = None) -> RunRow:
    values = dict(row._mapping)
    values["options"] = _json(values["options"]) or {}
    return RunRow(**values, first_problem=first_problem)


async def latest_runs(
    conn: AsyncConnection, *, before: int | None = None, limit: int = RUNS_PER_PAGE
) -> list[RunRow]:
    """The newest runs (older than run `before` when given), each with its first problem unit.

    Two queries: the runs by primary key (keyset paging), then their problem units through the
    fetches' run_id index.
    """
    rows = (
        await conn.execute(
            sa.text(
                f"SELECT {_RUN_COLUMNS} FROM runs r"
                " WHERE (CAST(:before AS bigint) IS NULL OR r.id < :before)"
                " ORDER BY r.id DESC LIMIT :limit"
            ),
            {"before": before, "limit": limit},
        )
    ).all()
    problems = await _first_problems(conn, [r.id for r in rows])
    return [_run(r, problems.get(r.id)) for r in rows]


async def _first_problems(conn: AsyncConnection, run_ids: list[int]) -> dict[int, str]:
    if not run_ids:
        return {}
    rows = (
        await conn.execute(
            sa.text(
                """
SELECT DISTINCT ON (run_id) run_id, resource, scope, status, error_code, error_message,
       details -> 'held' AS held
FROM fetches
WHERE run_id = ANY(:ids) AND status IN ('failed', 'held', 'cancelled', 'abandoned')
ORDER BY run_id, array_position(
    ARRAY['failed', 'held', 'abandoned', 'cancelled']::text[], status), id
"""
            ),
            {"ids": run_ids},
        )
    ).all()
    out = {}
    for r in rows:
        where = f"{r.resource} {r.scope}"
        if r.status == "held" and r.held:
            h = r.held[0]
            more = f" and {len(r.held) - 1} more" if len(r.held) > 1 else ""
            out[r.run_id] = (
                f"{where}: held, {h['deletes']} of {h['live']} live rows would be deleted"
                f" (event {h['event_guid']}{more})"
            )
        elif r.error_message:
            code = f"{r.error_code} " if r.error_code is not None else ""
            out[r.run_id] = f"{where}: {code}{r.error_message}"
        else:
            out[r.run_id] = f"{where}: {r.status}"
    return out


async def run(conn: AsyncConnection, run_id: int) -> RunRow | None:
    row = (
        await conn.execute(
            sa.text(f"SELECT {_RUN_COLUMNS} FROM runs r WHERE r.id = :id"), {"id": run_id}
        )
    ).first()
    return None if row is None else _run(row)


async def run_units(conn: AsyncConnection, run_id: int) -> list[UnitRow]:
    """A run's units, problems first, each with its held scopes and its first few changes.

    Three queries: the units (fetches' run_id index), the held scopes' event titles (events'
    primary key), and the samples: for each of the first units with changes, a primary-key
    range scan of `changes` between the unit's first and last seq.
    """
    rows = (
        (
            await conn.execute(
                sa.text(
                    """
SELECT id, resource, entity, scope, status, started_at, finished_at, attempts, http_status,
       bytes, records, rejected, inserted, updated, deleted, rekeyed,
       fetch_seconds, stage_seconds, apply_seconds, error_code, error_message,
       details -> 'step_seconds' AS step_seconds, details -> 'held' AS held,
       details -> 'overridden' AS overridden,
       (details ->> 'first_seq')::bigint AS first_seq, (details ->> 'last_seq')::bigint AS last_seq
FROM fetches WHERE run_id = :id
ORDER BY coalesce(array_position(:order, status), 99), id
LIMIT :limit
"""
                ),
                {"id": run_id, "order": list(UNIT_ORDER), "limit": UNITS_MAX},
            )
        )
        .mappings()
        .all()
    )
    guids = sorted(
        {h["event_guid"] for r in rows for h in (r["held"] or []) + (r["overridden"] or [])}
    )
    titles = await _event_titles(conn, guids, run_id)
    units = [_unit(r, titles) for r in rows]
    with_changes = [u for u in units if u.first_seq is not None and u.changes][:UNITS_WITH_SAMPLES]
    samples = await _samples(conn, [(u.first_seq, u.last_seq) for u in with_changes])  # type: ignore[misc]
    for u in with_changes:
        u.samples.extend(s for s in samples if u.first_seq <= s.seq <= u.last_seq)  # type: ignore[operator]
    return units


def _held(items: list[dict[str, Any]] | None, titles: dict[str, str]) -> tuple[HeldScope, ...]:
    return tuple(
        HeldScope(
            event_guid=h["event_guid"],
            event_title=titles.get(h["event_guid"]),
            live=int(h["live"]),
            deletes=int(h["deletes"]),
            share=int(h["deletes"]) / int(h["live"]) if h["live"] else 1.0,
        )
        for h in items or []
    )


def _unit(r: Any, titles: dict[str, str]) -> UnitRow:
    steps = r["step_seconds"] or {}
    return UnitRow(
        **{k: r[k] for k in r if k not in ("step_seconds", "held", "overridden")},
        step_seconds=tuple((k, float(v)) for k, v in steps.items()),
        held=_held(r["held"], titles),
        overridden=_held(r["overridden"], titles),
    )


async def _event_titles(conn: AsyncConnection, guids: list[str], run_id: int) -> dict[str, str]:
    """The events' names, as the run's account holds them (another account may hold the same
    GUID under another name)."""
    if not guids:
        return {}
    rows = await conn.execute(
        sa.text(
            "SELECT event_guid, event_name AS title FROM events WHERE event_guid = ANY(:g)"
            " AND account = (SELECT account FROM runs WHERE id = :run)"
        ),
        {"g": guids, "run": run_id},
    )
    return {r.event_guid: r.title for r in rows if r.title}


# For each (first, last) seq range: its first changes, and for each change its first changed
# fields with the old and new value looked up by path and cut short, inside the database.
_SAMPLES = f"""
SELECT c.seq, c.op, c.entity, c.event_guid, c.record_key, c.changed_fields,
       coalesce(v.values, '[]'::jsonb) AS values
FROM unnest(CAST(:firsts AS bigint[]), CAST(:lasts AS bigint[])) AS u(first_seq, last_seq)
CROSS JOIN LATERAL (
    SELECT * FROM changes
    WHERE seq BETWEEN u.first_seq AND u.last_seq
    ORDER BY seq LIMIT {CHANGES_PER_UNIT}
) AS c
LEFT JOIN LATERAL (
    SELECT jsonb_agg(jsonb_build_array(
               f.name,
               left(c.before #>> f.path, {VALUE_CHARS + 1}),
               left(c.after #>> f.path, {VALUE_CHARS + 1})) ORDER BY f.n) AS values
    FROM (
        SELECT n, name, CASE
                   WHEN name LIKE 'custom.%' THEN ARRAY['customFields', substr(name, 8)]
                   WHEN name LIKE 'extras.%' THEN ARRAY['extras', substr(name, 8)]
                   ELSE ARRAY[name] END AS path
        FROM unnest(c.changed_fields[1:{FIELDS_PER_CHANGE}]) WITH ORDINALITY AS x(name, n)
    ) AS f
    WHERE c.op = 'update'
) AS v ON true
ORDER BY c.seq
"""


async def _samples(conn: AsyncConnection, ranges: list[tuple[int, int]]) -> list[ChangeSample]:
    if not ranges:
        return []
    rows = await conn.execute(
        sa.text(_SAMPLES),
        {"firsts": [a for a, _ in ranges], "lasts": [b for _, b in ranges]},
    )
    return [
        ChangeSample(
            seq=r.seq,
            op=r.op,
            entity=r.entity,
            event_guid=r.event_guid,
            record_key=r.record_key,
            changed_fields=tuple(r.changed_fields),
            values=tuple((f, _cut(old), _cut(new)) for f, old, new in _json(r.values)),
        )
        for r in rows
    ]


def _json(value: Any) -> Any:
    return json.loads(value) if isinstance(value, str) else value


def _cut(value: str | None) -> str | None:
    if value is None or len(value) <= VALUE_CHARS:
        return value
    return value[: VALUE_CHARS - 1] + "…"


async def trend(conn: AsyncConnection, days: int = TREND_DAYS) -> list[TrendPoint]:
    """The finished runs of the last `days` days, oldest first (at most TREND_MAX_RUNS)."""
    rows = (
        await conn.execute(
            sa.text(
                """
SELECT * FROM (
    SELECT id, status, started_at,
           extract(epoch FROM finished_at - started_at)::float8 AS seconds,
           records, inserted, updated, deleted, rekeyed
    FROM runs
    WHERE started_at >= now() - make_interval(days => :days) AND finished_at IS NOT NULL
    ORDER BY id DESC LIMIT :limit
) AS t ORDER BY id
"""
            ),
            {"days": days, "limit": TREND_MAX_RUNS},
        )
    ).all()
    return [TrendPoint(**dict(r._mapping)) for r in rows]


async def consumers(conn: AsyncConnection) -> list[ConsumerRow]:
    """The change feed's consumers with their lag: rows beyond the cursor and the age of the
    oldest of them.

    seq is gap-free, so the rows beyond a cursor are max(seq) - cursor (before the consumer's
    filters); the oldest one's captured_at is one primary-key lookup per consumer.
    """
    rows = (
        await conn.execute(
            sa.text(
                """
WITH head AS (SELECT coalesce(max(seq), 0) AS seq FROM changes)
SELECT k.name, k.status, k.cursor, k.filters, k.webhook_url IS NOT NULL AS webhook,
       k.last_error, k.failing_since, k.last_delivered_at,
       greatest(head.seq - k.cursor, 0) AS lag_rows,
       extract(epoch FROM now() - (
           SELECT c.captured_at FROM changes c WHERE c.seq > k.cursor ORDER BY c.seq LIMIT 1
       ))::float8 AS lag_seconds
FROM consumers k CROSS JOIN head
ORDER BY (k.status = 'failing') DESC, k.name
LIMIT :limit
"""
            ),
            {"limit": CONSUMERS_MAX},
        )
    ).all()
    return [
        ConsumerRow(
            name=r.name,
            status=r.status,
            cursor=r.cursor,
            filters=_json(r.filters) or {},
            delivery="webhook" if r.webhook else "pull",
            last_error=r.last_error,
            failing_since=r.failing_since,
            last_delivered_at=r.last_delivered_at,
            lag_rows=r.lag_rows,
            lag_seconds=r.lag_seconds,
        )
        for r in rows
    ]


async def running_run(conn: AsyncConnection) -> RunRow | None:
    """The run in progress (the newest `running` one), if any."""
    row = (
        await conn.execute(
            sa.text(
                f"SELECT {_RUN_COLUMNS} FROM runs r WHERE r.status = 'running'"
                " ORDER BY r.id DESC LIMIT 1"
            )
        )
    ).first()
    return None if row is None else _run(row)


async def unit_progress(conn: AsyncConnection, run_id: int) -> list[UnitProgress]:
    """A run's units counted by status, with the records and bytes they have so far."""
    rows = await conn.execute(
        sa.text(
            """
SELECT status, count(*) AS units, coalesce(sum(records), 0) AS records,
       coalesce(sum(bytes), 0) AS bytes
FROM fetches WHERE run_id = :id GROUP BY status
ORDER BY coalesce(array_position(:order, status), 99)
"""
        ),
        {"id": run_id, "order": list(UNIT_ORDER)},
    )
    return [UnitProgress(**dict(r._mapping)) for r in rows]


async def running_units(conn: AsyncConnection, run_id: int) -> list[UnitRow]:
    """The units of a run that are in flight now."""
    rows = (
        (
            await conn.execute(
                sa.text(
                    """
SELECT id, resource, entity, scope, status, started_at, finished_at, attempts, http_status,
       bytes, records, rejected, inserted, updated, deleted, rekeyed,
       fetch_seconds, stage_seconds, apply_seconds, error_code, error_message,
       NULL::jsonb AS step_seconds, NULL::jsonb AS held, NULL::jsonb AS overridden,
       NULL::bigint AS first_seq, NULL::bigint AS last_seq
FROM fetches WHERE run_id = :id AND status = 'running' ORDER BY id LIMIT :limit
"""
                ),
                {"id": run_id, "limit": UNITS_MAX},
            )
        )
        .mappings()
        .all()
    )
    return [_unit(r, {}) for r in rows]


async def last_finished_run(conn: AsyncConnection) -> RunRow | None:
    row = (
        await conn.execute(
            sa.text(
                f"SELECT {_RUN_COLUMNS} FROM runs r WHERE r.status <> 'running'"
                " ORDER BY r.id DESC LIMIT 1"
            )
        )
    ).first()
    return None if row is None else _run(row)
