"""The consumer an export reads and the cursor it advances (the feed's `consumers` table).

The lock and the compare-and-set are the feed's own (syncsvc/feed/consumers.py), so an export
and `changes --consumer` or a webhook delivery never read one consumer at once.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from syncsvc.changefeed import CONSUMER_FILTERS
from syncsvc.errors import StoreError
from syncsvc.feed.consumers import UnknownConsumerError, acknowledge

FILTER_KEYS = CONSUMER_FILTERS


@dataclass(frozen=True, slots=True)
class Consumer:
    name: str
    cursor: int
    filters: dict[str, list[str]]
    webhook_url: str | None


async def read_consumer(conn: Any, name: str) -> Consumer:
    """The consumer's acknowledged cursor and filters (asyncpg connection)."""
    row = await conn.fetchrow(
        "SELECT cursor, filters::text AS filters, webhook_url FROM consumers WHERE name = $1",
        name,
    )
    if row is None:
        raise UnknownConsumerError(name)
    raw = json.loads(row["filters"] or "{}")
    filters = {k: [str(v) for v in raw[k]] for k in FILTER_KEYS if raw.get(k)}
    return Consumer(name, int(row["cursor"]), filters, row["webhook_url"])


async def advance_cursor(conn: Any, name: str, old: int, new: int) -> None:
    """Move the cursor from `old` to `new`, only if nobody moved it meanwhile (a reset)."""
    if not await acknowledge(conn, name, old, new):
        raise StoreError(
            f"consumer {name!r} moved from cursor {old} during the export (reset or removed): "
            "its manifest is written, its cursor left as the other writer set it"
        )
