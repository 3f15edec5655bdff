"""The stage/diff/apply SQL, as named statements generated once per resource from the catalog.

Every statement that reads or writes a state table or the change log is one account's: the
unit's account is a bound parameter, the state tables' keys lead with it, so a unit's diff,
deletes, rekeys and holds never reach another account's rows.

Every statement is set-based and takes bound parameters only ($1, $2, ...); identifiers come from
the catalog, never from data. This module defines them in the order they run inside one unit's
transaction (syncsvc.store.unit names the steps):

1. `BEGUN` (the run's account, the transaction's settings); `create_stage` / `truncate_stage`,
   then COPY into the staging table.
2. `dedupe_stage`: duplicate keys in the dump, last one wins; returns counts per event.
3. `lock_scope`: the scope's advisory locks, held to commit.
4. `diff_keys`, `take_rejects`, `diff`: ONE pass, staged rows FULL JOIN the scope's current
   rows; only rows that differ (hash first, typed per-field comparison only for those) land in
   the small diff table, with their op, changed_fields, before/after images and the staged
   values; keys too long to store are counted and dropped; `suppress_deletes` when some records
   came without their key; `analyze_diff`. When `diff_keys` finds no row (nothing staged
   differs from the scope's rows, as in most units of a quiet night), every statement from
   `take_rejects` to `upsert_state` would find nothing: the unit sends none of them.
5. `pair_rekeys`: a clientID that left exactly one vanished key for exactly one new key turns
   that delete + insert into one `rekey`.
6. `diff_counts`: per event inserts/deletes (the hold's input; live rows are derived from them);
   `drop_held`: held events leave the diff: nothing of theirs is applied.
7. `count_changes`, `soft_delete_state`, `upsert_state`: the current-state table, from the diff
   table only.
8. `check_fence`: the run still owns the database (its row locked to commit); then `lock_seq`
   and `insert_changes`: seq numbers allocated under a transaction-level advisory lock held
   until commit, so seq order is commit order; the same statement queues the feed's NOTIFY.
9. `record_fetch`: the unit's figures, then commit.

A first load takes a shorter way after step 3: `scope_has_rows` (under the scope's locks, between
`SEQSCAN_OFF` and `SEQSCAN_ON`) finds
the scope without a single row, live or deleted, so the diff would mark every staged row an
insert. `load_state` then writes the state rows and `load_changes` (after `lock_seq`) the change
rows straight from the staging table: the same rows, columns, images and seq order as steps 4-8
would write, without the diff table.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass

from syncsvc.catalog import CUSTOM_PREFIX, Field, FieldKind, Resource
from syncsvc.records import EXTRAS, EXTRAS_PREFIX
from syncsvc.scope import ACCOUNT_NAME

# Transaction-level advisory lock serializing change-log `seq` allocation (commit order).
SEQ_LOCK_KEY = 0x5E9C_5EC0_0001

# Longest key a record may carry, in UTF-8 bytes, for each of event_guid, its own key and
# client_id. A btree entry holds at most 2704 bytes (PostgreSQL: a third of an 8 kB page), and
# the widest index (event_guid, key) holds two of them: 2 x 1000 fits with room to spare. A
# record with a longer key is rejected (counted, logged) and never stored: one such record in
# a dump used to fail its whole unit on every run ("index row size ... exceeds btree maximum").
MAX_KEY_BYTES = 1000

STAGE = "syncsvc_stage"
KEYS = "syncsvc_diff_keys"
DIFF = "syncsvc_diff"

# A unit's first statement: its run's account (no caller can write one account's unit into
# another's), and its transaction's settings. JSON images render timestamps in the session zone,
# so UTC; the diff's hash join holds one side in memory; JIT compiles for longer than these
# set-based statements run. One round trip (set_config(..., true) is SET LOCAL): four were felt
# when many small units run at once.
BEGUN = (
    "SELECT account, set_config('TimeZone', 'UTC', true), set_config('work_mem', '256MB', true),"
    " set_config('jit', 'off', true) FROM runs WHERE id = $1"
)

_SQL_TYPES = {
    FieldKind.TEXT: "text",
    FieldKind.INT: "bigint",
    FieldKind.DATE: "date",
    FieldKind.DATETIME: "timestamptz",
    FieldKind.REFS: "text[]",
    FieldKind.CUSTOM: "jsonb",
}

_EXTRAS_FIELD = Field(EXTRAS, "extras", FieldKind.CUSTOM)


def _image(resource: Resource, alias: str) -> str:
    """The whole record as JSON keyed by API names (custom fields and extras included)."""
    pairs = [f"'{f.api}', {alias}.{f.column}" for f in resource.fields]
    pairs.append(f"'{EXTRAS}', {alias}.extras")
    return "jsonb_build_object(" + ", ".join(pairs) + ")"


def _changed_fields(
    resource: Resource, old: Callable[[Field], str], new: Callable[[Field], str]
) -> str:
    """API names of the fields whose value differs between two records, catalog order; mapping
    fields (customFields, extras) name each differing key as custom.<code> / extras.<name>.

    `old(field)` / `new(field)` render a field's SQL value on each side (a typed column, or a
    JSON image's member)."""
    plain = [
        f"CASE WHEN {new(f)} IS DISTINCT FROM {old(f)} THEN '{f.api}' END"
        for f in resource.fields
        if f.kind is not FieldKind.CUSTOM
    ]
    parts = [f"array_remove(ARRAY[{', '.join(plain)}]::text[], NULL)"]
    mappings = [f for f in resource.fields if f.kind is FieldKind.CUSTOM] + [_EXTRAS_FIELD]
    for f in mappings:
        prefix = EXTRAS_PREFIX if f is _EXTRAS_FIELD else CUSTOM_PREFIX
        a, b = old(f), new(f)
        parts.append(
            f"ARRAY(SELECT '{prefix}' || k FROM jsonb_object_keys("
            f"coalesce({a}, '{{}}'::jsonb) || coalesce({b}, '{{}}'::jsonb)) AS k "
            f"WHERE ({a}) -> k IS DISTINCT FROM ({b}) -> k ORDER BY k)"
        )
    return " || ".join(parts)


