"""Webhook consumers, delivered by `serve`: ordered, signed batches; the cursor moves on a 2xx.

One delivery task per webhook consumer, each holding that consumer's reader lock (so a second
`serve` leaves it alone), all woken by one LISTEN connection (`Waker`) or the poll interval.

A batch is the consumer's next changes after its cursor: at most `batch_size` changes and
`webhook_batch_max_bytes` bytes, sent when full or after `webhook_batch_max_wait` seconds. Before
its first attempt the batch's last seq is written to `consumers.inflight_until`, so a batch re-sent
after a crash (SIGKILL, a lost pod) holds exactly the same changes under the same `webhook-id`,
and a receiver can drop it whole. One batch is in flight per consumer; the next is composed only
after the receiver answered 2xx and the cursor moved, so changes arrive in seq order.

Requests are signed per Standard Webhooks (`webhook-id`, `webhook-timestamp`,
`webhook-signature: v1,<HMAC-SHA256 of id.timestamp.body>`) by the `standardwebhooks` package.
Any other answer (a non-2xx status, a timeout, a refused connection) is retried, for ever, after
an exponential backoff with jitter, or after the receiver's `Retry-After`; after
`webhook_failing_after` seconds of failures the consumer is marked `failing` (status, /metrics,
/healthz) and keeps its place. The signing secret is read from the consumer's secret file, kept
in memory only, registered with the log redaction, and never written anywhere.
"""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
import json
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

import aiohttp
import asyncpg
import sqlalchemy as sa
from prometheus_client import CollectorRegistry, Counter, Gauge
from sqlalchemy.ext.asyncio import AsyncEngine

from syncsvc import logs
from syncsvc.changefeed import ChangeFilter, Window, render, stream_changes
from syncsvc.errors import ConfigError, StoreError, SyncError
from syncsvc.feed import consumers
from syncsvc.feed.waker import Subscription, Waker
from syncsvc.settings import Settings
from syncsvc.store.db import libpq_url

log = logs.get_logger(__name__)

EVENT_TYPE = "syncsvc.changes"


@dataclass(frozen=True, slots=True)
class WebhookRetry:
    """The delay before the next attempt; pure given `random`. Never gives up: a webhook consumer
    keeps its place however long the receiver is away."""

    base: float = 1.0
    cap: float = 300.0
    random: Callable[[], float] = field(default=random.random, compare=False, repr=False)

    @classmethod
    def from_settings(cls, settings: Settings) -> WebhookRetry:
        return cls(base=settings.webhook_retry_base_delay, cap=settings.webhook_retry_max_delay)

    def next_delay(self, attempt: int, retry_after: float | None = None) -> float:
        """Seconds to wait after failed attempt `attempt` (1-based).

        A Retry-After the receiver sent is honoured as given; otherwise "equal jitter":
        uniform(ceiling / 2, ceiling) with ceiling = min(cap, base * 2 ** (attempt - 1)), so a
        crowd of senders spreads out and none hammers a receiver that is down.
        """
        if retry_after is not None:
            return max(0.0, retry_after)  # as the receiver asked: never shortened by the cap
        ceiling = min(self.cap, self.base * 2.0 ** min(attempt - 1, 64))
        return ceiling / 2 + self.random() * ceiling / 2


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Retry-After as seconds: delta-seconds or an HTTP date (RFC 9110); None if absent or bad."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    now = time.time() if now is None else now
    return max(0.0, when.timestamp() - now)


@dataclass(frozen=True, slots=True)
class Batch:
    """One request's worth of a consumer's changes: seq in (after, until]."""

    after: int
    until: int
    changes: int  # change rows in it (a rekey in the Debezium envelope is two objects)
    body: str
    msg_id: str


