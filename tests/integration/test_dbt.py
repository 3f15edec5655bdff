"""dbt, as a reporting team runs it: `syncsvc dbt-sources` writes the sources, then the real dbt
CLI (dbt-core + dbt-postgres, offline: no hub packages) runs `dbt source freshness` and
`dbt build` of tests/dbt_project against a synced test database."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from typing import Any

import asyncpg
import pytest
import yaml
from sqlalchemy.engine import URL
from sqlalchemy.ext.asyncio import AsyncEngine

from syncsvc import scheduler
from syncsvc.catalog import RESOURCES, describe
from syncsvc.settings import Settings
from syncsvc.store import db
from tests.integration.export_helpers import syncsvc
from tests.integration.test_export import CONFIG

pytestmark = pytest.mark.db

SimFactory = Callable[..., AbstractAsyncContextManager[Any]]
PROJECT = Path(__file__).parent.parent / "dbt_project"


def _dbt(project: Path, url: URL, *args: str) -> subprocess.CompletedProcess[str]:
    host = url.host or str(url.query.get("host", ""))
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(project),
        "DBT_PROFILES_DIR": str(project),
        "DBT_SEND_ANONYMOUS_USAGE_STATS": "false",
        "DO_NOT_TRACK": "1",
        "DBT_LOG_PATH": str(project / "logs"),
        "DBT_TARGET_PATH": str(project / "target"),
        "SYNCSVC_DBT_HOST": host,
        "SYNCSVC_DBT_PORT": str(url.port or 5432),
        "SYNCSVC_DBT_USER": url.username or "postgres",
        "SYNCSVC_DBT_PASSWORD": url.password or "",
        "SYNCSVC_DBT_DBNAME": url.database or "",
    }
    dbt = Path(sys.executable).parent / "dbt"
    return subprocess.run(
        [str(dbt), *args, "--project-dir", str(project), "--no-use-colors"],
        env=env,
        capture_output=True,
        text=True,
        timeout=280,
        cwd=project,
    )


async def test_dbt_source_freshness_and_build_over_syncsvcs_sources(
    simulator: SimFactory, engine: AsyncEngine, db_url: URL, tmp_path: Path
) -> None:
    async with simulator(CONFIG) as sim:
        settings = Settings.load({}).replace(
            base_url=sim.base_url, api_token="sim-account-token", rate_limit=200.0
        )
        for day in range(2):
            sim.set_day(day)
            assert (await scheduler.run_once(settings, engine)).status == "succeeded"

    project = tmp_path / "project"
    shutil.copytree(PROJECT, project)
    proc = syncsvc(db_url, "dbt-sources")
    assert proc.returncode == 0, proc.stderr
    (project / "models" / "sources.yml").write_text(proc.stdout)
    doc = yaml.safe_load(proc.stdout)
    tables = {t["name"]: t for t in doc["sources"][0]["tables"]}
    for r in RESOURCES:  # the catalog's descriptions reach dbt's docs
        described = {c["name"]: c.get("description") for c in tables[r.table]["columns"]}
        assert all(described[f.column] == describe(r, f) for f in r.fields)

    fresh = _dbt(project, db_url, "source", "freshness")
    assert fresh.returncode == 0, fresh.stdout + fresh.stderr
    results = json.loads((project / "target" / "sources.json").read_text())["results"]
    assert {r["unique_id"].split(".")[-1]: r["status"] for r in results} == {
        name: "pass" for name in tables
    }

    build = _dbt(project, db_url, "build")
    assert build.returncode == 0, build.stdout + build.stderr
    run_results = json.loads((project / "target" / "run_results.json").read_text())["results"]
    assert all(r["status"] in ("success", "pass") for r in run_results)
    assert len(run_results) == 4  # the model and its three data tests

    conn = await asyncpg.connect(db.libpq_url(db_url))
    try:
        got = {
            r["event_guid"]: r["attendees"]
            for r in await conn.fetch("SELECT * FROM reporting.attendees_by_event")
        }
    finally:
        await conn.close()
    truth = sim.universe.snapshot(1)
    expected = {guid: 0 for guid, _ in truth["event"]}
    for guid, _ in truth["user"]:
        expected[guid] += 1
    assert got == expected


async def test_dbt_source_freshness_fails_when_nothing_was_loaded_for_days(
    db_url: URL, tmp_path: Path
) -> None:
    """The freshness checks have teeth: a database whose last run ended three days ago errors."""
    conn = await asyncpg.connect(db.libpq_url(db_url))
    try:
        run = await conn.fetchval(
            "INSERT INTO runs (environment, status, started_at, finished_at) "
            "VALUES ('uat', 'succeeded', now() - interval '3 days', now() - interval '3 days') "
            "RETURNING id"
        )
        await conn.execute(
            "INSERT INTO fetches (run_id, resource, entity, scope, status, finished_at) "
            "VALUES ($1, 'userData.do', 'user', 'all', 'applied', now() - interval '3 days')",
            run,
        )
    finally:
        await conn.close()
    project = tmp_path / "project"
    shutil.copytree(PROJECT, project)
    proc = syncsvc(db_url, "dbt-sources")
    (project / "models" / "sources.yml").write_text(proc.stdout)
    fresh = _dbt(project, db_url, "source", "freshness", "--select", "source:syncsvc.users")
    assert fresh.returncode == 1, fresh.stdout + fresh.stderr
    results = json.loads((project / "target" / "sources.json").read_text())["results"]
    assert [(r["unique_id"].split(".")[-1], r["status"]) for r in results] == [("users", "error")]