def _column(alias: str) -> Callable[[Field], str]:
    return lambda f: f"{alias}.{f.column}"


def _member(image: str) -> Callable[[Field], str]:
    # A JSON null member is SQL NULL here, so "no value" compares the same on both sides.
    return lambda f: f"nullif({image} -> '{f.api}', 'null'::jsonb)"


@dataclass(frozen=True, slots=True)
class _Shape:
    """What the statements of one resource are built from: its table, key and columns."""

    resource: Resource
    table: str
    key: str  # the key column (events: event_guid)
    keys: tuple[str, ...]  # the identity: (event_guid, key), or (event_guid) for event.do
    data_cols: tuple[str, ...]  # the catalog's columns, extras and row_hash
    client: bool  # has clientID (rekeys)

    @classmethod
    def of(cls, resource: Resource) -> _Shape:
        key = resource.key_field.column
        per_event = resource.per_event
        return cls(
            resource=resource,
            table=resource.table,
            key=key,
            keys=("event_guid", key) if per_event else ("event_guid",),
            data_cols=(*(f.column for f in resource.fields), "extras", "row_hash"),
            client=resource.has_client_id,
        )

    def on(self, a: str, b: str) -> str:
        return " AND ".join(f"{a}.{k} = {b}.{k}" for k in self.keys)

    @property
    def scope_name(self) -> str:
        """A diff row's scope: its event, or the account for event.do."""
        return "event_guid" if self.resource.per_event else f"'{ACCOUNT_NAME}'"


# --- the statements, in the order a unit runs them ------------------------------------------------


def _create_stage(r: _Shape) -> str:
    col_defs = ", ".join(
        [f"{f.column} {_SQL_TYPES[f.kind]}" for f in r.resource.fields]
        + ["extras jsonb", "row_hash bytea NOT NULL", "ord bigint NOT NULL", "kh bigint NOT NULL"]
    )
    return f"CREATE TEMP TABLE IF NOT EXISTS {STAGE} ({col_defs}) ON COMMIT DROP"


