"""Where the database is: the configured URL, or an embedded PostgreSQL; engines and migrations."""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import importlib.util
import signal
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import URL, make_url
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

from syncsvc.errors import ConfigError, MigrationError, StoreError
from syncsvc.logs import get_logger, register_secrets
from syncsvc.settings import Settings
from syncsvc.store.boundary import boundary

log = get_logger(__name__)


def sqlalchemy_url(url: str, password: str | None = None) -> URL:
    """A postgresql:// URL as SQLAlchemy's asyncpg dialect wants it (password override applied)."""
    try:
        parsed = make_url(url)
    except (sa.exc.ArgumentError, ValueError):
        # A bad port is a ValueError from int(); the URL is not repeated (it may hold a password).
        raise ConfigError("SYNCSVC_DATABASE_URL is malformed", setting="database_url") from None
    parsed = parsed.set(drivername="postgresql+asyncpg")
    if password is not None:
        parsed = parsed.set(password=password)
    return parsed


def libpq_url(url: URL) -> str:
    """The same URL in the form psql and asyncpg.connect accept."""
    return url.set(drivername="postgresql").render_as_string(hide_password=False)


# In the data dir while the embedded server is one a syncsvc command started and will stop: the
# last command using it stops it on exit. `db url` removes it (psql needs the server afterwards).
STARTED_BY_US = "embedded-started-by-syncsvc"


def embedded_url(data_dir: Path, *, keep_running: bool = False) -> str:
    """Start (or reuse) the embedded PostgreSQL under `data_dir` and return its URL.

    A server this command starts is stopped when the last syncsvc command using it exits (a
    server someone else started is left alone); `keep_running` leaves it up (for psql) until
    `syncsvc db stop`. The data directory is what persists.
    """
    import warnings

    try:
        with warnings.catch_warnings():
            # platformdirs warns when XDG_RUNTIME_DIR is unset (containers, CI); pgserver copes.
            warnings.simplefilter("ignore")
            import pgserver
            from pgserver.postgres_server import PostgresServer
    except ImportError as exc:  # the container image ships without it
        raise ConfigError(
            "SYNCSVC_DATABASE_URL is not set and the embedded PostgreSQL (pgserver) is not "
            "installed here",
            setting="database_url",
        ) from exc

    pgdata = data_dir / "pgdata"
    pgdata.parent.mkdir(parents=True, exist_ok=True)
    mark = data_dir / STARTED_BY_US
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with PostgresServer._lock:
                if _postmaster(pgdata) is None:
                    mark.touch()
            server = pgserver.get_server(pgdata, cleanup_mode=None)  # type: ignore[attr-defined]
    except Exception as exc:  # pgserver raises bare exceptions from its subprocess calls
        raise StoreError(f"could not start the embedded PostgreSQL under {pgdata}: {exc}") from exc
    if keep_running:
        mark.unlink(missing_ok=True)
    elif mark.exists():
        atexit.register(_stop_if_last, pgdata, mark)
    uri: str = server.get_uri()
    return uri


def _postmaster(pgdata: Path) -> Any:
    """The running postmaster's psutil process, or None."""
    from pgserver.utils import PostmasterInfo

    info = PostmasterInfo.read_from_pgdata(pgdata)
    return info.process if info is not None and info.is_running() else None


def _stop_if_last(pgdata: Path, mark: Path) -> None:
    import json
    import os

    import psutil  # type: ignore[import-untyped]
    from pgserver.postgres_server import PostgresServer

    with PostgresServer._lock:
        if not mark.exists():
            return  # `db url` asked for it to stay up meanwhile
        try:
            users = json.loads((pgdata / ".handle_pids.json").read_text())
        except (OSError, ValueError):
            users = []
        if any(pid != os.getpid() and psutil.pid_exists(pid) for pid in users):
            return  # another command still uses it: the last one out stops it
        if stop_embedded(pgdata):
            log.debug("embedded_postgres_stopped", pgdata=str(pgdata))


def stop_embedded(pgdata: Path, timeout: float = 30.0) -> bool:
    """Stop the embedded server under `pgdata` (a fast shutdown); False if none was running."""
    import psutil

    process = _postmaster(pgdata)
    if process is None:
        return False
    try:
        process.send_signal(signal.SIGINT)  # PostgreSQL's fast shutdown: sessions end, data safe
        process.wait(timeout)
    except psutil.NoSuchProcess:
        pass
    except psutil.TimeoutExpired as exc:
        raise StoreError(
            f"the embedded PostgreSQL in {pgdata} did not stop in {timeout:g} s"
        ) from exc
    (pgdata.parent / STARTED_BY_US).unlink(missing_ok=True)
    return True


def resolve_url(settings: Settings, *, keep_running: bool = False) -> URL:
    """The database URL in force: SYNCSVC_DATABASE_URL, or the embedded server's."""
    if settings.database_url:
        configured = sqlalchemy_url(settings.database_url, settings.database_password)
        register_secrets([configured.password if isinstance(configured.password, str) else None])
        return configured
    url = embedded_url(settings.data_dir, keep_running=keep_running)
    log.debug("embedded_postgres_ready", data_dir=str(settings.data_dir / "pgdata"))
    return sqlalchemy_url(url)


