"""Shared fixtures: one real PostgreSQL per test session, an isolated database per test.

The server is SYNCSVC_TEST_DATABASE_URL when set (CI points it at the machine's PostgreSQL 15),
otherwise an embedded PostgreSQL 16 (pgserver) started once for the session. A template database
is migrated once; each test gets `CREATE DATABASE ... TEMPLATE` of it, which is a file copy.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import uuid
import warnings
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from sqlalchemy.engine import URL
from sqlalchemy.ext.asyncio import AsyncEngine

from syncsvc import logs
from syncsvc.simulator import RunningSimulator, SimConfig
from syncsvc.store import db

# Unique per test session: several suites may share one server (CI, parallel checkouts).
TEMPLATE = f"syncsvc_tpl_{os.getpid()}_{uuid.uuid4().hex[:6]}"


@pytest.fixture(autouse=True)
def _clean_secrets() -> Iterator[None]:
    yield
    logs.clear_secrets()


@pytest.fixture(scope="session")
def pg_server_url() -> Iterator[URL]:
    """The server's maintenance URL (database `postgres`)."""
    given = os.environ.get("SYNCSVC_TEST_DATABASE_URL")
    if given:
        yield db.sqlalchemy_url(given)
        return
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import pgserver

        # Not under pytest's basetemp: pytest prunes old basetemps, which would delete the data
        # directory of a server another concurrent session is still using. Short, too: the
        # server's unix socket lives in it (107-byte limit).
        pgdata = Path(tempfile.mkdtemp(prefix="syncsvc-pg-")) / "d"
        server = pgserver.get_server(pgdata, cleanup_mode="stop")
    yield db.sqlalchemy_url(server.get_uri())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        server.cleanup()
    shutil.rmtree(pgdata.parent, ignore_errors=True)


async def _admin(url: URL) -> asyncpg.Connection:
    return await asyncpg.connect(db.libpq_url(url))


@pytest.fixture(scope="session")
async def pg_template(pg_server_url: URL) -> AsyncIterator[URL]:
    """A migrated template database, built once per test session."""
    admin = await _admin(pg_server_url)
    try:
        await admin.execute(f'DROP DATABASE IF EXISTS "{TEMPLATE}" WITH (FORCE)')
        await admin.execute(f'CREATE DATABASE "{TEMPLATE}"')
    finally:
        await admin.close()
    url = pg_server_url.set(database=TEMPLATE)
    engine = db.make_engine(url)
    try:
        await db.upgrade(engine)
    finally:
        await engine.dispose()
    yield url
    admin = await _admin(pg_server_url)
    try:
        await admin.execute(f'DROP DATABASE IF EXISTS "{TEMPLATE}" WITH (FORCE)')
    finally:
        await admin.close()


async def _admin_execute(server: URL, sql: str) -> None:
    admin = await _admin(server)
    try:
        await admin.execute(sql)
    finally:
        await admin.close()


@contextlib.asynccontextmanager
async def _scratch_database(server: URL, template: str | None) -> AsyncIterator[URL]:
    """A database of its own for one test, dropped afterwards."""
    name = f"t_{uuid.uuid4().hex[:16]}"
    clone = f' TEMPLATE "{template}"' if template else ""
    await _admin_execute(server, f'CREATE DATABASE "{name}"{clone}')
    try:
        yield server.set(database=name)
    finally:
        await _admin_execute(server, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
async def empty_db_url(pg_server_url: URL) -> AsyncIterator[URL]:
    """A new, empty database (no schema) for this test alone."""
    async with _scratch_database(pg_server_url, None) as url:
        yield url


@pytest.fixture
async def db_url(pg_server_url: URL, pg_template: URL) -> AsyncIterator[URL]:
    """A migrated database for this test alone, cloned from the template."""
    async with _scratch_database(pg_server_url, TEMPLATE) as url:
        yield url


@pytest.fixture
async def engine(db_url: URL) -> AsyncIterator[AsyncEngine]:
    eng = db.make_engine(db_url)
    yield eng
    await eng.dispose()


# --- the Conference API simulator (stream sim) --------------------------------------------------


@pytest.fixture
def simulator() -> Callable[..., AbstractAsyncContextManager[RunningSimulator]]:
    """A factory: `async with simulator(SimConfig(...), **options) as sim` serves on loopback."""
    from syncsvc.simulator import run_simulator

    def factory(
        config: SimConfig | None = None, **options: Any
    ) -> AbstractAsyncContextManager[RunningSimulator]:
        return run_simulator(config, host="127.0.0.1", port=0, **options)

    return factory