def _dedupe_stage(r: _Shape) -> str:
    # kh is a 63-bit hash of the key computed while staging: one aggregate over a bigint finds
    # the few hashes seen twice, and only their rows are grouped by the real key.
    keys = ", ".join(r.keys)
    return f"""
WITH suspect AS (
    SELECT kh FROM {STAGE} GROUP BY kh HAVING count(*) > 1
), dup AS (
    SELECT {keys}, max(ord) AS keep
    FROM {STAGE}
    WHERE kh IN (SELECT kh FROM suspect)
    GROUP BY {keys} HAVING count(*) > 1
), dropped AS (
    DELETE FROM {STAGE} s USING dup d
    WHERE {r.on("s", "d")} AND s.ord <> d.keep
    RETURNING s.event_guid
)
SELECT event_guid, count(*) AS duplicates FROM dropped GROUP BY event_guid
"""


def _lock_scope(r: _Shape) -> str:
    # Two units over one event (say, an event=all unit and a per-event fallback) must not diff
    # against the same old rows: each takes its scope's locks, in one global order, before
    # diffing, and holds them to commit. The next one then diffs against the first's committed
    # result (READ COMMITTED: every statement sees the latest commits).
    # The account is part of the key: two accounts' units over the same event GUID are two
    # scopes and never wait for each other.
    return (
        "SELECT count(pg_advisory_xact_lock(hashtextextended("
        f"'syncsvc:' || $2::text || ':{r.resource.entity}:' || e, 0))) "
        "FROM (SELECT DISTINCT unnest($1::text[]) AS e ORDER BY 1) AS scope"
    )


def _too_long(r: _Shape, alias: str) -> str:
    # Null (a record without clientID) for no long key: callers test it IS NOT TRUE.
    key_parts = [*r.keys, "client_id"] if r.client else list(r.keys)
    return " OR ".join(f"octet_length({alias}.{k}) > {MAX_KEY_BYTES}" for k in key_parts)


def _diff_keys(r: _Shape) -> str:
    # Data entities: only the unit's scope events (through the key's event_guid prefix);
    # event.do lists the whole account. Only the columns the comparison needs: narrow hash.
    per_event = r.resource.per_event
    key_cols = f"event_guid, {r.key}" if per_event else "event_guid"
    current = f"(SELECT ctid AS tid, {key_cols}, row_hash, deleted_at FROM {r.table}"
    current += (
        " WHERE account = $2 AND event_guid = ANY($1::text[]))"
        if per_event
        else " WHERE account = $1)"
    )
    too_long = _too_long(r, "s")
    return f"""
CREATE TEMP TABLE {KEYS} ON COMMIT DROP AS
SELECT x.op, s.ctid AS s_tid, c.tid AS c_tid
FROM {STAGE} s
FULL JOIN {current} c ON {r.on("c", "s")}
CROSS JOIN LATERAL (
    SELECT CASE
        WHEN {too_long} THEN 'reject'
        WHEN s.event_guid IS NULL THEN CASE WHEN c.deleted_at IS NULL THEN 'delete' END
        WHEN c.event_guid IS NULL OR c.deleted_at IS NOT NULL THEN 'insert'
        WHEN s.row_hash <> c.row_hash THEN 'update'
    END AS op
) AS x
WHERE x.op IS NOT NULL
"""


# A staged row with a key too long to store is no change at all: not an insert or update (it
# cannot be stored), and not a delete of the stored row of the same key (if any). The diff's own
# scan of the staging table marks it `reject`; this counts those few rows per event (by tuple
# id) and drops them, so no statement scans the stage for them.
TAKE_REJECTS = f"""
WITH r AS (DELETE FROM {KEYS} WHERE op = 'reject' RETURNING s_tid)
SELECT event_guid, count(*) AS rejected FROM {STAGE}
WHERE ctid = ANY(ARRAY(SELECT s_tid FROM r)) GROUP BY 1
"""


