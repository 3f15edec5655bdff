"""The parse workers: a few processes that turn dump segments into staging rows.

Not concurrent.futures.ProcessPoolExecutor: when one of its workers is killed (the kernel's OOM
killer, an operator) while megabyte-sized arguments are queued, its management thread can block
for ever on the queue's feeder thread (CPython 3.11), and a run would hang instead of failing.
Here every worker has its own pipe and its own driving thread, which sends one segment, waits for
its result and hands it to the event loop; a dead worker is an end of file on its pipe, at once.

The workers are one clean interpreter (no event loop, sockets or threads to fork) that imports
only the parse and forks the others (parse/worker.py), so each one is small and shares its
imports with the first.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import queue
import signal
import socket
import subprocess
import sys
import threading
from multiprocessing.connection import Connection
from typing import Any

from syncsvc.errors import WorkerDiedError
from syncsvc.parse import worker
from syncsvc.parse.segments import EncodedBatch

CLOSE_SECONDS = 10.0  # how long close() lets the workers finish the segment in hand

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

    def __init__(self, workers: int) -> None:
        self._jobs: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._conns: list[Connection] = []
        self._threads: list[threading.Thread] = []
        theirs: list[int] = []
        for _ in range(workers):
            ours, their = socket.socketpair()
            self._conns.append(Connection(ours.detach()))
            theirs.append(their.detach())
        try:
            # A process group of their own: close() can stop them all, the forked ones too.
            self._proc: subprocess.Popen[bytes] | None = subprocess.Popen(  # noqa: S603 (our own module)
                [sys.executable, "-m", worker.__name__, *map(str, theirs)],
                pass_fds=theirs,
                stdin=subprocess.DEVNULL,
                process_group=0,
            )
        finally:
            for fd in theirs:
                os.close(fd)
        for i, conn in enumerate(self._conns):
            thread = threading.Thread(target=self._drive, args=(conn,), name=f"parse-{i}")
            thread.daemon = True
            thread.start()
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
        for conn in self._conns:
            # End of file both ways: a worker stops, a driver waiting on it wakes.
            with contextlib.suppress(OSError), socket.socket(fileno=os.dup(conn.fileno())) as s:
                s.shutdown(socket.SHUT_RDWR)
        if self._proc is not None:
            # The first worker exits once it has reaped the ones it forked (none is left for
            # init, which in a container may be this process); one that does not (stuck in a
            # segment) is killed with its whole group.
            try:
                self._proc.wait(CLOSE_SECONDS)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self._proc.pid, signal.SIGKILL)
                self._proc.wait()
            self._proc = None
        for thread in self._threads:
            thread.join()
        for conn in self._conns:
            conn.close()
        self._conns, self._threads = [], []