def batch_body(name: str, after: int, until: int, objects: list[str]) -> str:
    """The request body: a Standard Webhooks payload (type, timestamp, data)."""
    head = json.dumps(
        {
            "type": EVENT_TYPE,
            "timestamp": datetime.now(UTC).isoformat(timespec="milliseconds"),
        }
    )[:-1]
    data = json.dumps({"consumer": name, "after_seq": after, "until_seq": until})[:-1]
    return f'{head},"data":{data},"changes":[{",".join(objects)}]}}}}'


class Signer:
    """Standard Webhooks headers for a body, by the `standardwebhooks` package."""

    def __init__(self, secret: str) -> None:
        try:
            from standardwebhooks import Webhook
        except ImportError as exc:  # an optional extra
            raise ConfigError(
                "webhook consumers need the standardwebhooks package: "
                "pip install 'syncsvc[webhooks]'"
            ) from exc
        self._webhook = Webhook(secret)

    def headers(self, msg_id: str, body: str, now: datetime | None = None) -> dict[str, str]:
        now = now or datetime.now(UTC)
        return {
            "webhook-id": msg_id,
            "webhook-timestamp": str(int(now.timestamp())),
            "webhook-signature": self._webhook.sign(msg_id, now, body),
            "content-type": "application/json",
            "user-agent": "syncsvc",
        }


class FeedMetrics:
    """The change feed's series on the serve registry. Labels: consumer names (operator-chosen,
    validated), outcomes; never a URL or a secret."""

    def __init__(self, registry: CollectorRegistry) -> None:
        r = registry
        self.lag_rows = Gauge(
            "syncsvc_consumer_lag_rows",
            "Change rows above the consumer's cursor.",
            ["consumer"],
            registry=r,
        )
        self.lag_seconds = Gauge(
            "syncsvc_consumer_lag_seconds",
            "Seconds the oldest change the consumer has not acknowledged has waited.",
            ["consumer"],
            registry=r,
        )
        self.failing = Gauge(
            "syncsvc_consumer_failing", "1 while the consumer is failing.", ["consumer"], registry=r
        )
        self.requests = Counter(
            "syncsvc_webhook_requests",
            "Webhook requests by outcome (delivered, http_error, timeout, connection_error).",
            ["consumer", "outcome"],
            registry=r,
        )
        self.delivered = Counter(
            "syncsvc_webhook_changes_delivered",
            "Change rows acknowledged by a webhook receiver.",
            ["consumer"],
            registry=r,
        )
        self._known: set[str] = set()

    def update(self, lags: list[consumers.ConsumerLag]) -> None:
        names = {c.name for c in lags}
        for gone in self._known - names:
            for g in (self.lag_rows, self.lag_seconds, self.failing):
                with contextlib.suppress(KeyError):
                    g.remove(gone)
        self._known = names
        for c in lags:
            self.lag_rows.labels(c.name).set(c.lag_rows)
            self.lag_seconds.labels(c.name).set(c.lag_seconds)
            self.failing.labels(c.name).set(1 if c.status == "failing" else 0)


_LOAD = "SELECT * FROM consumers WHERE name = $1"
_SET_INFLIGHT = """
UPDATE consumers SET inflight_until = $3, updated_at = now()
WHERE name = $1 AND cursor = $2 RETURNING name
"""
_DELIVERED = """
UPDATE consumers SET cursor = $3, inflight_until = NULL, last_delivered_at = now(),
       last_error = NULL, failing_since = NULL, updated_at = now(),
       status = CASE WHEN status = 'failing' THEN 'active' ELSE status END
WHERE name = $1 AND cursor = $2 RETURNING name
"""
_SKIP = """
UPDATE consumers SET cursor = $3, updated_at = now()
WHERE name = $1 AND cursor = $2 AND inflight_until IS NULL RETURNING name
"""
_FAILED = """
UPDATE consumers SET last_error = $2, updated_at = now(),
       status = CASE WHEN $3 AND status = 'active' THEN 'failing' ELSE status END,
       failing_since = CASE WHEN $3 THEN coalesce(failing_since, $4) ELSE failing_since END
WHERE name = $1
"""


