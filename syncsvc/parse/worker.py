"""The parse workers' process: segments in, EncodedBatch (or the error it raised) out.

`python -m syncsvc.parse.worker FD...` is started by the pool (parse/pool.py) with one socket
per worker: a clean interpreter that imports only the parse, forks a worker for each socket but
the first, and serves the first itself. Not multiprocessing's forkserver: beside the workers it
keeps a forkserver and a resource tracker running, two more interpreters (~15 MB of the tree's
memory, measured with smaps_rollup) for what one fork does. A forked worker shares its parent's
imports page by page until it writes them. The module imports no asyncio, threading or settings:
whatever it imports, each worker holds.

Every worker stops at the end of file on its socket (the pool closed it, or the pool's process
died); the first waits for the ones it forked, so none is left for init to reap.
"""

from __future__ import annotations

import gc
import os
import signal
import sys
from multiprocessing.connection import Connection
from typing import Any

from syncsvc.errors import SyncError, TerminalError
from syncsvc.parse.segments import encode_segment


def serve(conn: Connection) -> None:
    """A worker: segments in, EncodedBatch (or the error it raised) out, until end of file."""
    while True:
        try:
            job = conn.recv()
        except (EOFError, OSError):
            return
        try:
            reply: tuple[bool, Any] = (True, encode_segment(*job))
        except SyncError as exc:
            exc.__cause__ = exc.__context__ = None  # lxml's exceptions need not travel
            reply = (False, exc)
        except Exception as exc:  # a bug: say so, never leave the driver waiting
            reply = (False, TerminalError(f"The parse worker failed: {type(exc).__name__}: {exc}"))
        try:
            conn.send(reply)
        except OSError:  # the pool is gone
            return


def main(fds: list[int]) -> None:
    """Fork a worker for each socket but the first, serve the first, then reap the others."""
    # The pool stops its workers (close() ends their sockets): an interrupt meant for the run
    # is not theirs, and would only print a KeyboardInterrupt traceback.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # What is imported now stays: out of the collector's sight, a forked worker's collections
    # do not write to the pages it shares with this one (measured: ~1 MB of each one's own).
    gc.freeze()
    for i, fd in enumerate(fds[1:], 1):
        if os.fork() == 0:
            try:
                for other in (fds[0], *fds[i + 1 :]):  # the ones before are closed already
                    os.close(other)
                serve(Connection(fd))
            finally:
                os._exit(0)
        os.close(fd)
    serve(Connection(fds[0]))
    while True:
        try:
            os.wait()
        except ChildProcessError:
            return


if __name__ == "__main__":
    main([int(a) for a in sys.argv[1:]])
