"""Webhook delivery end to end: `serve` (a subprocess) delivers a multi-day simulated account to a
receiver written for the test, through 500s, 429s with Retry-After, timeouts, the receiver down
for a while, and SIGKILLs of `serve` mid-batch.

The truth is the change log itself (seq 1..N in the database, written by real runs against the
simulator) and the receiver's own record of what it accepted, each request checked with the
`standardwebhooks` verifier.
"""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import pytest
from sqlalchemy.engine import URL
from sqlalchemy.ext.asyncio import AsyncEngine

from syncsvc import scheduler
from syncsvc.settings import Settings
from syncsvc.simulator import SimConfig
from syncsvc.store import db
from tests.processes import cli_env
from tests.webhook_receiver import Receiver, new_secret

pytestmark = pytest.mark.db

SimFactory = Callable[..., AbstractAsyncContextManager[Any]]

CONFIG = SimConfig(
    seed=5,
    events=4,
    users_per_event=60,
    sessions_per_event=6,
    exhibitors_per_event=3,
    update_rate=0.1,
    delete_rate=0.04,
    insert_rate=0.05,
    recreate_rate=0.03,
    big_event_every=3,
    new_event_every=2,
)


def _env(url: URL, sim: Any, **extra: str) -> dict[str, str]:
    deliveries_only = {
        "SYNCSVC_LOG_FORMAT": "json",
        "SYNCSVC_LOG_LEVEL": "debug",
        "SYNCSVC_SERVE_PORT": "0",
        "SYNCSVC_SERVE_HOST": "127.0.0.1",
        "SYNCSVC_SCHEDULE": "0 0 1 1 *",  # never during the test: only deliveries run
        "SYNCSVC_FEED_POLL_INTERVAL": "0.5",
        "SYNCSVC_WEBHOOK_TIMEOUT": "1",
        "SYNCSVC_WEBHOOK_RETRY_BASE_DELAY": "0.05",
        "SYNCSVC_WEBHOOK_RETRY_MAX_DELAY": "0.5",
        "SYNCSVC_WEBHOOK_FAILING_AFTER": "1",
        "SYNCSVC_WEBHOOK_BATCH_MAX_WAIT": "0.05",
    }
    return cli_env(url, sim.base_url, **(deliveries_only | extra))


def _syncsvc(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "syncsvc", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def _settings(sim: Any) -> Settings:
    return Settings.load({}).replace(
        base_url=sim.base_url,
        api_token="sim-account-token",
        retry_base_delay=0.01,
        retry_max_delay=0.05,
        rate_limit=200.0,
    )


class Serve:
    """`syncsvc serve` as a subprocess, its log in a file (never a pipe that could fill)."""

    def __init__(self, env: dict[str, str], log: Path) -> None:
        self.env = env
        self.log = log
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with self.log.open("ab") as err:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "syncsvc", "serve"],
                env=self.env,
                stdout=subprocess.DEVNULL,
                stderr=err,
            )

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=30)
        self.proc = None

    def stop(self) -> int:
        if self.proc is None:
            return 0
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=60)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait()
            self.proc = None

    def port(self) -> int:
        for line in self.log.read_text().splitlines():
            if '"serve_started"' in line:
                port = int(json.loads(line)["port"])
        return port


async def _until(check: Callable[[], Any], what: str, seconds: float = 120) -> Any:
    """Poll a state until it holds (never a fixed sleep standing in for an event)."""
    deadline = time.monotonic() + seconds
    while True:
        value = await check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


