"""`syncsvc dbt-sources`: a dbt `sources.yml` for syncsvc's tables and history views.

Column descriptions come from the resource catalog (`DESCRIPTIONS`) and the schema's comments.
Freshness: the change log and the history views carry their own load time (`captured_at`,
`valid_from`); a current-state table has none of its own (a run that changes nothing touches
no row), so its freshness is the last time a unit of its entity was applied
(`loaded_at_query` over `fetches`, dbt >= 1.10).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from syncsvc.catalog import RESOURCES, describe
from syncsvc.export.history import view_name
from syncsvc.store.schema import changes, runs, state_tables

_STATE_EXTRA = {
    "extras": "Elements the catalog does not know, kept verbatim (name -> text).",
    "row_hash": "Hash of the normalized record (syncsvc's change detection).",
    "first_seen_run": "The run that first stored the record.",
    "last_stored_run": "The last run that stored the record's values (insert, update, rekey).",
    "last_changed_run": "The last run that changed the record.",
    "deleted_at": "Set when a complete dump lacked the record (soft delete); null while live.",
    "deleted_run": "The run that soft-deleted the record.",
}
_CHANGES = {
    "seq": "Strictly increasing in commit order: read seq > cursor and miss nothing.",
    "run_id": "The run that captured the change.",
    "fetch_id": "The unit (fetches row) that captured the change.",
    "entity": "event, user, session or exhibitor.",
    "event_guid": "The record's event.",
    "record_key": "The record's key within its event (for a rekey, the new key).",
    "client_id": "The record's clientID (the before image's for a delete).",
    "op": "insert, update, delete or rekey.",
    "changed_fields": "API names of the fields that differ (custom fields as custom.<code>).",
    "before": "The whole record before the change, as JSON (null for an insert).",
    "after": "The whole record after the change, as JSON (null for a delete).",
    "source_modified_at": "The source's lastModified of the record.",
    "captured_at": "When syncsvc captured the change (the start of the transaction that wrote it).",
}
_HISTORY = {
    "valid_from": "When this version began: the captured_at of the change that started it.",
    "valid_to": "When this version ended (the next change's captured_at); null while current.",
    "is_current": "True for the version in force now.",
    "started_by_seq": "The change (seq) that started this version.",
    "ended_by_seq": "The change (seq) that ended it; null while current.",
    "started_by_run": "The run that captured the starting change.",
    "started_by_op": "insert, update or rekey.",
}


@dataclass(frozen=True, slots=True)
class Freshness:
    warn_hours: int = 26
    error_hours: int = 50


def _columns(pairs: list[tuple[str, str]]) -> list[dict[str, Any]]:
    return [{"name": n, "description": d} if d else {"name": n} for n, d in pairs]


def sources(schema: str, database: str | None, freshness: Freshness) -> dict[str, Any]:
    """The sources document as data (rendered by `render`)."""
    fresh = {
        "warn_after": {"count": freshness.warn_hours, "period": "hour"},
        "error_after": {"count": freshness.error_hours, "period": "hour"},
    }
    tables: list[dict[str, Any]] = []
    for r in RESOURCES:
        table = state_tables[r.entity]
        pairs = [(f.column, describe(r, f)) for f in r.fields]
        pairs += [(c.name, _STATE_EXTRA.get(c.name, "")) for c in table.c if c.name in _STATE_EXTRA]
        tables.append(
            {
                "name": r.table,
                "description": f"The current state of every {r.entity} syncsvc has seen "
                "(deleted_at is null for the live ones).",
                "config": {
                    "freshness": fresh,
                    "loaded_at_query": (
                        f"select max(finished_at) from {schema}.fetches "
                        f"where entity = '{r.entity}' and status = 'applied'"
                    ),
                },
                "columns": _columns(pairs),
            }
        )
    tables.append(
        {
            "name": changes.name,
            "description": "The change log: one row per changed record, in commit (seq) order.",
            "config": {"freshness": fresh, "loaded_at_field": "captured_at"},
            "columns": _columns([(c.name, _CHANGES.get(c.name, "")) for c in changes.c]),
        }
    )
    for r in RESOURCES:
        key = r.key_field
        pairs = [("event_guid", describe(r, r.field("eventGUID")))]
        pairs += [(f.column, describe(r, f)) for f in r.fields if f.column != "event_guid"]
        pairs.append(("extras", _STATE_EXTRA["extras"]))
        if r.has_client_id:
            pairs.append(
                (
                    f"previous_{key.column}",
                    f"For a version started by a rekey, the {key.api} "
                    "it replaced (the same clientID's history continues).",
                )
            )
        pairs += list(_HISTORY.items())
        tables.append(
            {
                "name": view_name(r),
                "description": f"SCD2 history of {r.table}: one row per version. As of T: "
                "valid_from <= T and (valid_to is null or valid_to > T).",
                "config": {"freshness": fresh, "loaded_at_field": "valid_from"},
                "columns": _columns(pairs),
            }
        )
    tables.append(
        {
            "name": runs.name,
            "description": "Every sync run: status, timing, counts.",
            "config": {
                # a failed run loaded nothing: it must not look fresh
                "freshness": {**fresh, "filter": "status in ('succeeded', 'partial')"},
                "loaded_at_field": "finished_at",
            },
            "columns": _columns([(c.name, c.comment or "") for c in runs.c]),
        }
    )
    source: dict[str, Any] = {
        "name": "syncsvc",
        "description": "Cvent Conference data synced by syncsvc: current state, change log, "
        "history.",
        "schema": schema,
        "loader": "syncsvc",
    }
    if database:
        source["database"] = database
    source["tables"] = tables
    return {"version": 2, "sources": [source]}


def _scalar(value: Any) -> str:
    # JSON scalars are valid YAML scalars: strings come out quoted and escaped.
    return json.dumps(value)


def _emit(value: Any, indent: int, out: list[str]) -> None:
    pad = " " * indent
    if isinstance(value, dict):
        for k, v in value.items():
            if isinstance(v, dict | list) and v:
                out.append(f"{pad}{k}:")
                _emit(v, indent + 2, out)
            else:
                out.append(f"{pad}{k}: {_scalar(v)}")
    elif isinstance(value, list):
        for item in value:
            if isinstance(item, dict):
                first = True
                for k, v in item.items():
                    lead = f"{pad}- " if first else f"{pad}  "
                    first = False
                    if isinstance(v, dict | list) and v:
                        out.append(f"{lead}{k}:")
                        _emit(v, indent + 4, out)
                    else:
                        out.append(f"{lead}{k}: {_scalar(v)}")
            else:
                out.append(f"{pad}- {_scalar(item)}")


def render(doc: dict[str, Any]) -> str:
    out = ["# Generated by `syncsvc dbt-sources`; regenerate after upgrading syncsvc."]
    _emit(doc, 0, out)
    return "\n".join(out) + "\n"
