"""SCD2 history per entity, derived from the change log: one view per entity, `<table>_history`.

Each row is one version of one account's record: `account`, the catalog's fields typed from the
change's `after` image (custom fields and extras as jsonb), `valid_from` (the change's
`captured_at`), `valid_to` (the `captured_at` of the record's next change, null while current)
and `is_current`. A delete
ends a version and starts none; a record that comes back starts a new version under its key.

A rekey (the same `clientID` re-created under a new key, one `rekey` change) ends the old key's
version and starts the new key's at the same instant, so the clientID's history runs on without
a gap; the new version names the key it replaced in `previous_<key>`.

"As of T" is one query:
    SELECT * FROM users_history
    WHERE valid_from <= T AND (valid_to IS NULL OR valid_to > T) [AND event_guid = E]

`valid_from` is when syncsvc captured the change (its unit's transaction), not the source's
`lastModified`: deletes and silent edits have no source time, and the history must answer
"what did the mirror hold at T".

Views, not maintained tables: measured in benchmarks/history_bench.py and docs/warehouse.md.
The migration that creates them holds the SQL this module generates (a test keeps them equal).
"""

from __future__ import annotations

from syncsvc.catalog import RESOURCES, Field, FieldKind, Resource

HISTORY_COLUMNS = (
    "valid_from",
    "valid_to",
    "is_current",
    "started_by_seq",
    "ended_by_seq",
    "started_by_run",
    "started_by_op",
)


def view_name(resource: Resource) -> str:
    return f"{resource.table}_history"


def _typed(f: Field) -> str:
    get, text = f"c.after -> '{f.api}'", f"c.after ->> '{f.api}'"
    match f.kind:
        case FieldKind.TEXT:
            return text
        case FieldKind.INT:
            return f"({text})::bigint"
        case FieldKind.DATE:
            return f"({text})::date"
        case FieldKind.DATETIME:
            return f"({text})::timestamptz"
        case FieldKind.REFS:
            return (
                f"CASE WHEN jsonb_typeof({get}) = 'array' THEN "
                f"ARRAY(SELECT jsonb_array_elements_text({get})) END"
            )
        case FieldKind.CUSTOM:
            return f"NULLIF({get}, 'null'::jsonb)"
    raise AssertionError(f.kind)


def view_sql(resource: Resource) -> str:
    """CREATE VIEW for one entity's history.

    The versions' bounds come from narrow columns only (seq, key, op, captured_at: an
    index-only scan of the covering index migration 0005 adds); the wide `after` image is read
    by primary key for the versions that survive the caller's "as of" filter, which PostgreSQL
    applies before the join. Measured: half the time of a window over the whole rows.
    """
    entity, key = resource.entity, resource.key_field
    marks = (
        "    SELECT seq, account, event_guid, record_key, op, captured_at\n"
        f"    FROM changes WHERE entity = '{entity}'"
    )
    if resource.has_client_id:
        marks += (
            "\n    UNION ALL\n"
            "    -- a rekey also ends the version of the key it replaced\n"
            f"    SELECT seq, account, event_guid, before ->> '{key.api}', 'rekeyed', captured_at\n"
            f"    FROM changes WHERE entity = '{entity}' AND op = 'rekey'"
        )
    fields = ["    v.account", "    v.event_guid"]
    fields += [
        f"    {_typed(f)} AS {f.column}" for f in resource.fields if f.column != "event_guid"
    ]
    fields.append("    NULLIF(c.after -> 'extras', 'null'::jsonb) AS extras")
    if resource.has_client_id:
        fields.append(
            f"    CASE WHEN v.op = 'rekey' THEN c.before ->> '{key.api}' END"
            f" AS previous_{key.column}"
        )
    fields += [
        "    v.captured_at AS valid_from",
        "    v.valid_to",
        "    v.valid_to IS NULL AS is_current",
        "    v.seq AS started_by_seq",
        "    v.ended_by_seq",
        "    c.run_id AS started_by_run",
        "    v.op AS started_by_op",
    ]
    return (
        f"CREATE VIEW {view_name(resource)} AS\n"
        f"WITH marks AS (\n{marks}\n), versions AS (\n"
        "    SELECT m.*, lead(captured_at) OVER w AS valid_to, lead(seq) OVER w AS ended_by_seq\n"
        "    FROM marks m\n"
        "    WINDOW w AS (PARTITION BY account, event_guid, record_key ORDER BY seq)\n"
        ")\n"
        "SELECT\n" + ",\n".join(fields) + "\n"
        "FROM versions v JOIN changes c ON c.seq = v.seq\n"
        "WHERE v.op IN ('insert', 'update', 'rekey')"
    )


def all_views() -> dict[str, str]:
    """view name -> CREATE VIEW statement, for every entity."""
    return {view_name(r): view_sql(r) for r in RESOURCES}


def as_of_query(resource: Resource, *, event: bool = False) -> str:
    """The "as of $1" query (and event_guid = $2 when `event`)."""
    where = "valid_from <= $1 AND (valid_to IS NULL OR valid_to > $1)"
    if event:
        where += " AND event_guid = $2"
    return f"SELECT * FROM {view_name(resource)} WHERE {where}"