def _has_modified(resource: Resource) -> bool:
    return any(f.column == "last_modified" for f in resource.fields)


def _diff(r: _Shape) -> str:
    # The differing rows' whole data, fetched by tuple id (no second scan of either table).
    resource, key = r.resource, r.key
    # Staged values the diff table carries for the upsert (identity lives in event_guid and
    # record_key; client_id is carried as the change's, the staged one for all but deletes).
    carried = [c for c in r.data_cols if c not in ("event_guid", key, "client_id")]
    s_client_id = "s.client_id" if r.client else "NULL::text"
    c_client_id = "c.client_id" if r.client else "NULL::text"
    modified = (
        "CASE WHEN k.op = 'delete' THEN c.last_modified ELSE s.last_modified END"
        if _has_modified(resource)
        else "NULL::timestamptz"
    )
    return f"""
CREATE TEMP TABLE {DIFF} ON COMMIT DROP AS
SELECT k.op AS op,
       coalesce(s.event_guid, c.event_guid) AS event_guid,
       coalesce(s.{key}, c.{key}) AS record_key,
       CASE WHEN k.op = 'delete' THEN {c_client_id} ELSE {s_client_id} END AS client_id,
       NULL::text AS old_key,
       k.c_tid AS c_tid,
       CASE WHEN k.op = 'update' THEN {_changed_fields(resource, _column("c"), _column("s"))}
            ELSE '{{}}'::text[] END AS changed_fields,
       CASE WHEN k.op <> 'insert' THEN {_image(resource, "c")} END AS before,
       CASE WHEN k.op <> 'delete' THEN {_image(resource, "s")} END AS after,
       {modified} AS source_modified_at,
       {", ".join(f"s.{c}" for c in carried)}
FROM {KEYS} k
LEFT JOIN (
    SELECT ctid AS tid, * FROM {STAGE}
    WHERE ctid = ANY(ARRAY(SELECT s_tid FROM {KEYS} WHERE s_tid IS NOT NULL))
) s ON s.tid = k.s_tid
LEFT JOIN (
    SELECT ctid AS tid, * FROM {r.table}
    WHERE ctid = ANY(ARRAY(SELECT c_tid FROM {KEYS} WHERE c_tid IS NOT NULL))
) c ON c.tid = k.c_tid
"""


# A record without its key could be any stored row: none of them may be inferred deleted from
# this dump (its inserts and updates are still right).
SUPPRESS_DELETES = f"DELETE FROM {DIFF} WHERE op = 'delete'"

# Statistics for the columns later statements join and filter on; the before/after images are
# wide JSON, and sampling them was most of the ANALYZE (0.6 s at 40k rows).
ANALYZE_DIFF = f"ANALYZE {DIFF} (op, event_guid, client_id, record_key)"

# The planner guesses a handful of rows for "GROUP BY .. HAVING count(*) = 1" and picks nested
# loops over the diff table: seconds for a thousand rekeys among 40,000 changes (measured:
# 7.8 s). Hash joins are linear whatever the guess: pair_rekeys runs between these two.
NESTLOOP_OFF = "SET LOCAL enable_nestloop = off"
NESTLOOP_ON = "SET LOCAL enable_nestloop = on"


def _pair_rekeys(r: _Shape) -> str:
    changed = _changed_fields(r.resource, _member("old.before"), _member("d.after"))
    return f"""
WITH vanished AS (
    SELECT event_guid, client_id FROM {DIFF}
    WHERE op = 'delete' AND client_id IS NOT NULL
    GROUP BY event_guid, client_id HAVING count(*) = 1
), born AS (
    SELECT event_guid, client_id FROM {DIFF}
    WHERE op = 'insert' AND client_id IS NOT NULL
    GROUP BY event_guid, client_id HAVING count(*) = 1
), pairs AS (
    SELECT event_guid, client_id FROM vanished JOIN born USING (event_guid, client_id)
), old AS (
    DELETE FROM {DIFF} d USING pairs p
    WHERE d.op = 'delete' AND d.event_guid = p.event_guid AND d.client_id = p.client_id
    RETURNING d.event_guid, d.client_id, d.record_key, d.before, d.c_tid
)
UPDATE {DIFF} d
SET op = 'rekey',
    old_key = old.record_key,
    c_tid = old.c_tid,
    before = old.before,
    changed_fields = {changed}
FROM old
WHERE d.op = 'insert' AND d.event_guid = old.event_guid AND d.client_id = old.client_id
"""


