"""The stage/diff/apply SQL, as named statements generated once per resource from the catalog.

Every statement is set-based and takes bound parameters only ($1, $2, ...); identifiers come from
the catalog, never from data. Read them top to bottom: they run in this order inside one unit's
transaction (see syncsvc.store.unit).
"""

from __future__ import annotations

from dataclasses import dataclass

from syncsvc.cvent.catalog import CUSTOM_PREFIX, FieldKind, Resource
from syncsvc.records import EXTRAS, EXTRAS_PREFIX

# Transaction-level advisory lock serializing change-log `seq` allocation (commit order).
SEQ_LOCK_KEY = 0x5E9C_5EC0_0001

STAGE = "syncsvc_stage"
DIFF = "syncsvc_diff"
CHANGES = "syncsvc_unit_changes"

_SQL_TYPES = {
    FieldKind.TEXT: "text",
    FieldKind.INT: "bigint",
    FieldKind.DATE: "date",
    FieldKind.DATETIME: "timestamptz",
    FieldKind.REFS: "text[]",
    FieldKind.CUSTOM: "jsonb",
}


def _image(resource: Resource, alias: str) -> str:
    """The whole record as JSON keyed by API names (custom fields and extras included)."""
    pairs = [f"'{f.api}', {alias}.{f.column}" for f in resource.fields]
    pairs.append(f"'{EXTRAS}', {alias}.extras")
    return "jsonb_build_object(" + ", ".join(pairs) + ")"


def _jsonb_key_diff(prefix: str, column: str) -> str:
    """Names `<prefix><key>` of the keys whose value differs between s.<column> and c.<column>."""
    return (
        f"ARRAY(SELECT '{prefix}' || k FROM jsonb_object_keys("
        f"coalesce(s.{column}, '{{}}'::jsonb) || coalesce(c.{column}, '{{}}'::jsonb)) AS k "
        f"WHERE s.{column} -> k IS DISTINCT FROM c.{column} -> k ORDER BY k)"
    )


def _changed_fields(resource: Resource) -> str:
    """API names of the differing fields between s (staged) and c (current), catalog order."""
    plain = [
        f"CASE WHEN s.{f.column} IS DISTINCT FROM c.{f.column} THEN '{f.api}' END"
        for f in resource.fields
        if f.kind is not FieldKind.CUSTOM
    ]
    parts = [f"array_remove(ARRAY[{', '.join(plain)}]::text[], NULL)"]
    parts += [
        _jsonb_key_diff(CUSTOM_PREFIX, f.column)
        for f in resource.fields
        if f.kind is FieldKind.CUSTOM
    ]
    parts.append(_jsonb_key_diff(EXTRAS_PREFIX, "extras"))
    return " || ".join(parts)


@dataclass(frozen=True, slots=True)
class Statements:
    """The statements of one resource. Parameters are documented next to each."""

    entity: str
    table: str
    key: str  # the key column (events: event_guid)
    stage_columns: tuple[str, ...]
    create_stage: str
    truncate_stage: str
    dedupe_stage: str  # -> deleted rows = duplicates dropped (last wins)
    diff: str  # $1 scope event GUIDs (data entities only)
    pair_rekeys: str  # users, exhibitors
    hold_counts: str  # -> (event_guid, deletes, live)
    drop_held: str  # $1 held event GUIDs
    build_changes: str
    upsert_state: str  # $1 run_id
    soft_delete_state: str  # $1 run_id
    lock_seq: str  # $1 lock key
    insert_changes: str  # $1 run_id, $2 fetch_id
    count_changes: str
    analyze_stage: str


