"""Named consumers of the change log: rows in `consumers`, their cursors, lag and locks.

A consumer's `cursor` is the last seq it acknowledged. It only moves by compare-and-set (an
acknowledgement names the cursor it started from), so a `reset` while a reader or a delivery is
under way is never overwritten by that reader's late acknowledgement: the reader sees the
mismatch and stops (or, for a webhook, starts over from the new cursor).

One reader per consumer at a time: readers take a session-level advisory lock keyed by the name
for as long as they read (`consumer_lock`); a second `changes --consumer X` or a second `serve`
leaves that consumer alone.

Resetting a cursor backwards and adding a consumer take the retention lock, as each batch of
`changes prune` does, so prune never computes its bound from cursors that are about to move back.
"""

from __future__ import annotations

import base64
import contextlib
import json
import re
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from sqlalchemy.ext.asyncio import AsyncEngine

from syncsvc.changefeed import CONSUMER_FILTERS, ENVELOPES
from syncsvc.errors import ConfigError, StoreError
from syncsvc.settings import is_loopback_host
from syncsvc.store.db import raw_connection

NAME_RE = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")
# Advisory lock classes (the two-key form): one per consumer name, one for retention.
CONSUMER_LOCK_CLASS = 0x5EED
RETENTION_LOCK = (0x5EED, 0)
SECRET_PREFIX = "whsec_"  # noqa: S105 (the format's prefix, not a secret)


class ConsumerError(StoreError):
    """A consumer operation was refused."""


class UnknownConsumerError(ConfigError):
    """No consumer has the name given: a usage error (exit 2), like any other bad argument."""

    def __init__(self, name: str) -> None:
        super().__init__(
            f"no consumer named {name!r} (`syncsvc consumers list`)", setting="consumer"
        )


@dataclass(frozen=True, slots=True)
class ConsumerLag:
    """A consumer and how far behind the newest change it is.

    `lag_rows`: change rows with a seq above its cursor (what it has not acknowledged, before its
    filters). `lag_seconds`: how long the oldest change it has not acknowledged has been waiting
    (now - its captured_at); 0 when it is caught up.
    """

    name: str
    cursor: int
    filters: dict[str, list[str]]
    webhook_url: str | None
    status: str
    last_error: str | None
    failing_since: datetime | None
    last_delivered_at: datetime | None
    created_at: datetime
    updated_at: datetime
    envelope: str
    batch_size: int | None
    secret_file: str | None
    inflight_until: int | None
    high_seq: int
    lag_rows: int
    lag_seconds: float


_LAG_SQL = """
WITH high AS (SELECT coalesce(max(seq), 0) AS seq FROM changes)
SELECT c.*, h.seq AS high_seq, greatest(h.seq - c.cursor, 0) AS lag_rows,
       coalesce(extract(epoch FROM now() - (
           SELECT ch.captured_at FROM changes ch WHERE ch.seq > c.cursor ORDER BY ch.seq LIMIT 1
       )), 0)::float8 AS lag_seconds
FROM consumers c CROSS JOIN high h
"""


def _lag(row: Any) -> ConsumerLag:
    filters = row["filters"]
    if isinstance(filters, str):
        filters = json.loads(filters)
    return ConsumerLag(
        name=row["name"],
        cursor=row["cursor"],
        filters=filters,
        webhook_url=row["webhook_url"],
        status=row["status"],
        last_error=row["last_error"],
        failing_since=row["failing_since"],
        last_delivered_at=row["last_delivered_at"],
        created_at=row["created_at"],
        updated_at=row["updated_at"],
        envelope=row["envelope"],
        batch_size=row["batch_size"],
        secret_file=row["secret_file"],
        inflight_until=row["inflight_until"],
        high_seq=int(row["high_seq"]),
        lag_rows=int(row["lag_rows"]),
        lag_seconds=max(0.0, float(row["lag_seconds"])),
    )


async def list_consumers(engine: AsyncEngine) -> list[ConsumerLag]:
    """Every consumer with its lag, by name."""
    async with engine.connect() as conn:
        raw = await raw_connection(conn)
        rows = await raw.fetch(_LAG_SQL + " ORDER BY c.name")
    return [_lag(r) for r in rows]


async def get_consumer(engine: AsyncEngine, name: str) -> ConsumerLag:
    """One consumer with its lag; ConsumerError when there is none of that name."""
    async with engine.connect() as conn:
        raw = await raw_connection(conn)
        row = await raw.fetchrow(_LAG_SQL + " WHERE c.name = $1", name)
    if row is None:
        raise UnknownConsumerError(name)
    return _lag(row)


# --- validation (pure) ---------------------------------------------------------------------------


