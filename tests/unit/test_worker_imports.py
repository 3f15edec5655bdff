"""What a parse worker imports: the parse, not the service around it.

Every module a worker holds is memory of its own once touched (Python's reference counts write
to the pages it shares with the forkserver), times the number of workers, in the container's
budget. Checked in a fresh interpreter, as the forkserver and its workers start.
"""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

from syncsvc.parse import pool, worker

ROOT = Path(__file__).resolve().parents[2]

# The service's libraries: none belongs in a process that only turns XML into COPY rows.
BANNED = (
    "asyncio",
    "sqlalchemy",
    "asyncpg",
    "aiohttp",
    "structlog",
    "prometheus_client",
    "rich",
    "typer",
    "alembic",
    "syncsvc.settings",
    "syncsvc.store",
    "syncsvc.cvent.client",
)


def _imported_by(code: str) -> set[str]:
    out = subprocess.run(
        [sys.executable, "-c", f"{code}\nimport sys\nprint('\\n'.join(sys.modules))"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return set(out.split())


def test_a_worker_imports_only_the_parse() -> None:
    # What the forkserver imports (its own module, then the preload) and what each worker adds
    # when it unpickles its target.
    loaded = _imported_by(
        "import multiprocessing.forkserver\n"
        f"import {worker.__name__}\n"
        f"from {worker.__name__} import serve\n"
    )
    assert "syncsvc.parse.segments" in loaded  # the check sees what it should
    heavy = sorted(m for m in loaded if any(m == n or m.startswith(f"{n}.") for n in BANNED))
    assert heavy == []


def test_the_forkserver_preloads_the_workers_target() -> None:
    # The target's module is the one the forkserver imports first: what the workers import is
    # then shared with it instead of imported again in each one.
    assert pool.ParsePool.preload == (worker.serve.__module__,)


def test_the_commands_script_imports_no_cli_in_a_worker() -> None:
    # A worker of a process started as the `syncsvc` command re-runs that command's script as
    # `__mp_main__` (multiprocessing's spawn preparation): what the script imports at its top,
    # `from <module> import <function>` of the entry point, is imported in every worker.
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    module, function = scripts["syncsvc"].split(":")
    loaded = _imported_by(f"from {module} import {function}")
    assert module in loaded  # the check sees what it should
    assert sorted(m for m in loaded if m in ("syncsvc.cli", "typer", "click", "rich")) == []