def make_engine(url: URL, **kw: Any) -> AsyncEngine:
    engine = create_async_engine(url, pool_pre_ping=False, **kw)
    sa.event.listen(engine.sync_engine, "checkout", _refuse_open_transaction)
    return engine


def _refuse_open_transaction(dbapi_connection: Any, record: Any, proxy: Any) -> None:
    """Never lend out a connection that came back with a transaction open.

    A task cancelled while its BEGIN is in flight (Ctrl-C, SIGTERM, serve's drain) leaves the
    server's transaction open, and asyncpg still counts it as the connection's outer one; the
    pool's reset on return does not end a transaction it did not start. The next user's
    transactions would then be savepoints inside it, never committed (a run hung on a row lock
    that way). Raising DisconnectionError makes the pool discard this one and lend a fresh one.
    """
    driver = getattr(dbapi_connection, "driver_connection", None)
    if driver is not None and driver.is_in_transaction():
        log.warning("pooled_connection_discarded", reason="a transaction was left open on it")
        raise sa.exc.DisconnectionError("a transaction was left open on this connection")


def migrations_dir() -> Path:
    # Located through the import system: migrations/ is mapped to syncsvc.migrations at install.
    spec = importlib.util.find_spec("syncsvc.migrations")
    assert spec is not None, "syncsvc.migrations is not installed"
    assert spec.origin is not None
    return Path(spec.origin).parent


def alembic_config(url: URL | None = None) -> Any:
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(migrations_dir()))
    if url is not None:
        cfg.attributes["url"] = url
    return cfg


def _run_sync_alembic(connection: sa.Connection, fn_name: str, revision: str) -> None:
    from alembic import command

    cfg = alembic_config()
    cfg.attributes["connection"] = connection
    getattr(command, fn_name)(cfg, revision)


async def upgrade(engine: AsyncEngine, revision: str = "head") -> None:
    async with engine.begin() as conn:
        await conn.run_sync(_run_sync_alembic, "upgrade", revision)


async def downgrade(engine: AsyncEngine, revision: str) -> None:
    async with engine.begin() as conn:
        await conn.run_sync(_run_sync_alembic, "downgrade", revision)


def _current(connection: sa.Connection) -> tuple[str | None, str | None]:
    from alembic.runtime.migration import MigrationContext
    from alembic.script import ScriptDirectory

    current = MigrationContext.configure(connection).get_current_revision()
    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    return current, head


async def current_revision(engine: AsyncEngine) -> tuple[str | None, str | None]:
    """(the database's revision, the code's head revision)."""
    async with engine.connect() as conn:
        return await conn.run_sync(_current)


# The newest migration's revision. `run`, `serve` and the readers check the database against it
# without importing alembic (8 MB of a process that must stay small); a test keeps it equal to
# the migrations' head.
SCHEMA_HEAD = "0008"


async def require_current(engine: AsyncEngine) -> None:
    async with engine.connect() as conn:
        exists = await conn.scalar(sa.text("SELECT to_regclass('alembic_version') IS NOT NULL"))
        current = None
        if exists:
            current = await conn.scalar(sa.text("SELECT version_num FROM alembic_version"))
    if current != SCHEMA_HEAD:
        raise MigrationError(
            f"the database schema is at {current or 'nothing'}, the code needs {SCHEMA_HEAD}: "
            "run `syncsvc db upgrade`"
        )


@contextlib.asynccontextmanager
async def connect(settings: Settings, **pool: int) -> AsyncIterator[AsyncEngine]:
    """An engine on the database in force, disposed on exit (`pool`: pool_size, max_overflow)."""
    url = await asyncio.to_thread(resolve_url, settings)
    engine = make_engine(url, **pool)
    try:
        host = url.host or url.query.get("host")
        with boundary(f"cannot connect to the database at {host}"):
            async with engine.connect():
                pass
        # Only SQLAlchemy's here: an OSError of the command's own (a file it writes) is its own.
        with boundary("database error", errors=(sa.exc.SQLAlchemyError,)):
            yield engine
    finally:
        await engine.dispose()


@contextlib.asynccontextmanager
async def autocommit(engine: AsyncEngine) -> AsyncIterator[AsyncConnection]:
    """A connection without a transaction, for one statement atomic alone: BEGIN and COMMIT
    around it would be two more round trips."""
    async with engine.connect() as conn:
        yield await conn.execution_options(isolation_level="AUTOCOMMIT")


async def raw_connection(conn: AsyncConnection) -> Any:
    """The asyncpg connection under a SQLAlchemy one (for COPY)."""
    raw = await conn.get_raw_connection()
    return raw.driver_connection


def redacted(url: URL) -> str:
    return url.render_as_string(hide_password=True)