def check_name(name: str) -> str:
    if not NAME_RE.match(name):
        raise ConfigError(
            f"consumer name {name!r}: use 1-63 of a-z, 0-9, '-' and '_', starting with a letter"
            " or digit"
        )
    return name


def check_webhook_url(url: str) -> str:
    """https, or plain http to loopback; no credentials (a secret in a URL reaches logs)."""
    try:
        parts = urlsplit(url)
        host = parts.hostname
    except ValueError as exc:
        raise ConfigError(f"--webhook is malformed: {exc}") from exc
    if parts.scheme not in ("http", "https") or not host:
        raise ConfigError("--webhook must be an https:// URL")
    if parts.username or parts.password:
        raise ConfigError("--webhook must not carry credentials: sign with --secret-file instead")
    if parts.scheme == "http" and not is_loopback_host(host):
        raise ConfigError(f"--webhook must use https (plain http only to loopback, not {host})")
    return url


def read_secret(path: str | Path) -> str:
    """The signing secret in a file: `whsec_` + base64 of 24 to 64 random bytes (Standard
    Webhooks). Read fresh each time a delivery starts, so a rotated file takes effect then."""
    try:
        text = Path(path).read_text().strip()
    except OSError as exc:
        raise ConfigError(f"cannot read the webhook secret file {path}: {exc.strerror}") from None
    body = text.removeprefix(SECRET_PREFIX)
    try:
        key = base64.b64decode(body, validate=True)
    except ValueError:
        key = b""
    if not text.startswith(SECRET_PREFIX) or not 24 <= len(key) <= 64:
        # Never echo the file's content: it is a secret, even when malformed.
        raise ConfigError(
            f"the webhook secret file {path} must hold whsec_ followed by the base64 of 24 to 64"
            " random bytes (e.g. `python -c \"import base64, os; print('whsec_' +"
            ' base64.b64encode(os.urandom(32)).decode())"`)'
        )
    return text


def check_filters(filters: Mapping[str, Sequence[str]]) -> dict[str, list[str]]:
    from syncsvc.settings import ACCOUNT_NAME_PATTERN, ENVIRONMENTS
    from syncsvc.store.schema import ENTITIES, OPS

    allowed = {"entity": ENTITIES, "op": OPS, "environment": ENVIRONMENTS}
    out: dict[str, list[str]] = {}
    for key, values in filters.items():
        if key not in CONSUMER_FILTERS:
            raise ConfigError(f"unknown consumer filter {key!r}")
        values = list(values)
        bad = [v for v in values if key in allowed and v not in allowed[key]]
        if bad:
            raise ConfigError(f"--{key} {bad[0]!r} is not one of {', '.join(allowed[key])}")
        if key == "account" and (
            slug := next((v for v in values if not ACCOUNT_NAME_PATTERN.fullmatch(v)), None)
        ):
            raise ConfigError(f"--account {slug!r} is not an account name (a-z, 0-9, _, -)")
        if values:
            out[key] = values
    return out


# --- changes -------------------------------------------------------------------------------------


async def _high(raw: Any) -> int:
    return int(await raw.fetchval("SELECT coalesce(max(seq), 0) FROM changes"))


async def add_consumer(
    engine: AsyncEngine,
    name: str,
    *,
    start: str | int = "beginning",
    filters: Mapping[str, Sequence[str]] | None = None,
    webhook_url: str | None = None,
    secret_file: str | None = None,
    envelope: str = "syncsvc",
    batch_size: int | None = None,
) -> ConsumerLag:
    """Create a consumer whose cursor is `start`: "beginning" (0), "now" (the newest seq) or a
    seq. A webhook consumer needs a readable secret file (give an absolute path: `serve` reads
    it, from its own working directory)."""
    check_name(name)
    clean = check_filters(filters or {})
    if envelope not in ENVELOPES:
        raise ConfigError(f"--envelope must be one of {', '.join(ENVELOPES)}")
    if batch_size is not None and batch_size <= 0:
        raise ConfigError("--batch-size must be positive")
    if webhook_url is not None:
        check_webhook_url(webhook_url)
        if not secret_file:
            raise ConfigError("a webhook consumer needs --secret-file (its signing secret)")
        read_secret(secret_file)
    elif secret_file:
        raise ConfigError("--secret-file is for webhook consumers (give --webhook too)")
    async with engine.connect() as conn:
        raw = await raw_connection(conn)
        async with raw.transaction():
            await raw.execute("SELECT pg_advisory_xact_lock($1, $2)", *RETENTION_LOCK)
            cursor = await _start_seq(raw, start)
            inserted = await raw.fetchval(
                """
INSERT INTO consumers (name, cursor, filters, webhook_url, secret_file, envelope, batch_size)
VALUES ($1, $2, $3::jsonb, $4, $5, $6, $7)
ON CONFLICT (name) DO NOTHING RETURNING name
""",
                name,
                cursor,
                json.dumps(clean),
                webhook_url,
                secret_file,
                envelope,
                batch_size,
            )
    if inserted is None:
        raise ConsumerError(f"a consumer named {name!r} exists already")
    return await get_consumer(engine, name)


