"""A parse worker's loop: segments in, EncodedBatch (or the error it raised) out.

Its own module, apart from the pool (parse/pool.py), because a worker imports what its target's
module imports: the pool's asyncio, threading and queue cost each worker ~4 MB of its own
(measured with smaps_rollup), and the forkserver preloads this module so that what the workers
do import is shared with it, page by page, until written.
"""

from __future__ import annotations

import signal
from multiprocessing.connection import Connection
from typing import Any

from syncsvc.errors import SyncError, TerminalError
from syncsvc.parse.segments import encode_segment


def serve(conn: Connection) -> None:
    """A worker: segments in, EncodedBatch (or the error it raised) out, until end of file."""
    # Ctrl-C reaches the whole process group: the parent stops its workers (close() kills
    # them), so a worker ignores SIGINT rather than print a KeyboardInterrupt traceback.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    while True:
        try:
            job = conn.recv()
        except EOFError:
            return
        try:
            reply: tuple[bool, Any] = (True, encode_segment(*job))
        except SyncError as exc:
            exc.__cause__ = exc.__context__ = None  # lxml's exceptions need not travel
            reply = (False, exc)
        except Exception as exc:  # a bug: say so, never leave the driver waiting
            reply = (False, TerminalError(f"The parse worker failed: {type(exc).__name__}: {exc}"))
        conn.send(reply)