def _diff_counts(r: _Shape) -> str:
    return f"""
SELECT {r.scope_name} AS event_guid,
       count(*) FILTER (WHERE op = 'insert') AS inserts,
       count(*) FILTER (WHERE op = 'delete') AS deletes
FROM {DIFF} GROUP BY 1
"""


def _drop_held(r: _Shape) -> str:
    return f"DELETE FROM {DIFF} WHERE {r.scope_name} = ANY($1::text[])"


# An update whose hash moved but no value did (e.g. a new hash function) refreshes the row but
# is no change.
_EMITTED = "op <> 'update' OR cardinality(changed_fields) > 0"
COUNT_CHANGES = f"SELECT op, count(*) FROM {DIFF} WHERE {_EMITTED} GROUP BY op"


def _soft_delete_state(r: _Shape) -> str:
    # By tuple id, taken in the diff before anything moved: the vanished rows (for a rekey, the
    # old key's row). Runs before the upsert, which never touches these rows anyway.
    return f"""
UPDATE {r.table} SET deleted_at = now(), deleted_run = $1, last_changed_run = $1
WHERE ctid = ANY(ARRAY(SELECT c_tid FROM {DIFF} WHERE op IN ('delete', 'rekey')))
"""


def _upsert_state(r: _Shape) -> str:
    values = ", ".join(
        "d.event_guid" if c == "event_guid" else "d.record_key" if c == r.key else f"d.{c}"
        for c in r.data_cols
    )
    return f"""
INSERT INTO {r.table} ({", ".join(r.data_cols)},
                 first_seen_run, last_stored_run, last_changed_run, deleted_at, deleted_run,
                 account)
SELECT {values}, $1, $1, $1, NULL, NULL, $2
FROM {DIFF} d
WHERE d.op IN ('insert', 'update', 'rekey')
ON CONFLICT (account, {", ".join(r.keys)}) DO UPDATE SET
    {", ".join(f"{c} = EXCLUDED.{c}" for c in r.data_cols if c not in r.keys)},
    last_stored_run = EXCLUDED.last_stored_run,
    last_changed_run = EXCLUDED.last_changed_run,
    deleted_at = NULL,
    deleted_run = NULL
"""


LOCK_SEQ = "SELECT pg_advisory_xact_lock($1)"

# The change feed's wake-up, sent in the unit's transaction: PostgreSQL delivers a NOTIFY only
# when (and if) its transaction commits, so a listener wakes exactly when new change rows become
# visible. The payload is the unit's last seq, as text, never data. The feed listens on
# CHANGES_CHANNEL. It is part of the statement that inserts the change rows: the seq lock is held
# from that statement to commit, and every unit of every account waits for it, so the
# statements under it are as few as they can be.
CHANGES_CHANNEL = "syncsvc_changes"
_SEQS_AND_NOTIFY = f"""SELECT first_seq, last_seq,
       CASE WHEN last_seq IS NOT NULL THEN pg_notify('{CHANGES_CHANNEL}', last_seq::text) END
           AS notified
FROM (SELECT min(seq) AS first_seq, max(seq) AS last_seq FROM inserted) AS seqs"""


def _insert_changes(r: _Shape) -> str:
    return f"""
WITH inserted AS (
    INSERT INTO changes (seq, run_id, fetch_id, entity, event_guid, record_key, client_id, op,
                         changed_fields, before, after, source_modified_at, account)
    SELECT (SELECT coalesce(max(seq), 0) FROM changes)
               + row_number() OVER (ORDER BY event_guid, record_key),
           $1, $2, '{r.resource.entity}', event_guid, record_key, client_id, op,
           changed_fields, before, after, source_modified_at, $3
    FROM {DIFF}
    WHERE {_EMITTED}
    RETURNING seq
)
{_SEQS_AND_NOTIFY}
"""


