"""The dump parse in a forked worker process, so parsing runs on a second core beside COPY.

Python work per record element (lxml's element proxies, normalize, the row hash) is what limits a
large dump, and it holds the GIL: a thread would not help. For a large dump the client forwards
the decoded body bytes to a worker process, which runs the very same `DumpParser` (the same
libxml2 options, prolog check, size caps, envelope and response-code verdict) and sends record
batches back; the event loop only moves bytes and batches. The verdict is the worker's: a batch
stream ends with "done" only when `close()` returned, otherwise with the parser's own error.

The worker is forked (not spawned) so `on_record` (a closure over the resource's dispatch table)
needs no pickling; it touches nothing but its pipes and its parser.
"""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing
import threading
from collections.abc import AsyncIterator
from multiprocessing.connection import Connection
from typing import Any, Generic, TypeVar

from syncsvc.cvent.parser import DumpParser
from syncsvc.errors import SyncError, TerminalError

T = TypeVar("T")

# Batches in flight between the worker and the consumer: bounds memory whatever the COPY's pace
# (the worker blocks on a full pipe, the feeder then on the worker, aiohttp then on the socket).
MAX_BATCHES_AHEAD = 4
# The parent's ends of every live parse's pipes (see _work).
_PARENT_ENDS: set[Connection] = set()


def _work(
    parser: DumpParser[Any],
    inbox: Connection,
    outbox: Connection,
    batch_size: int,
    parents: tuple[Connection, ...],
) -> None:
    # The fork copied the parent's ends of this parse's pipes and of every other parse running
    # beside it (another unit's): close them all, or closing a feeding end in the parent would
    # never reach its worker as end-of-file while this process lives.
    for conn in (*parents, *_PARENT_ENDS):
        conn.close()
    try:
        while True:
            try:
                data = inbox.recv_bytes()
            except EOFError:
                outbox.send(("aborted",))  # the feeder stopped: its error is the verdict
                return
            if not data:
                break
            parser.feed(data)
            if len(parser.pending) >= batch_size:
                outbox.send(("batch", parser.take()))
        parser.close()
        outbox.send(
            ("done", parser.take(), parser.bytes, parser.records, parser.code, parser.message)
        )
    except SyncError as exc:
        exc.__cause__ = exc.__context__ = None  # lxml's exceptions need not travel
        outbox.send(("error", exc))
    except BaseException as exc:  # a bug or a resource limit: say so, never hang the consumer
        outbox.send(("crash", f"{type(exc).__name__}: {exc}"))


class WorkerParse(Generic[T]):
    """One dump's parse in a worker: `feed`/`finish` from the feeding task, `batches()` to read.

    The parser object passed in is the main process's handle: when the stream ends with "done",
    its `bytes`, `records`, `code` and `message` are set from the worker's, so callers read the
    same facts as after an in-process parse.
    """

    def __init__(self, parser: DumpParser[T], batch_size: int) -> None:
        self.parser = parser
        ctx = multiprocessing.get_context("fork")
        inbox_r, self._inbox = ctx.Pipe(duplex=False)
        self._outbox, outbox_w = ctx.Pipe(duplex=False)
        self._proc = ctx.Process(
            target=_work, args=(parser, inbox_r, outbox_w, batch_size, (self._inbox, self._outbox))
        )
        self._proc.daemon = True
        self._proc.start()
        inbox_r.close()
        outbox_w.close()
        _PARENT_ENDS.update((self._inbox, self._outbox))
        self._loop = asyncio.get_running_loop()
        self._queue: asyncio.Queue[tuple[Any, ...]] = asyncio.Queue()
        self._room = threading.Semaphore(MAX_BATCHES_AHEAD)
        self._stopping = False
        self._reader = threading.Thread(target=self._read, name="parse-reader", daemon=True)
        self._reader.start()

    def _read(self) -> None:
        # Unpickling happens here, off the event loop's stack (it still takes the GIL).
        while not self._stopping:
            self._room.acquire()
            if self._stopping:
                return
            try:
                msg = self._outbox.recv()
            except (EOFError, OSError):
                msg = ("crash", "the parse worker exited without a verdict")
            self._loop.call_soon_threadsafe(self._queue.put_nowait, msg)
            if msg[0] != "batch":
                return

    async def feed(self, data: bytes) -> None:
        if data:
            await asyncio.to_thread(self._inbox.send_bytes, data)

    async def finish(self) -> None:
        await asyncio.to_thread(self._inbox.send_bytes, b"")

    def abort(self) -> None:
        """The body could not be read to its end: the worker stops without a verdict."""
        with contextlib.suppress(OSError):
            self._inbox.close()

    async def batches(self) -> AsyncIterator[list[T]]:
        """Record batches in document order; raises the parse's error, or None at "aborted"."""
        while True:
            msg = await self._queue.get()
            kind = msg[0]
            if kind == "batch":
                self._room.release()
                yield msg[1]
            elif kind == "done":
                _, batch, nbytes, records, code, message = msg
                p = self.parser
                p.bytes, p.records, p.code, p.message = nbytes, records, code, message
                if batch:
                    yield batch
                return
            elif kind == "aborted":
                return
            elif kind == "error":
                raise msg[1]
            else:
                raise TerminalError(f"The parse worker failed: {msg[1]}", **self.parser._where())

    async def close(self) -> None:
        """Stop everything (idempotent): the worker, the reader thread, the pipes."""
        self._stopping = True
        self._room.release()
        with contextlib.suppress(OSError):
            self._inbox.close()
        if self._proc.is_alive():
            self._proc.kill()
        await asyncio.to_thread(self._proc.join)
        await asyncio.to_thread(self._reader.join)
        self._outbox.close()
        _PARENT_ENDS.difference_update((self._inbox, self._outbox))
