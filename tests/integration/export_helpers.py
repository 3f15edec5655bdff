"""Helpers for the export tests: the CLI in a subprocess, manifests read back and checked, and
the exported files read by DuckDB (an independent reader) into the simulator's typed form."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import subprocess
from pathlib import Path
from typing import Any

import asyncpg
import duckdb
from sqlalchemy.engine import URL

from syncsvc.catalog import BY_ENTITY, RESOURCES, FieldKind, Resource
from syncsvc.store import db
from tests import processes

Key = tuple[str, str]


def cli_env(url: URL, **extra: str) -> dict[str, str]:
    return processes.cli_env(url, **({"SYNCSVC_LOG_LEVEL": "warning"} | extra))


def syncsvc(url: URL, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return processes.run_cli(cli_env(url, **env), *args, timeout=240)


async def add_consumer(url: URL, name: str, cursor: int = 0, filters: str = "{}") -> None:
    conn = await asyncpg.connect(db.libpq_url(url))
    try:
        await conn.execute(
            "INSERT INTO consumers (name, cursor, filters) VALUES ($1, $2, $3::jsonb)",
            name,
            cursor,
            filters,
        )
    finally:
        await conn.close()


async def consumer_cursor(url: URL, name: str) -> int:
    conn = await asyncpg.connect(db.libpq_url(url))
    try:
        return int(await conn.fetchval('SELECT "cursor" FROM consumers WHERE name = $1', name))
    finally:
        await conn.close()


def checked_manifest(directory: Path) -> dict[str, Any]:
    """The manifest, after checking each listed file's size, checksum and row count."""
    manifest: dict[str, Any] = json.loads((directory / "manifest.json").read_text())
    total = 0
    for f in manifest["files"]:
        data = (directory / f["path"]).read_bytes()
        assert len(data) == f["bytes"]
        assert hashlib.sha256(data).hexdigest() == f["sha256"]
        ((rows,),) = duckdb.sql(f"SELECT count(*) FROM '{directory / f['path']}'").fetchall()
        assert rows == f["rows"]
        total += f["rows"]
    assert total == manifest["rows"]
    return manifest


def manifests(root: Path) -> list[tuple[Path, dict[str, Any]]]:
    """Every complete export under root (directories with a manifest), in seq order."""
    found = [d for d in sorted(root.iterdir()) if (d / "manifest.json").exists()]
    return [(d, checked_manifest(d)) for d in found]


def duck_changes(files: list[Path]) -> list[dict[str, Any]]:
    """Change rows from Parquet parts, read by DuckDB, in seq order."""
    if not files:
        return []
    listing = ", ".join(f"'{f}'" for f in files)
    rel = duckdb.sql(f"SELECT * FROM read_parquet([{listing}]) ORDER BY seq")
    names = rel.columns
    return [dict(zip(names, row, strict=True)) for row in rel.fetchall()]


def _typed_value(kind: FieldKind, value: Any) -> Any:
    if value is None:
        return None
    if kind is FieldKind.DATE:
        return dt.date.fromisoformat(value) if isinstance(value, str) else value
    if kind is FieldKind.DATETIME:
        if isinstance(value, str):
            value = dt.datetime.fromisoformat(value)
        return value.astimezone(dt.UTC)
    if kind is FieldKind.CUSTOM:
        return json.loads(value) if isinstance(value, str) else value
    if kind is FieldKind.REFS:
        return list(value)
    return value


def present(record: dict[str, Any]) -> dict[str, Any]:
    """A record without its null fields: absent and null are the same "no value"."""
    return {k: v for k, v in record.items() if v is not None and v != {} and v != []}


def typed_image(resource: Resource, image: dict[str, Any]) -> dict[str, Any]:
    """A JSON image (API names) -> typed values, nulls dropped."""
    return present({f.api: _typed_value(f.kind, image.get(f.api)) for f in resource.fields})


def typed_columns(resource: Resource, row: dict[str, Any]) -> dict[str, Any]:
    """A row keyed by catalog columns -> typed values keyed by API names, nulls dropped."""
    return present({f.api: _typed_value(f.kind, row[f.column]) for f in resource.fields})


def replay(rows: list[dict[str, Any]]) -> dict[str, dict[Key, dict[str, Any]]]:
    """Apply change rows in seq order: the state they describe, per entity."""
    state: dict[str, dict[Key, dict[str, Any]]] = {r.entity: {} for r in RESOURCES}
    for row in rows:
        resource = BY_ENTITY[row["entity"]]
        table = state[row["entity"]]
        key = (row["event_guid"], row["record_key"])
        if row["op"] == "delete":
            del table[key]
            continue
        if row["op"] == "rekey":
            before = json.loads(row["before"])
            del table[(row["event_guid"], before[resource.key])]
        table[key] = typed_image(resource, json.loads(row["after"]))
    return state


def truth(universe: Any, day: int) -> dict[str, dict[Key, dict[str, Any]]]:
    return {
        entity: {key: present(rec) for key, rec in recs.items()}
        for entity, recs in universe.snapshot(day).items()
    }


async def db_state(url: URL) -> dict[str, dict[Key, dict[str, Any]]]:
    """entity -> {(event_guid, key): typed record} of the live rows, read with plain SQL."""
    conn = await asyncpg.connect(db.libpq_url(url))
    try:
        out: dict[str, dict[Key, dict[str, Any]]] = {}
        for r in RESOURCES:
            cols = ", ".join(f.column for f in r.fields)
            rows = await conn.fetch(f"SELECT {cols} FROM {r.table} WHERE deleted_at IS NULL")
            out[r.entity] = {
                (row["event_guid"], row[r.key_field.column]): typed_columns(r, dict(row))
                for row in rows
            }
        return out
    finally:
        await conn.close()
