"""The syncsvc CLI as the tests run it: its environment, one command, `serve` and its log.

Every integration test that starts `python -m syncsvc` builds on these, so a setting the CLI
needs (or a change to how `serve` announces its port) is made in one place.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from sqlalchemy.engine import URL

from syncsvc.store import db

SIM_TOKEN = "sim-account-token"


def cli_env(
    url: URL | str | None = None,
    base_url: str | None = None,
    token: str = SIM_TOKEN,
    **extra: str,
) -> dict[str, str]:
    """A clean environment for the CLI: PATH and HOME, the database, the API when given."""
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": "/tmp"}
    if url is not None:
        env["SYNCSVC_DATABASE_URL"] = url if isinstance(url, str) else db.libpq_url(url)
    if base_url is not None:
        env["SYNCSVC_BASE_URL"] = base_url
        env["SYNCSVC_API_TOKEN"] = token
    env.update(extra)
    return env


def run_cli(
    env: dict[str, str], *args: str, timeout: float = 300
) -> subprocess.CompletedProcess[str]:
    """One `python -m syncsvc ...` to its end, output captured."""
    return subprocess.run(
        [sys.executable, "-m", "syncsvc", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@contextmanager
def started(env: dict[str, str], *args: str) -> Iterator[subprocess.Popen[str]]:
    """`python -m syncsvc ARGS` in its own session (a Ctrl-C reaches its whole group, parse
    workers included); killed with its group and waited for when the block ends, whatever the
    test did."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "syncsvc", *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        yield proc
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()


@contextmanager
def serve(env: dict[str, str], *args: str) -> Iterator[subprocess.Popen[str]]:
    """`syncsvc serve`, stopped with SIGTERM (killed if it does not stop) when the block ends."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "syncsvc", "serve", *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
        try:
            proc.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()


def logged(proc: subprocess.Popen[str], event: str) -> dict[str, Any]:
    """Read a process's JSON log until `event` and return that line (a state it wrote)."""
    assert proc.stderr is not None
    for line in proc.stderr:
        if f'"{event}"' in line:
            found: dict[str, Any] = json.loads(line)
            return found
    raise AssertionError(f"the process never logged {event}")


def serve_port(proc: subprocess.Popen[str]) -> int:
    """The port `serve` bound (it logs `serve_started` with it once listening)."""
    return int(logged(proc, "serve_started")["port"])
