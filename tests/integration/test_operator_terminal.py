"""A run on a real terminal (a pty), `check` and `plan` against the simulator, and the embedded
PostgreSQL stopped by the command that started it (issue 14, items 3 and 9, check, plan)."""

from __future__ import annotations

import asyncio
import fcntl
import os
import pty
import re
import select
import struct
import subprocess
import sys
import termios
import time
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy.engine import URL

from syncsvc.simulator import SimConfig
from tests.processes import cli_env, run_cli

SimFactory = Callable[..., AbstractAsyncContextManager[Any]]
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
BIG = SimConfig(
    seed=3, events=4, users_per_event=1500, sessions_per_event=10, exhibitors_per_event=3
)


class Terminal:
    """A process on a pseudo-terminal (160x40), its output read as it comes."""

    def __init__(self, args: list[str], env: dict[str, str]) -> None:
        self.master, slave = pty.openpty()
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 160, 0, 0))
        self.proc = subprocess.Popen(
            args,
            stdin=slave,
            stdout=slave,
            stderr=slave,
            env={**env, "TERM": "xterm-256color"},
            close_fds=True,
        )
        os.close(slave)
        self.output = b""

    def read_until(self, predicate: Callable[[str], bool], timeout: float = 240.0) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            text = self.output.decode(errors="replace")
            if predicate(text):
                return text
            ready, _, _ = select.select([self.master], [], [], 0.5)
            if ready:
                try:
                    chunk = os.read(self.master, 65536)
                except OSError:  # the process closed the terminal
                    chunk = b""
                if not chunk and self.proc.poll() is not None:
                    break
                self.output += chunk
        raise AssertionError(
            "never seen on the terminal:\n" + self.output.decode(errors="replace")[-3000:]
        )

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
        try:
            while self.proc.poll() is None:
                ready, _, _ = select.select([self.master], [], [], 0.2)
                if ready:
                    try:
                        os.read(self.master, 65536)
                    except OSError:
                        break
            self.proc.wait(timeout=60)
        finally:
            os.close(self.master)


IN_FLIGHT = re.compile(
    r"user:all\s.*?[\d.]+/[\d.]+ [kM]B\s+[\d,]+ records\s+[\d,]+ rec/s\s+[\d.]+ MB/s"
    r" ETA \d+:\d\d:\d\d"
)


@pytest.mark.db
async def test_a_run_on_a_terminal_shows_the_unit_in_flight_and_logs_on_their_own_lines(
    simulator: SimFactory, db_url: URL
) -> None:
    async with simulator(BIG) as sim:
        env = cli_env(db_url, sim.base_url, SYNCSVC_RETRY_BASE_DELAY="0.01")
        first = await asyncio.to_thread(run_cli, env, "run")  # gives the units their expected size
        assert first.returncode == 0, first.stderr
        # Stream the users slowly (no Content-Length: the ETA comes from the previous run), and
        # make one session dump fail once, so a warning is logged while the display is live.
        await sim.control(
            {
                "day": 1,
                "faults": [
                    {
                        "resource": "userData.do",
                        "event": "*",
                        "kind": "bandwidth",
                        "value": 100_000,
                        "times": None,
                    },
                    {
                        "resource": "sessionData.do",
                        "event": "*",
                        "kind": "http_status",
                        "value": 500,
                        "times": 1,
                    },
                ],
            }
        )
        term = Terminal([sys.executable, "-m", "syncsvc", "run"], env)
        try:
            text = await asyncio.to_thread(
                term.read_until,
                lambda t: "fetch_retrying" in t and IN_FLIGHT.search(ANSI.sub("", t)) is not None,
            )
        finally:
            await asyncio.to_thread(term.close)
    plain = ANSI.sub("", text)
    match = IN_FLIGHT.search(plain)
    assert match is not None
    # The warning is a line of its own: nothing of the display precedes it on its row.
    rows = [row.rstrip("\r").split("\r")[-1] for row in plain.split("\n")]
    warning = next(row for row in rows if "fetch_retrying" in row)
    assert re.match(r"\s*\d{4}-\d\d-\d\dT", warning), warning
    assert "━" not in warning
    assert "units" not in warning.split("fetch_retrying")[0]


def _check(env: dict[str, str]) -> tuple[int, list[str]]:
    proc = run_cli(env, "check")
    verdicts = [line for line in proc.stdout.splitlines() if line[:4] in ("PASS", "FAIL", "WARN")]
    return proc.returncode, verdicts


