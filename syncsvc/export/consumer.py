"""The consumer cursor an export reads and advances (the `consumers` table of migration 0003).

Kept to two small functions so the feed's own consumer API can replace them in one place.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from syncsvc.errors import ConfigError, StoreError

FILTER_KEYS = ("entity", "op", "event", "environment")


@dataclass(frozen=True, slots=True)
class Consumer:
    name: str
    cursor: int
    filters: dict[str, list[str]]


async def read_consumer(conn: Any, name: str) -> Consumer:
    """The consumer's acknowledged cursor and filters (asyncpg connection)."""
    row = await conn.fetchrow(
        "SELECT cursor, filters::text AS filters FROM consumers WHERE name = $1", name
    )
    if row is None:
        raise ConfigError(f"no consumer named {name!r}", setting="consumer")
    raw = json.loads(row["filters"] or "{}")
    filters = {k: [str(v) for v in raw[k]] for k in FILTER_KEYS if raw.get(k)}
    return Consumer(name, int(row["cursor"]), filters)


async def advance_cursor(conn: Any, name: str, old: int, new: int) -> None:
    """Move the cursor from `old` to `new`, only if nobody moved it meanwhile."""
    status = await conn.execute(
        'UPDATE consumers SET "cursor" = $3, updated_at = now() WHERE name = $1 AND "cursor" = $2',
        name,
        old,
        new,
    )
    if status != "UPDATE 1":
        raise StoreError(
            f"consumer {name!r} moved from cursor {old} during the export: its manifest is "
            "written, its cursor left as the other writer set it"
        )