def statements(resource: Resource) -> Statements:
    """Generate `resource`'s statements from the catalog."""
    t = resource.table
    key = resource.key_field.column
    per_event = resource.per_event
    cols = [f.column for f in resource.fields]
    stage_columns = (*cols, "extras", "row_hash", "ord")
    keys = ["event_guid", key] if per_event else ["event_guid"]

    def on(a: str, b: str) -> str:
        return " AND ".join(f"{a}.{k} = {b}.{k}" for k in keys)

    col_defs = ", ".join(
        [f"{f.column} {_SQL_TYPES[f.kind]}" for f in resource.fields]
        + ["extras jsonb", "row_hash bytea NOT NULL", "ord bigint NOT NULL"]
    )
    c_client_id = "c.client_id" if resource.has_client_id else "NULL::text"
    s_client_id = "s.client_id" if resource.has_client_id else "NULL::text"
    has_modified = any(f.column == "last_modified" for f in resource.fields)
    modified = (
        "CASE WHEN d.op = 'delete' THEN c.last_modified ELSE s.last_modified END"
        if has_modified
        else "NULL::timestamptz"
    )
    # data entities: only the unit's scope events; event.do lists the whole account
    current = f"(SELECT * FROM {t} WHERE event_guid = ANY($1::text[]))" if per_event else t

    diff = f"""
CREATE TEMP TABLE {DIFF} ON COMMIT DROP AS
SELECT event_guid, record_key, op, client_id, NULL::text AS old_key
FROM (
    SELECT coalesce(s.event_guid, c.event_guid) AS event_guid,
           coalesce(s.{key}, c.{key}) AS record_key,
           CASE
               WHEN s.event_guid IS NULL THEN CASE WHEN c.deleted_at IS NULL THEN 'delete' END
               WHEN c.event_guid IS NULL OR c.deleted_at IS NOT NULL THEN 'insert'
               WHEN s.row_hash <> c.row_hash THEN 'update'
           END AS op,
           CASE WHEN s.event_guid IS NULL THEN {c_client_id} ELSE {s_client_id} END AS client_id
    FROM {STAGE} s
    FULL JOIN {current} c ON {on("c", "s")}
) AS classified
WHERE op IS NOT NULL
"""
    pair_rekeys = f"""
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
    RETURNING d.event_guid, d.client_id, d.record_key
)
UPDATE {DIFF} d SET op = 'rekey', old_key = old.record_key
FROM old
WHERE d.op = 'insert' AND d.event_guid = old.event_guid AND d.client_id = old.client_id
"""

    if per_event:
        hold_counts = f"""
SELECT g.event_guid, g.deletes,
       (SELECT count(*) FROM {t} c WHERE c.event_guid = g.event_guid AND c.deleted_at IS NULL)
           AS live
FROM (SELECT event_guid, count(*) AS deletes FROM {DIFF} WHERE op = 'delete' GROUP BY event_guid)
    AS g
"""
        drop_held = f"DELETE FROM {DIFF} WHERE event_guid = ANY($1::text[])"
    else:
        # event.do lists the whole account: one scope, named '*'
        hold_counts = f"""
SELECT '*' AS event_guid, count(*) AS deletes,
       (SELECT count(*) FROM {t} WHERE deleted_at IS NULL) AS live
FROM {DIFF} WHERE op = 'delete' HAVING count(*) > 0
"""
        drop_held = f"DELETE FROM {DIFF} WHERE '*' = ANY($1::text[])"

    s_key_match = " AND ".join(
        ["s.event_guid = d.event_guid"] + ([f"s.{key} = d.record_key"] if per_event else [])
    )
    c_key_match = " AND ".join(
        ["c.event_guid = d.event_guid"]
        + ([f"c.{key} = coalesce(d.old_key, d.record_key)"] if per_event else [])
    )
    build_changes = f"""
CREATE TEMP TABLE {CHANGES} ON COMMIT DROP AS
SELECT d.event_guid, d.record_key, d.op,
       CASE WHEN d.op = 'delete' THEN {c_client_id} ELSE {s_client_id} END AS client_id,
       CASE WHEN d.op IN ('update', 'rekey') THEN {_changed_fields(resource)}
            ELSE '{{}}'::text[] END AS changed_fields,
       CASE WHEN d.op <> 'insert' THEN {_image(resource, "c")} END AS before,
       CASE WHEN d.op <> 'delete' THEN {_image(resource, "s")} END AS after,
       {modified} AS source_modified_at
FROM {DIFF} d
LEFT JOIN {STAGE} s ON d.op <> 'delete' AND {s_key_match}
LEFT JOIN {t} c ON d.op <> 'insert' AND {c_key_match}
"""

    data_cols = [*cols, "extras", "row_hash"]
    upsert_state = f"""
INSERT INTO {t} ({", ".join(data_cols)},
                 first_seen_run, last_seen_run, last_changed_run, deleted_at, deleted_run)
SELECT {", ".join("s." + c for c in data_cols)}, $1, $1, $1, NULL, NULL
FROM {DIFF} d JOIN {STAGE} s ON {s_key_match}
WHERE d.op IN ('insert', 'update', 'rekey')
ON CONFLICT ({", ".join(keys)}) DO UPDATE SET
    {", ".join(f"{c} = EXCLUDED.{c}" for c in data_cols if c not in keys)},
    last_seen_run = EXCLUDED.last_seen_run,
    last_changed_run = EXCLUDED.last_changed_run,
    deleted_at = NULL,
    deleted_run = NULL
"""
    soft_delete_state = f"""
UPDATE {t} c SET deleted_at = now(), deleted_run = $1, last_changed_run = $1
FROM {DIFF} d
WHERE d.op IN ('delete', 'rekey') AND {c_key_match}
"""
    insert_changes = f"""
INSERT INTO changes (seq, run_id, fetch_id, entity, event_guid, record_key, client_id, op,
                     changed_fields, before, after, source_modified_at)
SELECT (SELECT coalesce(max(seq), 0) FROM changes)
           + row_number() OVER (ORDER BY event_guid, record_key),
       $1, $2, '{resource.entity}', event_guid, record_key, client_id, op,
       changed_fields, before, after, source_modified_at
FROM {CHANGES}
WHERE op <> 'update' OR cardinality(changed_fields) > 0
RETURNING seq
"""
    count_changes = f"""
SELECT op, count(*) FROM {CHANGES}
WHERE op <> 'update' OR cardinality(changed_fields) > 0
GROUP BY op
"""
    dedupe_stage = f"""
WITH dup AS (
    SELECT {", ".join(keys)}, max(ord) AS keep FROM {STAGE}
    GROUP BY {", ".join(keys)} HAVING count(*) > 1
)
DELETE FROM {STAGE} s USING dup d
WHERE {on("s", "d")} AND s.ord <> d.keep
"""
    return Statements(
        entity=resource.entity,
        table=t,
        key=key,
        stage_columns=stage_columns,
        create_stage=f"CREATE TEMP TABLE IF NOT EXISTS {STAGE} ({col_defs}) ON COMMIT DROP",
        truncate_stage=f"TRUNCATE {STAGE}",
        dedupe_stage=dedupe_stage,
        diff=diff,
        pair_rekeys=pair_rekeys,
        hold_counts=hold_counts,
        drop_held=drop_held,
        build_changes=build_changes,
        upsert_state=upsert_state,
        soft_delete_state=soft_delete_state,
        lock_seq="SELECT pg_advisory_xact_lock($1)",
        insert_changes=insert_changes,
        count_changes=count_changes,
        analyze_stage=f"ANALYZE {STAGE}",
    )
