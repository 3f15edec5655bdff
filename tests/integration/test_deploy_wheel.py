"""The wheel the Dockerfile installs carries every module and the migrations, and works without
pgserver (the image removes it) against a database given by SYNCSVC_DATABASE_URL."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from sqlalchemy.engine import URL

from syncsvc.store import db

ROOT = Path(__file__).resolve().parents[2]

# Runs syncsvc from the unpacked wheel, first on sys.path, with pgserver made unimportable as in
# the image; prints where the migrations came from so the test can check it.
RUNNER = """
import sys
sys.path.insert(0, sys.argv[1])
sys.modules["pgserver"] = None
from syncsvc.store import db
print("migrations:", db.migrations_dir())
from syncsvc.cli import main
main(sys.argv[2:])
"""


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`pip wheel .` as the Dockerfile's build stage runs it (dependencies aside), on a copy of
    the source as the build stage has: an in-tree build leaves `build/` behind, whose stale
    copies of moved modules a later build would ship."""
    out = tmp_path_factory.mktemp("wheel")
    source = tmp_path_factory.mktemp("source") / "syncsvc"
    shutil.copytree(
        ROOT,
        source,
        ignore=shutil.ignore_patterns(".*", "build", "dist", "*.egg-info", "__pycache__"),
    )
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--wheel-dir", str(out), "."],
        cwd=source,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    [built] = out.glob("syncsvc-*.whl")
    return built


def test_the_wheel_ships_every_module_and_the_migrations(wheel: Path) -> None:
    names = set(zipfile.ZipFile(wheel).namelist())
    expected = {str(p.relative_to(ROOT)) for p in (ROOT / "syncsvc").rglob("*.py")}
    expected |= {
        "syncsvc/migrations/" + str(p.relative_to(ROOT / "migrations"))
        for p in (ROOT / "migrations").rglob("*")
        if p.is_file() and p.suffix in (".py", ".mako") and "__pycache__" not in p.parts
    }
    expected.add("syncsvc/py.typed")
    expected |= {str(p.relative_to(ROOT)) for p in (ROOT / "syncsvc/web/templates").glob("*")}
    assert "syncsvc/migrations/versions/0001_initial_schema.py" in expected
    assert expected - names == set()


@pytest.mark.db
async def test_db_upgrade_runs_from_the_wheel_without_pgserver(
    wheel: Path, empty_db_url: URL, tmp_path: Path
) -> None:
    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(tmp_path),
        "SYNCSVC_DATABASE_URL": db.libpq_url(empty_db_url),
        "SYNCSVC_LOG_LEVEL": "warning",
    }

    def syncsvc(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-c", RUNNER, str(site), *args],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )

    upgrade = syncsvc("db", "upgrade")
    assert upgrade.returncode == 0, upgrade.stderr
    assert f"migrations: {site / 'syncsvc' / 'migrations'}" in upgrade.stdout
    current = syncsvc("db", "current")
    assert current.returncode == 0, current.stdout + current.stderr
    assert f"database revision: {db.SCHEMA_HEAD}" in current.stdout


def test_without_a_database_url_the_image_cannot_fall_back_to_pgserver(
    wheel: Path, tmp_path: Path
) -> None:
    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)
    proc = subprocess.run(
        [sys.executable, "-c", RUNNER, str(site), "db", "current"],
        env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(tmp_path)},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode != 0
    assert not (tmp_path / ".local" / "share" / "syncsvc" / "pgdata").exists()