# --- the first load: an empty scope, every staged row an insert ----------------------------------


# EXISTS over a big table guesses that the first matching row comes early in a sequential scan;
# for a new event (no row at all, the very case the first load is for) it reads the whole table
# (measured: 0.15-0.2 s on 1M users, growing with the table). The key's index answers in 0.1 ms.
SEQSCAN_OFF = "SET LOCAL enable_seqscan = off"
SEQSCAN_ON = "SET LOCAL enable_seqscan = on"


def _scope_has_rows(r: _Shape) -> str:
    # Any row, deleted ones too: a deleted row's key coming back is an insert the upsert must
    # merge into that row (its first_seen_run stays), which the first-load path does not do.
    where = (
        " WHERE account = $2 AND event_guid = ANY($1::text[])"
        if r.resource.per_event
        else " WHERE account = $1"
    )
    return f"SELECT EXISTS (SELECT FROM {r.table}{where}) AS found"


def _load_state(r: _Shape) -> str:
    # What upsert_state writes for an insert, from the staged row itself. No row of the scope
    # exists (scope_has_rows, under the scope's locks) and the stage holds each key once, so
    # nothing conflicts. A key too long to store is left out, as the diff rejects it.
    return f"""
INSERT INTO {r.table} ({", ".join(r.data_cols)},
                 first_seen_run, last_stored_run, last_changed_run, deleted_at, deleted_run,
                 account)
SELECT {", ".join(f"s.{c}" for c in r.data_cols)}, $1, $1, $1, NULL, NULL, $2
FROM {STAGE} s
WHERE ({_too_long(r, "s")}) IS NOT TRUE
"""


def _image_of_row(resource: Resource, alias: str) -> tuple[str, str]:
    """`_image` as to_jsonb of a row whose columns carry the API names: the same jsonb (each
    value converts alike; jsonb orders keys itself) for a quarter less CPU on a million rows.
    (the expression, the LATERAL subquery it reads)"""
    cols = [f'{alias}.{f.column} AS "{f.api}"' for f in resource.fields]
    cols.append(f'{alias}.extras AS "{EXTRAS}"')
    return "to_jsonb(img)", f"CROSS JOIN LATERAL (SELECT {', '.join(cols)}) AS img"


def _load_changes(r: _Shape) -> str:
    # What insert_changes writes for the diff's inserts: seq in (event_guid, key) order, no
    # changed fields, no before image, the staged row as the after image.
    image, lateral = _image_of_row(r.resource, "s")
    client_id = "s.client_id" if r.client else "NULL::text"
    modified = "s.last_modified" if _has_modified(r.resource) else "NULL::timestamptz"
    return f"""
WITH inserted AS (
    INSERT INTO changes (seq, run_id, fetch_id, entity, event_guid, record_key, client_id, op,
                         changed_fields, before, after, source_modified_at, account)
    SELECT (SELECT coalesce(max(seq), 0) FROM changes)
               + row_number() OVER (ORDER BY s.event_guid, s.{r.key}),
           $1, $2, '{r.resource.entity}', s.event_guid, s.{r.key}, {client_id}, 'insert',
           '{{}}'::text[], NULL::jsonb, {image}, {modified}, $3
    FROM {STAGE} s
    {lateral}
    WHERE ({_too_long(r, "s")}) IS NOT TRUE
    RETURNING seq
)
{_SEQS_AND_NOTIFY}
"""


# The fence: the unit's run must still be `running`; FOR SHARE holds its row lock to commit.
CHECK_FENCE = (
    "SELECT status, (SELECT min(id) FROM runs WHERE id > $1) AS newer"
    " FROM runs WHERE id = $1 FOR SHARE"
)