class _Changed(Exception):
    """The consumer changed under the delivery (reset, paused, removed): start over."""


class Delivery:
    """Delivers one webhook consumer until `stop` is set or the consumer goes away."""

    def __init__(
        self,
        settings: Settings,
        engine: AsyncEngine,
        name: str,
        sub: Subscription,
        metrics: FeedMetrics | None,
        retry: WebhookRetry | None = None,
    ) -> None:
        self.settings = settings
        self.engine = engine
        self.name = name
        self.sub = sub
        self.metrics = metrics
        self.retry = retry or WebhookRetry.from_settings(settings)

    async def _sleep(self, stop: asyncio.Event, seconds: float, wake: bool = False) -> None:
        """Sleep until `seconds` pass or `stop` is set (or, with `wake`, a notification)."""
        waiters: list[asyncio.Future[Any]] = [asyncio.ensure_future(stop.wait())]
        if wake:
            waiters.append(asyncio.ensure_future(self.sub.wait(seconds)))
        try:
            await asyncio.wait(waiters, timeout=seconds, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for w in waiters:
                w.cancel()

    async def run(self, stop: asyncio.Event) -> None:
        poll = self.settings.feed_poll_interval
        while not stop.is_set():
            try:
                async with consumers.consumer_lock(self.engine, self.name) as lock:
                    if lock is None:  # another serve delivers it
                        log.debug("webhook_consumer_locked_elsewhere", consumer=self.name)
                        await self._sleep(stop, poll)
                        continue
                    if await self._deliver(lock, stop):
                        return
            except (ConfigError, consumers.ConsumerError) as exc:
                # A secret file gone or malformed: say so where an operator looks, keep trying.
                log.error("webhook_consumer_unusable", consumer=self.name, error=str(exc))
                await self._record_config_error(str(exc))
                await self._sleep(stop, poll)
            except (
                OSError,
                StoreError,
                asyncpg.PostgresError,
                asyncpg.InterfaceError,
                sa.exc.DBAPIError,
            ) as exc:
                log.warning(
                    "webhook_delivery_db_error", consumer=self.name, error=type(exc).__name__
                )
                await self._sleep(stop, poll)

    async def _record_config_error(self, message: str) -> None:
        with contextlib.suppress(Exception):
            async with self.engine.connect() as conn:
                await conn.execute(
                    sa.text(
                        "UPDATE consumers SET last_error = :e, updated_at = now() WHERE name = :n"
                    ),
                    {"e": message, "n": self.name},
                )
                await conn.commit()

    async def _deliver(self, lock: Any, stop: asyncio.Event) -> bool:
        """Deliver while holding the lock; True when the consumer is gone or no longer a
        webhook consumer to deliver (removed, paused, its URL cleared)."""
        timeout = aiohttp.ClientTimeout(total=self.settings.webhook_timeout)
        async with aiohttp.ClientSession(
            timeout=timeout, connector=aiohttp.TCPConnector(limit=1)
        ) as session:
            while not stop.is_set():
                row = await lock.fetchrow(_LOAD, self.name)
                if row is None or row["webhook_url"] is None or row["status"] == "paused":
                    return True
                secret = consumers.read_secret(row["secret_file"])
                logs.register_secrets([secret, secret.removeprefix(consumers.SECRET_PREFIX)])
                signer = Signer(secret)
                batch = await self._compose(lock, row)
                if batch is None:
                    await self._sleep(stop, self.settings.feed_poll_interval, wake=True)
                    continue
                try:
                    await self._send(lock, session, signer, row, batch, stop)
                except _Changed:
                    continue
        return False

    async def _compose(self, lock: Any, row: Any) -> Batch | None:
        cursor = int(row["cursor"])
        filters = row["filters"]
        if isinstance(filters, str):
            filters = json.loads(filters)
        flt = ChangeFilter.from_consumer(filters, cursor)
        inflight = row["inflight_until"]
        if inflight is not None and inflight > cursor:
            # A batch was composed and maybe sent before a crash: the very same one again.
            objects, count, until = await self._read(replace(flt, until=int(inflight)), None, row)
            return self._batch(row, cursor, int(inflight), objects, count)
        size = row["batch_size"] or self.settings.webhook_batch_size
        objects, count, until = await self._read(replace(flt, limit=size), size, row)
        if count and count < size and self.settings.webhook_batch_max_wait > 0:
            # A partial batch: give the next commits a moment to join it.
            await self.sub.wait(self.settings.webhook_batch_max_wait)
            objects, count, until = await self._read(replace(flt, limit=size), size, row)
        if count == 0:
            if until > cursor:  # nothing of ours in between: move past it without a request
                await lock.fetchval(_SKIP, self.name, cursor, until)
            return None
        if await lock.fetchval(_SET_INFLIGHT, self.name, cursor, until) is None:
            raise _Changed
        return self._batch(row, cursor, until, objects, count)

    def _batch(self, row: Any, after: int, until: int, objects: list[str], count: int) -> Batch:
        msg_id = f"msg_{self.name}_{after}_{until}"
        return Batch(after, until, count, batch_body(self.name, after, until, objects), msg_id)

    async def _read(
        self, flt: ChangeFilter, size: int | None, row: Any
    ) -> tuple[list[str], int, int]:
        """(JSON objects, change rows, the seq the batch covers up to)."""
        envelope = row["envelope"]
        max_bytes = self.settings.webhook_batch_max_bytes
        objects: list[str] = []
        count = used = 0
        window = Window()
        cut = False
        last = flt.since
        stream = stream_changes(
            self.engine,
            flt,
            batch=min(size or 2000, 2000),
            window=window,
            rendered=envelope == "syncsvc",
        )
        async with contextlib.aclosing(stream):  # type: ignore[type-var]
            async for change in stream:
                rendered = render(change, envelope)
                n = sum(len(r) for r in rendered)
                if count and used + n > max_bytes:
                    cut = True
                    break
                objects.extend(rendered)
                count += 1
                used += n
                last = change["seq"]
        until = last if cut else window.until
        return objects, count, until

    async def _send(
        self,
        lock: Any,
        session: aiohttp.ClientSession,
        signer: Signer,
        row: Any,
        batch: Batch,
        stop: asyncio.Event,
    ) -> None:
        url = row["webhook_url"]
        body = batch.body.encode()
        attempt = 0
        streak = row["failing_since"].timestamp() if row["failing_since"] is not None else None
        while not stop.is_set():
            attempt += 1
            retry_after = None
            try:
                async with session.post(
                    url,
                    data=body,
                    headers=signer.headers(batch.msg_id, batch.body),
                    allow_redirects=False,
                ) as resp:
                    status = resp.status
                    retry_after = parse_retry_after(resp.headers.get("Retry-After"))
                    await resp.read()
                if 200 <= status < 300:
                    if await lock.fetchval(_DELIVERED, self.name, batch.after, batch.until) is None:
                        raise _Changed
                    self._count("delivered", batch.changes)
                    log.debug(
                        "webhook_batch_delivered",
                        consumer=self.name,
                        after_seq=batch.after,
                        until_seq=batch.until,
                        changes=batch.changes,
                        attempts=attempt,
                    )
                    return
                outcome, error = "http_error", f"HTTP {status} from the receiver"
            except TimeoutError:
                outcome = "timeout"
                error = f"no answer within {self.settings.webhook_timeout:g}s"
            except aiohttp.ClientConnectorError as exc:
                outcome = "connection_error"
                error = f"cannot connect: {exc.os_error.strerror or type(exc.os_error).__name__}"
            except aiohttp.ClientError as exc:
                outcome, error = "connection_error", f"{type(exc).__name__}"
            self._count(outcome, 0)
            now = time.time()
            streak = streak or now
            failing = now - streak >= self.settings.webhook_failing_after
            await lock.execute(
                _FAILED, self.name, error, failing, datetime.fromtimestamp(streak, UTC)
            )
            delay = self.retry.next_delay(attempt, retry_after)
            log.warning(
                "webhook_attempt_failed",
                consumer=self.name,
                after_seq=batch.after,
                until_seq=batch.until,
                attempt=attempt,
                error=error,
                retry_in=round(delay, 2),
                failing=failing,
            )
            await self._sleep(stop, delay)
            now_row = await lock.fetchrow(_LOAD, self.name)
            if (
                now_row is None
                or now_row["status"] == "paused"
                or now_row["cursor"] != batch.after
                or now_row["inflight_until"] != batch.until
                or now_row["webhook_url"] != url
            ):
                raise _Changed

    def _count(self, outcome: str, changes: int) -> None:
        if self.metrics is not None:
            self.metrics.requests.labels(self.name, outcome).inc()
            if changes:
                self.metrics.delivered.labels(self.name).inc(changes)


class Deliveries:
    """`serve`'s webhook delivery: one task per webhook consumer, lag metrics, health detail."""

    def __init__(
        self, settings: Settings, engine: AsyncEngine, registry: CollectorRegistry | None = None
    ) -> None:
        self.settings = settings
        self.engine = engine
        self.metrics = FeedMetrics(registry) if registry is not None else None
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._lags: list[consumers.ConsumerLag] = []

    def health_detail(self) -> dict[str, Any]:
        """For /healthz: each consumer's state; a failing consumer does not make serve unhealthy
        (a restart cannot fix a receiver), it is reported."""
        return {
            "consumers": [
                {
                    "name": c.name,
                    "status": c.status,
                    "lag_rows": c.lag_rows,
                    "lag_seconds": round(c.lag_seconds, 3),
                    "last_error": c.last_error,
                    "failing_since": c.failing_since.isoformat() if c.failing_since else None,
                }
                for c in self._lags
            ],
            "failing_consumers": [c.name for c in self._lags if c.status == "failing"],
        }

    async def run(self, stop: asyncio.Event) -> None:
        poll = self.settings.feed_poll_interval
        async with Waker(libpq_url(self.engine.url)) as waker:
            sub = waker.subscribe()
            try:
                while not stop.is_set():
                    await self._refresh(waker, stop)
                    waiter = asyncio.ensure_future(sub.wait(poll))
                    stopper = asyncio.ensure_future(stop.wait())
                    try:
                        await asyncio.wait({waiter, stopper}, return_when=asyncio.FIRST_COMPLETED)
                    finally:
                        waiter.cancel()
                        stopper.cancel()
            finally:
                for task in self._tasks.values():
                    task.cancel()
                for task in self._tasks.values():
                    with contextlib.suppress(asyncio.CancelledError, Exception):
                        await task

    async def _refresh(self, waker: Waker, stop: asyncio.Event) -> None:
        try:
            self._lags = await consumers.list_consumers(self.engine)
        except (OSError, SyncError, asyncpg.PostgresError, sa.exc.DBAPIError) as exc:
            log.warning("consumers_unreadable", error=type(exc).__name__)
            return
        if self.metrics is not None:
            self.metrics.update(self._lags)
        wanted = {c.name for c in self._lags if c.webhook_url and c.status != "paused"}
        for name, task in list(self._tasks.items()):
            if task.done():
                del self._tasks[name]
                if not task.cancelled() and task.exception() is not None:
                    # A bug, not a receiver's fault: say so, and start the consumer over.
                    log.error(
                        "webhook_delivery_crashed",
                        consumer=name,
                        error=f"{type(task.exception()).__name__}: {task.exception()}",
                    )
        for name in wanted - set(self._tasks):
            delivery = Delivery(self.settings, self.engine, name, waker.subscribe(), self.metrics)
            self._tasks[name] = asyncio.create_task(delivery.run(stop), name=f"webhook-{name}")
            log.info("webhook_delivery_started", consumer=name)
