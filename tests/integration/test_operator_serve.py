"""`serve` tells the truth (issue 14, items 1 and 2): health and metrics from the database,
a refused token makes the service unhealthy but keeps it up, a port in use is one line, exit 2.
Real subprocesses, real HTTP (the simulator, the service's own port), real PostgreSQL."""

from __future__ import annotations

import asyncio
import json
import signal
import socket
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from typing import Any

import aiohttp
import asyncpg
import pytest
from sqlalchemy.engine import URL

from syncsvc.simulator import SimConfig
from syncsvc.store import db
from tests.processes import SIM_TOKEN, cli_env, logged, run_cli, serve, serve_port

pytestmark = pytest.mark.db

SimFactory = Callable[..., AbstractAsyncContextManager[Any]]
CONFIG = SimConfig(
    seed=5, events=3, users_per_event=30, sessions_per_event=4, exhibitors_per_event=2
)


def _env(url: URL, base_url: str, token: str = SIM_TOKEN, **extra: str) -> dict[str, str]:
    serve_defaults = {
        "SYNCSVC_LOG_FORMAT": "json",
        "SYNCSVC_SERVE_PORT": "0",
        "SYNCSVC_SERVE_HOST": "127.0.0.1",
        "SYNCSVC_RETRY_ATTEMPTS": "1",
    }
    return cli_env(url, base_url, token, **(serve_defaults | extra))


async def _wait_run(url: URL, status: str, count: int = 1) -> asyncpg.Record:
    conn = await asyncpg.connect(db.libpq_url(url))
    try:
        for _ in range(1200):
            rows = await conn.fetch("SELECT * FROM runs WHERE status = $1 ORDER BY id", status)
            if len(rows) >= count:
                return rows[-1]
            await asyncio.sleep(0.05)
    finally:
        await conn.close()
    raise AssertionError(f"no {status} run appeared")


async def _get(port: int, path: str) -> tuple[int, str]:
    async with aiohttp.ClientSession() as http, http.get(f"http://127.0.0.1:{port}{path}") as r:
        return r.status, await r.text()


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_healthz_503_after_a_failed_run_and_metrics_primed_across_restarts(
    simulator: SimFactory, db_url: URL
) -> None:
    async with simulator(CONFIG) as sim:
        first = await asyncio.to_thread(run_cli, _env(db_url, sim.base_url), "run")
        assert first.returncode == 0, first.stderr
    succeeded = await _wait_run(db_url, "succeeded")
    unreachable = f"http://127.0.0.1:{_closed_port()}/api/"
    env = _env(db_url, unreachable)
    with serve(env, "--run-now") as proc:
        port = await asyncio.to_thread(serve_port, proc)
        failed = await _wait_run(db_url, "failed")
        status, body = await _get(port, "/healthz")
        assert status == 503
        reason = json.loads(body)["reason"]
        assert f"run {failed['id']} failed" in reason
        assert proc.poll() is None  # still serving
        _, metrics = await _get(port, "/metrics")
        assert 'syncsvc_runs_total{status="failed"} 1.0' in metrics
    # A restart: health still comes from the database, and the gauges are primed from it.
    with serve(env) as proc:
        port = await asyncio.to_thread(serve_port, proc)
        status, body = await _get(port, "/healthz")
        assert status == 503, body
        assert f"run {failed['id']} failed" in json.loads(body)["reason"]
        _, metrics = await _get(port, "/metrics")
    gauges = {
        line.split()[0]: float(line.split()[1])
        for line in metrics.splitlines()
        if line.startswith("syncsvc_last_")
    }
    assert gauges["syncsvc_last_success_timestamp_seconds"] == pytest.approx(
        succeeded["finished_at"].timestamp(), abs=0.01
    )
    assert gauges["syncsvc_last_run_finished_timestamp_seconds"] == pytest.approx(
        failed["finished_at"].timestamp(), abs=0.01
    )


@pytest.mark.parametrize(
    ("control", "token", "code", "words"),
    [
        ({}, "not-a-token", 101, "token"),
        ({"allow_list": ["10.255.255.0/24"]}, "sim-account-token", 102, "allow-listed"),
    ],
)
async def test_serve_stays_up_and_unhealthy_on_a_refused_token_or_address(
    simulator: SimFactory,
    db_url: URL,
    control: dict[str, Any],
    token: str,
    code: int,
    words: str,
) -> None:
    async with simulator(CONFIG) as sim:
        if control:
            await sim.control(control)
        with serve(_env(db_url, sim.base_url, token), "--run-now") as proc:
            port = await asyncio.to_thread(serve_port, proc)
            # The service says it is unhealthy once the run is over: wait for that line, not
            # for the run's row (written before it), so the SIGTERM below cannot overtake it.
            unhealthy = await asyncio.to_thread(logged, proc, "serve_unhealthy")
            failed = await _wait_run(db_url, "failed")
            assert failed["error_code"] == code
            status, body = await _get(port, "/healthz")
            assert status == 503
            assert words in json.loads(body)["reason"]
            assert proc.poll() is None  # it did not exit: it retries at the next fire
            proc.send_signal(signal.SIGTERM)
            _, err = await asyncio.to_thread(proc.communicate, timeout=60)
            assert proc.returncode == 0, err
        assert token not in err + json.dumps(unhealthy)
        assert words in unhealthy["reason"]


async def test_serve_on_a_port_in_use_exits_2_with_one_line(
    simulator: SimFactory, db_url: URL
) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        async with simulator(CONFIG) as sim:
            env = _env(db_url, sim.base_url, SYNCSVC_SERVE_PORT=str(port))
            proc = await asyncio.to_thread(run_cli, env, "serve")
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert f"127.0.0.1:{port}" in lines[0]
    assert "Traceback" not in proc.stderr
