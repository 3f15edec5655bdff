"""The parse workers: a few processes that turn dump segments into staging rows.

Not concurrent.futures.ProcessPoolExecutor: when one of its workers is killed (the kernel's OOM
killer, an operator) while megabyte-sized arguments are queued, its management thread can block
for ever on the queue's feeder thread (CPython 3.11), and a run would hang instead of failing.
Here every worker has its own pipe and its own driving thread, which sends one segment, waits for
its result and hands it to the event loop; a dead worker is an end of file on its pipe, at once.

Workers start from a forkserver: a clean process (no event loop, sockets or threads to fork) that
imported only the parse, so each one is small and starts in milliseconds.
"""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing
import queue
import threading
from multiprocessing.connection import Connection
from typing import Any

from syncsvc.errors import WorkerDiedError
from syncsvc.parse import worker
from syncsvc.parse.segments import EncodedBatch

_Job = tuple[asyncio.AbstractEventLoop, "asyncio.Future[EncodedBatch]", tuple[Any, ...]]


def _settle(future: asyncio.Future[EncodedBatch], ok: bool, value: Any) -> None:
    if future.done():  # the fetch gave up on it
        return
    if ok:
        future.set_result(value)
    else:
        future.set_exception(value)


class ParsePool:
    """`workers` processes; `submit` returns an asyncio future of the segment's EncodedBatch."""

    # What the forkserver imports before it forks a worker: the worker's own module, so that
    # unpickling the target imports nothing more in each worker.
    preload = (worker.__name__,)

    def __init__(self, workers: int) -> None:
        ctx = multiprocessing.get_context("forkserver")
        ctx.set_forkserver_preload(list(self.preload))
        self._jobs: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._procs: list[Any] = []
        self._conns: list[Connection] = []
        self._threads: list[threading.Thread] = []
        for i in range(workers):
            ours, theirs = ctx.Pipe(duplex=True)
            proc = ctx.Process(target=worker.serve, args=(theirs,), name=f"syncsvc-parse-{i}")
            proc.daemon = True
            proc.start()
            theirs.close()
            thread = threading.Thread(target=self._drive, args=(ours,), name=f"parse-{i}")
            thread.daemon = True
            thread.start()
            self._procs.append(proc)
            self._conns.append(ours)
            self._threads.append(thread)

    def submit(
        self, path: str, data: bytes, ord_base: int, only: str | None
    ) -> asyncio.Future[EncodedBatch]:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[EncodedBatch] = loop.create_future()
        self._jobs.put((loop, future, (path, data, ord_base, only)))
        return future

    def _drive(self, conn: Connection) -> None:
        # One segment at a time per worker: a second one queued in the pipe while the first's
        # result waits to be read would deadlock both ends once the pipe's buffer is full.
        while True:
            job = self._jobs.get()
            if job is None:
                return
            loop, future, args = job
            if future.done():
                continue  # the fetch gave up on it before it started
            try:
                conn.send(args)
                ok, value = conn.recv()
            except (EOFError, OSError) as exc:
                died = WorkerDiedError(f"A parse worker died: {type(exc).__name__}")
                with contextlib.suppress(RuntimeError):  # the loop is closing
                    loop.call_soon_threadsafe(_settle, future, False, died)
                return  # its worker is gone; the others take the rest
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(_settle, future, ok, value)

    def close(self) -> None:
        """Stop the workers and their threads (blocking; idempotent)."""
        for _ in self._threads:
            self._jobs.put(None)
        for proc in self._procs:
            proc.kill()  # stateless: a driver waiting on its worker wakes with end of file
        for proc in self._procs:
            proc.join()
        for thread in self._threads:
            thread.join()
        for conn in self._conns:
            conn.close()
        self._procs, self._conns, self._threads = [], [], []