@pytest.mark.db
async def test_check_passes_with_a_good_token_and_names_101_and_102(
    simulator: SimFactory, db_url: URL
) -> None:
    small = SimConfig(seed=2, events=2, users_per_event=5)
    async with simulator(small) as sim:
        env = cli_env(db_url, sim.base_url)
        code, lines = await asyncio.to_thread(_check, env)
        assert code == 0, lines
        assert [line.split()[:2] for line in lines] == [
            ["PASS", "settings"],
            ["PASS", "database"],
            ["PASS", "api"],
        ]
        out = (await asyncio.to_thread(run_cli, env, "check")).stdout
        assert "sim-account-token" not in out
        assert "api_token = (set)  [SYNCSVC_API_TOKEN]" in out
        assert f"base_url = {sim.base_url}  [SYNCSVC_BASE_URL]" in out

        code, lines = await asyncio.to_thread(_check, {**env, "SYNCSVC_API_TOKEN": "nope-nope"})
        assert code == 1
        api = next(line for line in lines if line.split()[1] == "api")
        assert api.startswith("FAIL")
        assert "code=101" in api
        assert "token" in api

        await sim.control({"allow_list": ["10.255.255.0/24"]})
        code, lines = await asyncio.to_thread(_check, env)
        assert code == 1
        api = next(line for line in lines if line.split()[1] == "api")
        assert api.startswith("FAIL")
        assert "code=102" in api
        assert "left from 127.0.0.1" in api  # the egress address to allow-list


@pytest.mark.db
async def test_check_fails_on_a_database_behind_the_code(
    simulator: SimFactory, empty_db_url: URL
) -> None:
    async with simulator(SimConfig(seed=2, events=1, users_per_event=3)) as sim:
        code, lines = await asyncio.to_thread(_check, cli_env(empty_db_url, sim.base_url))
    assert code == 1
    database = next(line for line in lines if line.split()[1] == "database")
    assert database.startswith("FAIL")
    assert "syncsvc db upgrade" in database


@pytest.mark.db
async def test_plan_lists_the_units_without_fetching_anything(
    simulator: SimFactory, db_url: URL
) -> None:
    small = SimConfig(seed=2, events=3, users_per_event=5)
    async with simulator(small) as sim:
        env = cli_env(db_url, sim.base_url)
        assert (await asyncio.to_thread(run_cli, env, "run")).returncode == 0
        await sim.reset_stats()
        proc = await asyncio.to_thread(run_cli, env, "plan")
        stats = await sim.stats()
        guids = sorted(guid for guid, _ in sim.universe.snapshot(0)["event"])
    assert proc.returncode == 0, proc.stderr
    assert stats["total_requests"] == 0
    names = [line.split()[0] for line in proc.stdout.splitlines()[:-1]]
    assert names == ["event:account", "user:all", "session:all"] + [f"exhibitor:{g}" for g in guids]
    assert proc.stdout.splitlines()[-1].startswith(f"{3 + len(guids)} units;")


def _postmaster_running(pgdata: Path) -> bool:
    pid_file = pgdata / "postmaster.pid"
    if not pid_file.exists():
        return False
    pid = int(pid_file.read_text().splitlines()[0])
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_the_embedded_server_stops_with_the_command_that_started_it(tmp_path: Path) -> None:
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(tmp_path),
        "XDG_DATA_HOME": str(tmp_path),
        "SYNCSVC_LOG_LEVEL": "warning",
    }
    pgdata = tmp_path / "syncsvc" / "pgdata"
    try:
        upgrade = run_cli(env, "db", "upgrade")
        assert upgrade.returncode == 0, upgrade.stderr
        assert not _postmaster_running(pgdata)  # started by `db upgrade`, stopped at its exit
        url = run_cli(env, "db", "url")
        assert url.returncode == 0, url.stderr
        assert _postmaster_running(pgdata)  # `db url` leaves it up for psql
        status = run_cli(env, "status")  # a server it did not start is left alone
        assert status.returncode == 0, status.stderr
        assert _postmaster_running(pgdata)
        stop = run_cli(env, "db", "stop")
        assert stop.returncode == 0, stop.stderr
        assert "stopped" in stop.stdout
        assert not _postmaster_running(pgdata)
        again = run_cli(env, "db", "stop")
        assert again.returncode == 0
        assert "not running" in again.stdout
    finally:
        if _postmaster_running(pgdata):
            import signal

            pid = int((pgdata / "postmaster.pid").read_text().splitlines()[0])
            os.kill(pid, signal.SIGINT)
