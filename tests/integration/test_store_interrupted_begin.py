"""A unit cancelled while its BEGIN is in flight (Ctrl-C or SIGTERM at that moment) must not
hand its connection back to the pool.

asyncpg keeps a transaction whose start was cancelled as the connection's outer transaction, and
the server has begun it: on that connection every later transaction, the run's own bookkeeping
included, is a savepoint inside one that never commits. `syncsvc run` then hung for ever (the
run's closing UPDATE waited for a unit row lock held by that transaction), or closed the run
with its counters lost. The interleaving is forced here, on state, with a loopback proxy to the
real PostgreSQL that holds the server's answer to the unit's BEGIN.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import asyncpg
import pytest
from sqlalchemy.engine import URL

from syncsvc.store import db
from syncsvc.store import runs as run_rows
from syncsvc.store.unit import UnitWriter

pytestmark = pytest.mark.db

UNIT_BEGIN = b"BEGIN ISOLATION LEVEL READ COMMITTED"


class _Gate:
    """Once armed, the connection that sends `marker` gets no answer until `release`."""

    def __init__(self, marker: bytes) -> None:
        self.marker = marker
        self.armed = False
        self.answer_held = asyncio.Event()  # the server answered; the answer waits here
        self.released = asyncio.Event()


async def _open_server(url: URL) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    host = url.host or str(url.query.get("host") or "")
    port = url.port or 5432
    if host.startswith("/"):  # the embedded server: a unix socket
        return await asyncio.open_unix_connection(f"{host}/.s.PGSQL.{port}")
    return await asyncio.open_connection(host, port)


@contextlib.asynccontextmanager
async def _stalling_proxy(url: URL, gate: _Gate) -> AsyncIterator[URL]:
    """A TCP proxy on 127.0.0.1 to the server of `url`; yields the URL through it."""
    conns: set[asyncio.Task[None]] = set()

    async def relay(client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        server_r, server_w = await _open_server(url)
        hold = False  # this connection sent the marker: hold the server's answer

        async def up() -> None:
            nonlocal hold
            while data := await client_r.read(65536):
                # Decided before the query reaches the server: its answer cannot overtake this.
                if gate.armed and not hold and gate.marker in data:
                    hold, gate.armed = True, False
                server_w.write(data)
                await server_w.drain()
            server_w.close()

        async def down() -> None:
            while data := await server_r.read(65536):
                if hold and not gate.released.is_set():
                    gate.answer_held.set()
                    await gate.released.wait()
                client_w.write(data)
                await client_w.drain()
            client_w.close()

        await asyncio.gather(up(), down(), return_exceptions=True)
        for w in (client_w, server_w):
            w.close()

    def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.ensure_future(relay(reader, writer))
        conns.add(task)
        task.add_done_callback(conns.discard)

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield url.set(host="127.0.0.1", port=port, query={})
    finally:
        gate.released.set()
        server.close()
        for task in list(conns):
            task.cancel()
        await asyncio.gather(*conns, return_exceptions=True)
        await server.wait_closed()


async def test_a_unit_cancelled_while_beginning_leaves_no_transaction_behind(db_url: URL) -> None:
    gate = _Gate(UNIT_BEGIN)
    async with _stalling_proxy(db_url, gate) as proxied:
        engine = db.make_engine(proxied, pool_size=1, max_overflow=0)
        try:
            # The pool's one connection, opened and used before the gate is armed.
            run_id = await run_rows.create_run(engine)
            gate.armed = True

            async def unit() -> None:
                async with UnitWriter(engine, run_id=run_id, resource="user", scope="all") as w:
                    await w.begin()
                    raise AssertionError("the unit was to be cancelled while it began")

            task = asyncio.create_task(unit())
            await gate.answer_held.wait()  # BEGIN ran on the server; the unit awaits its answer
            task.cancel()
            gate.released.set()
            with pytest.raises(asyncio.CancelledError):
                await task

            # The run's bookkeeping goes on through the same pool, and really commits.
            assert await run_rows.finish_run(engine, run_id, status="interrupted")
        finally:
            await engine.dispose()

    conn = await asyncpg.connect(db.libpq_url(db_url))
    try:
        assert await conn.fetchval("SELECT status FROM runs WHERE id = $1", run_id) == (
            "interrupted"
        )
    finally:
        await conn.close()


async def test_a_connection_returned_with_a_transaction_open_is_never_lent_again(
    db_url: URL,
) -> None:
    # Any raw transaction (the feed's consumers, prune, the change feed) cut short at its BEGIN
    # leaves the same state as a unit's: the pool itself refuses to lend such a connection.
    engine = db.make_engine(db_url, pool_size=1, max_overflow=0)
    try:
        async with engine.connect() as conn:
            raw = await db.raw_connection(conn)
            await raw.execute("BEGIN")  # what a BEGIN whose caller was cancelled leaves behind
            await raw.execute("CREATE TABLE left_open (n int)")
        async with engine.begin() as conn:
            raw = await db.raw_connection(conn)
            await raw.execute("CREATE TABLE committed (n int)")
            await raw.execute("INSERT INTO committed VALUES (1)")
    finally:
        await engine.dispose()
    check = await asyncpg.connect(db.libpq_url(db_url))
    try:
        assert await check.fetchval("SELECT count(*) FROM committed") == 1
        assert await check.fetchval("SELECT to_regclass('left_open')") is None  # rolled back
    finally:
        await check.close()
