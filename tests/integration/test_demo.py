"""The README's first command: `syncsvc demo` on embedded defaults prints the change summary."""

from __future__ import annotations

import os
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

pytestmark = pytest.mark.db


def test_demo_on_embedded_defaults_prints_the_change_summary(tmp_path: Path) -> None:
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(tmp_path),
        "XDG_DATA_HOME": str(tmp_path),
    }
    # The demo's data lives apart from the database a real run uses (issue 14, item 8).
    pgdata = tmp_path / "syncsvc" / "demo" / "pgdata"
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "syncsvc", "demo"],
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert proc.returncode == 0, proc.stderr
        out = proc.stdout
        assert "run 1: succeeded" in out
        assert "run 2: succeeded" in out
        for entity in ("event", "user", "session", "exhibitor"):
            assert entity in out
        assert " rekey " in out  # a rekey change record is shown
        assert "same clientID" in out
        assert "syncsvc changes" in out  # and what to run next
        assert str(pgdata) in out
        assert f"export SYNCSVC_DATA_DIR={pgdata.parent}" in out  # naming the demo's database
        assert "python3 -m syncsvc db stop" in out or "bin/syncsvc db stop" in out  # runnable
        assert not (tmp_path / "syncsvc" / "pgdata").exists()  # a real run's default: untouched
        assert not (pgdata / "postmaster.pid").exists()  # its server stopped with it (item 9)
        # Running it again resets the demo's own database and succeeds the same way.
        again = subprocess.run(
            [sys.executable, "-m", "syncsvc", "demo"],
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert again.returncode == 0, again.stderr
        assert "run 2: succeeded" in again.stdout
    finally:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            import pgserver

            if (pgdata / "postmaster.pid").exists():
                pgserver.get_server(pgdata, cleanup_mode="stop").cleanup()