async def _start_seq(raw: Any, start: str | int) -> int:
    if start == "beginning":
        return 0
    high = await _high(raw)
    if start == "now":
        return high
    try:
        seq = int(start)
    except ValueError:
        raise ConfigError(f"a start must be beginning, now or a seq, not {start!r}") from None
    if not 0 <= seq <= high:
        raise ConfigError(f"seq {seq} is outside the change log (0..{high})")
    return seq


async def reset_consumer(engine: AsyncEngine, name: str, to: str | int) -> tuple[int, int]:
    """Move a consumer's cursor (either way); returns (old, new). Clears an in-flight batch and
    the failing state: the next delivery starts from the new cursor."""
    async with engine.connect() as conn:
        raw = await raw_connection(conn)
        async with raw.transaction():
            await raw.execute("SELECT pg_advisory_xact_lock($1, $2)", *RETENTION_LOCK)
            old = await raw.fetchval(
                "SELECT cursor FROM consumers WHERE name = $1 FOR UPDATE", name
            )
            if old is None:
                raise UnknownConsumerError(name)
            new = await _start_seq(raw, to)
            await raw.execute(
                """
UPDATE consumers SET cursor = $2, inflight_until = NULL, failing_since = NULL, last_error = NULL,
       status = CASE WHEN status = 'failing' THEN 'active' ELSE status END, updated_at = now()
WHERE name = $1
""",
                name,
                new,
            )
    return int(old), new


async def set_paused(engine: AsyncEngine, name: str, paused: bool) -> None:
    async with engine.connect() as conn:
        raw = await raw_connection(conn)
        done = await raw.fetchval(
            """
UPDATE consumers SET status = $2, failing_since = NULL, updated_at = now()
WHERE name = $1 RETURNING name
""",
            name,
            "paused" if paused else "active",
        )
    if done is None:
        raise UnknownConsumerError(name)


async def remove_consumer(engine: AsyncEngine, name: str) -> None:
    async with engine.connect() as conn:
        raw = await raw_connection(conn)
        done = await raw.fetchval("DELETE FROM consumers WHERE name = $1 RETURNING name", name)
    if done is None:
        raise UnknownConsumerError(name)


async def acknowledge(raw: Any, name: str, expected: int, new: int) -> bool:
    """Move the cursor from `expected` to `new` (forward only); False when it was not at
    `expected` any more (reset meanwhile, or removed)."""
    if new < expected:
        raise ValueError("a cursor only moves forward by acknowledgement")
    done = await raw.fetchval(
        """
UPDATE consumers SET cursor = $3, inflight_until = NULL, updated_at = now()
WHERE name = $1 AND cursor = $2 RETURNING name
""",
        name,
        expected,
        new,
    )
    return done is not None


async def ack_only(engine: AsyncEngine, name: str, seq: int) -> tuple[int, int]:
    """`changes --consumer X --ack-only SEQ`: the consumer committed up to SEQ on its side."""
    async with engine.connect() as conn:
        raw = await raw_connection(conn)
        async with raw.transaction():
            old = await raw.fetchval(
                "SELECT cursor FROM consumers WHERE name = $1 FOR UPDATE", name
            )
            if old is None:
                raise UnknownConsumerError(name)
            high = await _high(raw)
            if seq > high:
                raise ConfigError(f"--ack-only {seq} is past the newest change ({high})")
            if seq < old:
                raise ConfigError(
                    f"--ack-only {seq} is behind the cursor ({old}); moving back is"
                    f" `syncsvc consumers reset {name} --to {seq}`"
                )
            await acknowledge(raw, name, int(old), seq)
    return int(old), seq


@contextlib.asynccontextmanager
async def consumer_lock(engine: AsyncEngine, name: str) -> AsyncIterator[Any | None]:
    """A connection holding the consumer's reader lock, or None when another process holds it.
    The lock lives as long as the connection's session: a killed reader frees it."""
    async with engine.connect() as conn:
        raw = await raw_connection(conn)
        got = await raw.fetchval(
            "SELECT pg_try_advisory_lock($1, hashtext($2))", CONSUMER_LOCK_CLASS, name
        )
        try:
            yield raw if got else None
        finally:
            if got:
                with contextlib.suppress(Exception):
                    await raw.execute(
                        "SELECT pg_advisory_unlock($1, hashtext($2))", CONSUMER_LOCK_CLASS, name
                    )
