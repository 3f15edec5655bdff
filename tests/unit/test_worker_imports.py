"""What a parse worker imports: the parse, not the service around it.

Every module a worker holds is memory of its own once touched (Python's reference counts write
to the pages it shares with the forkserver), times the number of workers, in the container's
budget. Checked in a fresh interpreter, as the forkserver and its workers start.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
import tomllib
from pathlib import Path

from syncsvc.parse import pool, worker
from syncsvc.vocab import ExitCode

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
    # What `python -m syncsvc.parse.worker` imports before it forks the other workers.
    loaded = _imported_by(f"import {worker.__name__}")
    assert "syncsvc.parse.segments" in loaded  # the check sees what it should
    heavy = sorted(m for m in loaded if any(m == n or m.startswith(f"{n}.") for n in BANNED))
    assert heavy == []


def _group(pgid: int) -> list[int]:
    """The live (not zombie) processes of a process group."""
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, IndexError):
            fields = stat.read_text().rsplit(")", 1)[1].split()
            if int(fields[2]) == pgid:
                out.append(int(stat.parent.name))
    return out


def test_the_pool_is_its_workers_only_and_close_leaves_none() -> None:
    parse_pool = pool.ParsePool(3)
    proc = parse_pool._proc
    assert proc is not None
    try:
        # No forkserver or resource tracker beside them: the first worker forks the others
        # once it has imported the parse (waited for as a state, not a time).
        deadline = time.monotonic() + 60
        while len(members := _group(proc.pid)) < 3 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert len(members) == 3
        assert proc.pid in members
    finally:
        parse_pool.close()
    assert proc.returncode == 0  # it ended on its own, after reaping the others
    assert _group(proc.pid) == []
    parse_pool.close()  # idempotent


def test_the_commands_script_imports_no_cli_in_a_worker() -> None:
    # A worker of a process started as the `syncsvc` command re-runs that command's script as
    # `__mp_main__` (multiprocessing's spawn preparation): what the script imports at its top,
    # `from <module> import <function>` of the entry point, is imported in every worker.
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    module, function = scripts["syncsvc"].split(":")
    loaded = _imported_by(f"from {module} import {function}")
    assert module in loaded  # the check sees what it should
    assert sorted(m for m in loaded if m in ("syncsvc.cli", "typer", "click", "rich")) == []


def test_the_run_command_imports_no_pydantic_and_no_rich_tracebacks(tmp_path: Path) -> None:
    # The `run` process is most of the container's memory, its imports most of that: typer 0.29
    # imports pydantic for any option but a flag, structlog rich's traceback and pretty-printer
    # (and pygments) unless told not to. Without an API token the command stops at its settings,
    # after its imports (the structlog one comes with them: a module-level logger).
    env = {k: v for k, v in os.environ.items() if not k.startswith("SYNCSVC_")}
    env["SYNCSVC_DATA_DIR"] = str(tmp_path)
    out = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys\nfrom syncsvc.cli import main\ntry:\n    main(['run'])\n"
            "except SystemExit as exc:\n    print('exit', exc.code)\n"
            "print('\\n'.join(sys.modules))",
        ],
        capture_output=True,
        text=True,
        check=True,
        env=env,
    ).stdout.split()
    assert "syncsvc.scheduler" in out  # the check sees what it should
    assert "structlog" in out
    assert out[out.index("exit") + 1] == str(ExitCode.CONFIG)
    banned = ("pydantic", "pygments", "rich.traceback", "rich.pretty")
    assert sorted(m for m in out if any(m == n or m.startswith(f"{n}.") for n in banned)) == []
