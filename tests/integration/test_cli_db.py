"""`syncsvc db ...` against a given server and against the embedded default."""

from __future__ import annotations

import os
import subprocess
import sys
import warnings
from pathlib import Path

import asyncpg
import pytest
from sqlalchemy.engine import URL

from syncsvc.store import db

pytestmark = pytest.mark.db


def _syncsvc(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    base = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "SYNCSVC_LOG_LEVEL": "warning"}
    return subprocess.run(
        [sys.executable, "-m", "syncsvc", *args],
        env={**base, **env},
        capture_output=True,
        text=True,
        timeout=120,
    )


async def _tables(url: str) -> set[str]:
    conn = await asyncpg.connect(url)
    try:
        rows = await conn.fetch("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")
    finally:
        await conn.close()
    return {r["tablename"] for r in rows}


async def test_db_upgrade_creates_the_schema_on_the_given_server(empty_db_url: URL) -> None:
    url = db.libpq_url(empty_db_url)
    proc = _syncsvc("db", "upgrade", env={"SYNCSVC_DATABASE_URL": url, "HOME": "/tmp"})
    assert proc.returncode == 0, proc.stderr
    assert {"runs", "fetches", "changes", "events", "users", "sessions", "exhibitors"} <= (
        await _tables(url)
    )
    current = _syncsvc("db", "current", env={"SYNCSVC_DATABASE_URL": url, "HOME": "/tmp"})
    assert current.returncode == 0
    assert f"database revision: {db.SCHEMA_HEAD}" in current.stdout


async def test_db_current_exits_1_on_an_unmigrated_database(empty_db_url: URL) -> None:
    url = db.libpq_url(empty_db_url)
    proc = _syncsvc("db", "current", env={"SYNCSVC_DATABASE_URL": url, "HOME": "/tmp"})
    assert proc.returncode == 1
    assert "run `syncsvc db upgrade`" in proc.stdout


async def test_embedded_default_is_created_named_and_reused(tmp_path: Path) -> None:
    env = {"XDG_DATA_HOME": str(tmp_path), "HOME": str(tmp_path)}
    pgdata = tmp_path / "syncsvc" / "pgdata"
    try:
        first = _syncsvc("db", "upgrade", env=env)
        assert first.returncode == 0, first.stderr
        assert str(pgdata) in first.stdout  # the output names the data directory
        url = _syncsvc("db", "url", env=env)
        assert url.returncode == 0
        uri = url.stdout.strip()
        assert uri.startswith("postgresql://")
        assert "runs" in await _tables(uri)
        # Next time the same server and data are reused: the schema is already there.
        again = _syncsvc("db", "current", env=env)
        assert again.returncode == 0
        assert f"database revision: {db.SCHEMA_HEAD}" in again.stdout
        assert _syncsvc("db", "url", env=env).stdout.strip() == uri
    finally:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            import pgserver

            if pgdata.exists():
                pgserver.get_server(pgdata, cleanup_mode="stop").cleanup()