async def test_every_change_arrives_once_in_order_through_faults_and_kills(
    simulator: SimFactory, engine: AsyncEngine, db_url: URL, tmp_path: Path
) -> None:
    secret = new_secret()
    secret_file = tmp_path / "hook-secret"
    secret_file.write_text(secret + "\n")
    receiver = Receiver(secret)
    await receiver.start()
    conn = await asyncpg.connect(db.libpq_url(db_url))

    async def consumer() -> Any:
        return await conn.fetchrow("SELECT * FROM consumers WHERE name = 'crm'")

    async def high() -> int:
        return int(await conn.fetchval("SELECT coalesce(max(seq), 0) FROM changes"))

    async with simulator(CONFIG) as sim:
        settings = _settings(sim)
        env = _env(db_url, sim)
        serve = Serve(env, tmp_path / "serve.log")
        kills = 0
        try:
            sim.set_day(0)
            assert (await scheduler.run_once(settings, engine)).status == "succeeded"
            added = _syncsvc(
                env,
                "consumers",
                "add",
                "crm",
                "--webhook",
                receiver.url,
                "--secret-file",
                str(secret_file),
                "--batch-size",
                "25",
            )
            assert added.returncode == 0, added.stderr
            # The first requests fail every way a receiver can fail but going away.
            receiver.script.extend(["500", "429:1", "timeout", "ok", "500", "ok"])
            serve.start()
            await receiver.wait_requests(6)

            # SIGKILL mid-batch: the receiver has committed the batch, serve never hears back.
            receiver.release.clear()
            receiver.held.clear()
            receiver.script.append("hold")
            await asyncio.wait_for(receiver.held.wait(), 120)
            serve.kill()
            kills += 1
            receiver.release.set()
            serve.start()

            sim.set_day(1)
            assert (await scheduler.run_once(settings, engine)).status == "succeeded"

            # The receiver goes away; serve keeps retrying and marks the consumer failing.
            day1 = await high()
            await _until(lambda: _cursor_at(consumer, day1), "day 1 delivered")
            await receiver.stop()
            sim.set_day(2)
            assert (await scheduler.run_once(settings, engine)).status == "succeeded"
            row = await _until(
                lambda: _status(consumer, "failing"), "the consumer to be marked failing"
            )
            assert row["last_error"].startswith("cannot connect")
            port = serve.port()
            # /healthz and /metrics report what serve last read (at most a poll interval old).
            health = await _until(lambda: _failing_in_health(port), "/healthz to report it")
            assert health["healthy"] is True  # a failing receiver is reported, not fatal
            assert [c["status"] for c in health["consumers"]] == ["failing"]
            await _until(
                lambda: _metric(port, 'syncsvc_consumer_failing{consumer="crm"} 1.0'), "metrics"
            )
            async with (
                aiohttp.ClientSession() as http,
                http.get(f"http://127.0.0.1:{port}/metrics") as resp,
            ):
                metrics = await resp.text()
            assert 'syncsvc_consumer_lag_rows{consumer="crm"}' in metrics
            assert secret not in metrics
            await receiver.start()  # back on the same port
            await _until(lambda: _status(consumer, "active"), "the consumer to recover")

            # A second kill mid-batch, then the last day.
            receiver.release.clear()
            receiver.held.clear()
            receiver.script.append("hold")
            sim.set_day(3)
            assert (await scheduler.run_once(settings, engine)).status == "succeeded"
            await asyncio.wait_for(receiver.held.wait(), 120)
            serve.kill()
            kills += 1
            receiver.release.set()
            serve.start()

            last = await high()
            await _until(
                lambda: _cursor_at(consumer, last), "the consumer to acknowledge the whole log"
            )
            assert serve.stop() == 0
            log = (tmp_path / "serve.log").read_text()
        finally:
            serve.stop()
            await receiver.stop()
        seqs_in_log = [r[0] for r in await conn.fetch("SELECT seq FROM changes ORDER BY seq")]
        await conn.close()

    got = receiver.seqs()
    dedup = list(dict.fromkeys(got))
    assert dedup == seqs_in_log, "every change exactly once, in order, nothing else"
    assert len(seqs_in_log) > 250
    # Duplicates only as whole batches re-sent after a kill, with the same webhook-id.
    ids = [msg_id for msg_id, _ in receiver.accepted]
    resent = [msg_id for i, msg_id in enumerate(ids) if msg_id in ids[:i]]
    assert len(resent) == kills
    for msg_id in resent:
        first = next(s for m, s in receiver.accepted if m == msg_id)
        assert [s for m, s in receiver.accepted if m == msg_id] == [first, first]
    duplicates = len(got) - len(dedup)
    print(f"\n{len(dedup)} changes delivered, {duplicates} duplicates in {len(resent)} batches")
    # No reordering: without the re-sent copies the stream is strictly increasing.
    once: list[int] = []
    seen: set[str] = set()
    for msg_id, seqs in receiver.accepted:
        if msg_id not in seen:
            once += seqs
            seen.add(msg_id)
    assert once == sorted(set(once)) == seqs_in_log
    assert receiver.bad_signatures == 0
    # Retry-After honoured: the request after the 429 came no sooner than it asked.
    after_429 = next(i for i, r in enumerate(receiver.requests) if r.action.startswith("429"))
    assert receiver.requests[after_429 + 1].at - receiver.requests[after_429].at >= 1.0
    assert secret not in log
    assert secret.removeprefix("whsec_") not in log
    assert '"webhook_attempt_failed"' in log


async def _status(consumer: Callable[[], Any], status: str) -> Any:
    row = await consumer()
    return row if row["status"] == status else None


async def _cursor_at(consumer: Callable[[], Any], seq: int) -> bool:
    row = await consumer()
    return bool(row["cursor"] == seq and row["inflight_until"] is None)


async def _failing_in_health(port: int) -> Any:
    async with (
        aiohttp.ClientSession() as http,
        http.get(f"http://127.0.0.1:{port}/healthz") as resp,
    ):
        health = await resp.json()
    return health if health["failing_consumers"] == ["crm"] else None


async def _metric(port: int, line: str) -> bool:
    async with (
        aiohttp.ClientSession() as http,
        http.get(f"http://127.0.0.1:{port}/metrics") as resp,
    ):
        return line in await resp.text()