# The unit's own row must still be open: a queued unit can be attempted twice (a job redelivered
# after its worker was declared dead), and only the first attempt to commit applies anything.
# FOR UPDATE holds it to commit, after the run row's lock (the order every writer takes them in).
CHECK_UNIT_OPEN = "SELECT status FROM fetches WHERE id = $1 FOR UPDATE"

# finished_at is the clock's, not now(): now() is the transaction's start, which a unit's
# transaction takes at its dump's first bytes, so a million-record unit "finished" minutes before
# it committed.
RECORD_FETCH = """
UPDATE fetches SET status = $2, records = $3, rejected = $4, duplicates = $5,
       inserted = $6, updated = $7, deleted = $8, rekeyed = $9,
       stage_seconds = $10, apply_seconds = $11, details = details || $12::jsonb,
       attempts = coalesce($13, attempts), http_status = coalesce($14, http_status),
       bytes = coalesce($15, bytes), fetch_seconds = coalesce($16, fetch_seconds),
       error_message = coalesce($17, error_message), finished_at = clock_timestamp()
WHERE id = $1
"""


@dataclass(frozen=True, slots=True)
class Statements:
    """One resource's statements, in the order a unit runs them. Parameters next to each."""

    stage_columns: tuple[str, ...]
    create_stage: str
    truncate_stage: str
    dedupe_stage: str  # -> (event_guid, duplicates)
    lock_scope: str  # $1 scope names (event GUIDs, '*' for event.do), $2 account
    diff_keys: str  # $1 scope event GUIDs, $2 account (event.do: $1 account)
    take_rejects: str  # -> (event_guid, rejected): staged rows whose keys are too long to store
    diff: str
    suppress_deletes: str  # -> status "DELETE n"
    analyze_diff: str
    pair_rekeys: str  # users, exhibitors (between NESTLOOP_OFF and NESTLOOP_ON)
    diff_counts: str  # -> (event_guid, inserts, deletes)
    drop_held: str  # $1 held event GUIDs ('*' for event.do)
    count_changes: str  # -> (op, count)
    soft_delete_state: str  # $1 run_id
    upsert_state: str  # $1 run_id, $2 account
    lock_seq: str  # $1 lock key
    insert_changes: str  # $1 run_id, $2 fetch_id, $3 account -> (first_seq, last_seq)
    check_fence: str  # $1 run_id -> (status, newer)
    record_fetch: str  # $1 fetch_id, $2.. the unit's figures (see UnitWriter)
    # The first load (after lock_scope; then check_fence, lock_seq, load_changes, record_fetch):
    scope_has_rows: str  # $1 scope event GUIDs, $2 account (event.do: $1 account) -> (found)
    load_state: str  # $1 run_id, $2 account -> status "INSERT 0 n"
    load_changes: str  # $1 run_id, $2 fetch_id, $3 account -> (first_seq, last_seq)


@functools.cache
def statements(resource: Resource) -> Statements:
    """Generate `resource`'s statements from the catalog."""
    r = _Shape.of(resource)
    return Statements(
        stage_columns=(*r.data_cols, "ord", "kh"),
        create_stage=_create_stage(r),
        truncate_stage=f"TRUNCATE {STAGE}",
        dedupe_stage=_dedupe_stage(r),
        lock_scope=_lock_scope(r),
        diff_keys=_diff_keys(r),
        take_rejects=TAKE_REJECTS,
        diff=_diff(r),
        suppress_deletes=SUPPRESS_DELETES,
        analyze_diff=ANALYZE_DIFF,
        pair_rekeys=_pair_rekeys(r),
        diff_counts=_diff_counts(r),
        drop_held=_drop_held(r),
        count_changes=COUNT_CHANGES,
        soft_delete_state=_soft_delete_state(r),
        upsert_state=_upsert_state(r),
        lock_seq=LOCK_SEQ,
        insert_changes=_insert_changes(r),
        check_fence=CHECK_FENCE,
        record_fetch=RECORD_FETCH,
        scope_has_rows=_scope_has_rows(r),
        load_state=_load_state(r),
        load_changes=_load_changes(r),
    )
