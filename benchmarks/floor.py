"""The floor: the same dump files parsed by bare lxml, COPYed by bare asyncpg, diffed by bare SQL.

No HTTP, no typing, no change log JSON: every record becomes (event_guid, key, text[] of its
children's texts), goes into an UNLOGGED staging table with copy_records_to_table, and a set-based
diff (md5 of the values computed in SQL) counts and applies inserts, updates and deletes against a
current table. It is what a single process cannot go below with these libraries, sequentially.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg
from lxml import etree

from syncsvc import catalog


def database_url(server_url: str, name: str) -> str:
    """The server's URL with another database (keeps a ?host=/socket/dir query intact)."""
    parts = urlsplit(server_url)
    return urlunsplit(parts._replace(path="/" + name))


RESOURCES = {r.entity: r for r in (catalog.USERS, catalog.SESSIONS, catalog.EXHIBITORS)}
BATCH = 10_000


def resource_of(path: Path) -> catalog.Resource | None:
    # Cache files are named {tag}-{entity}-{scope}-d{day}.xml by the simulator.
    return RESOURCES.get(path.name.split("-")[1])


def records(path: Path, res: catalog.Resource) -> Iterator[tuple[str, str, list[str | None]]]:
    """iterparse + clear: the cheapest lxml path from bytes to per-record Python values."""
    for _, elem in etree.iterparse(str(path), tag=res.record, resolve_entities=False):
        vals: list[str | None] = []
        event = key = None
        for child in elem:
            text = "".join(child.itertext()) if len(child) else child.text
            if child.tag == "eventGUID":
                event = text
            elif child.tag == res.key:
                key = text
            vals.append(text)
        elem.clear(keep_tail=False)
        while elem.getprevious() is not None:
            del elem.getparent()[0]
        yield event or "", key or "", vals


DIFF = """
WITH s AS (SELECT entity, event_guid, rkey, md5(array_to_string(vals, chr(31), '')) h, vals
           FROM {stage}),
d AS (
  SELECT coalesce(s.entity, c.entity) entity, coalesce(s.event_guid, c.event_guid) event_guid,
         coalesce(s.rkey, c.rkey) rkey, s.vals, s.h,
         CASE WHEN c.rkey IS NULL THEN 'i' WHEN s.rkey IS NULL THEN 'd' ELSE 'u' END op
  FROM s FULL JOIN {current} c USING (entity, event_guid, rkey)
  WHERE c.rkey IS NULL OR s.rkey IS NULL OR c.h <> s.h
),
del AS (DELETE FROM {current} c USING d
        WHERE d.op = 'd' AND (c.entity, c.event_guid, c.rkey) = (d.entity, d.event_guid, d.rkey)),
upd AS (UPDATE {current} c SET vals = d.vals, h = d.h FROM d
        WHERE d.op = 'u' AND (c.entity, c.event_guid, c.rkey) = (d.entity, d.event_guid, d.rkey)),
ins AS (INSERT INTO {current} SELECT entity, event_guid, rkey, h, vals FROM d WHERE op = 'i')
SELECT count(*) FROM d
"""


async def floor_day(server_url: str, files: list[Path], state: dict[str, Any]) -> float:
    """Sync one day's dump files the bare way; return the seconds it took (setup excluded)."""
    if "conn" not in state:
        name = f"syncsvc_floor_{uuid.uuid4().hex[:8]}"
        admin = await asyncpg.connect(server_url)
        await admin.execute(f'CREATE DATABASE "{name}"')
        conn = await asyncpg.connect(database_url(server_url, name))
        await conn.execute(
            "CREATE TABLE cur (entity text, event_guid text, rkey text, h text, vals text[],"
            " PRIMARY KEY (entity, event_guid, rkey))"
        )

        async def close() -> None:
            await conn.close()
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            await admin.close()

        state.update(conn=conn, _close=[*state.get("_close", []), close])
    conn = state["conn"]
    started = time.perf_counter()
    async with conn.transaction():
        await conn.execute(
            "CREATE TEMP TABLE stage (entity text, event_guid text, rkey text, vals text[])"
            " ON COMMIT DROP"
        )
        for path in files:
            res = resource_of(path)
            if res is None:
                continue
            batch: list[tuple[str, str, str, list[str | None]]] = []
            for ev, key, vals in records(path, res):
                batch.append((res.entity, ev, key, vals))
                if len(batch) >= BATCH:
                    await conn.copy_records_to_table("stage", records=batch)
                    batch = []
            await conn.copy_records_to_table("stage", records=batch)
        await conn.execute("ANALYZE stage")
        state["changes"] = await conn.fetchval(DIFF.format(stage="stage", current="cur"))
    return time.perf_counter() - started
