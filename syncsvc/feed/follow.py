"""`syncsvc changes --consumer NAME` and `--follow`: read from a cursor, acknowledge after a flush.

A named consumer's cursor moves only after the rows up to it were written and flushed to the
output (at-least-once to a pipe: a reader killed between the flush and the acknowledgement sees
those rows again, and `seq` is the key to drop them by). With `--follow` the reader waits for the
next unit's commit notification (or the poll interval) and reads again.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from typing import Any

from sqlalchemy.ext.asyncio import AsyncEngine

from syncsvc.changefeed import ChangeFilter, Output, Window, stream_changes
from syncsvc.feed import consumers
from syncsvc.feed.waker import Subscription, Waker
from syncsvc.logs import get_logger
from syncsvc.store.db import libpq_url

log = get_logger(__name__)

ACK_EVERY = 5000  # rows between flush + acknowledgement while a long backlog streams


@dataclasses.dataclass(slots=True)
class PullResult:
    rows: int = 0
    cursor: int = 0


async def pull(
    engine: AsyncEngine,
    out: Output,
    *,
    flt: ChangeFilter,
    consumer: str | None = None,
    follow: bool = False,
    poll: float = 5.0,
    stop: asyncio.Event | None = None,
) -> PullResult:
    """Write changes to `out` from `flt.since` (or the consumer's cursor) until caught up, or,
    following, until `stop` is set or `flt.until`/`flt.limit` is reached."""
    stop = stop or asyncio.Event()
    if consumer is None:
        return await _pull(engine, out, flt, None, None, follow, poll, stop)
    async with consumers.consumer_lock(engine, consumer) as lock:
        if lock is None:
            raise consumers.ConsumerError(
                f"consumer {consumer!r} is being read by another process (`changes --consumer`"
                " or `serve`); one reader per consumer at a time"
            )
        c = await consumers.get_consumer(engine, consumer)
        if c.webhook_url is not None:
            raise consumers.ConsumerError(
                f"consumer {consumer!r} is a webhook consumer: `syncsvc serve` delivers it"
            )
        flt = dataclasses.replace(
            ChangeFilter.from_consumer(c.filters, c.cursor), until=flt.until, limit=flt.limit
        )
        return await _pull(engine, out, flt, consumer, lock, follow, poll, stop)


async def _pull(
    engine: AsyncEngine,
    out: Output,
    flt: ChangeFilter,
    name: str | None,
    lock: Any,
    follow: bool,
    poll: float,
    stop: asyncio.Event,
) -> PullResult:
    result = PullResult(cursor=flt.since)
    waker: Waker | None = None
    sub: Subscription | None = None
    if follow:
        # Listen before the first read: a commit between that read and the wait still wakes us.
        waker = await Waker(libpq_url(engine.url)).__aenter__()
        sub = waker.subscribe()
    try:
        while not stop.is_set():
            remaining = None if flt.limit is None else flt.limit - result.rows
            window = Window()
            read = 0
            async for row in stream_changes(
                engine,
                dataclasses.replace(flt, since=result.cursor, limit=remaining),
                window=window,
                rendered=out.rendered,
            ):
                out.write(row)
                read += 1
                if name is not None and read % ACK_EVERY == 0:
                    out.out.flush()
                    await _ack(lock, name, result, row["seq"])
                if stop.is_set():
                    break
            out.out.flush()
            result.rows += read
            if stop.is_set():
                # Only what was written: the window's end is not reached.
                break
            if name is not None:
                await _ack(lock, name, result, window.until)
            else:
                result.cursor = window.until
            log.debug("feed_read", high=window.high, rows=read, cursor=result.cursor)
            done_until = flt.until is not None and result.cursor >= flt.until
            done_limit = flt.limit is not None and result.rows >= flt.limit
            if not follow or done_until or done_limit or sub is None:
                break
            waiter = asyncio.ensure_future(sub.wait(poll))
            stopper = asyncio.ensure_future(stop.wait())
            try:
                await asyncio.wait({waiter, stopper}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                waiter.cancel()
                stopper.cancel()
    finally:
        if waker is not None:
            await waker.__aexit__(None, None, None)
    return result


async def _ack(lock: Any, name: str, result: PullResult, seq: int) -> None:
    if seq <= result.cursor:
        return
    if not await consumers.acknowledge(lock, name, result.cursor, seq):
        raise consumers.ConsumerError(
            f"consumer {name!r} was reset or removed while being read; stopped after seq"
            f" {result.cursor}"
        )
    result.cursor = seq


def now_ms() -> int:
    return int(time.time() * 1000)
