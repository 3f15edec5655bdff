"""The change feed on a real database: named pull consumers, follow mode woken by NOTIFY, the
environment on every row, retention, and the published JSON schemas against real output."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from jsonschema import Draft202012Validator
from sqlalchemy.engine import URL
from sqlalchemy.ext.asyncio import AsyncEngine

from syncsvc import scheduler
from syncsvc.records import from_typed
from syncsvc.settings import Settings
from syncsvc.simulator import SimConfig
from syncsvc.store import db
from syncsvc.store.runs import create_run
from syncsvc.store.unit import UnitWriter
from tests.integration.test_changefeed import _seed
from tests.processes import cli_env

pytestmark = pytest.mark.db

SimFactory = Callable[..., AbstractAsyncContextManager[Any]]
DOCS = Path(__file__).resolve().parents[2] / "docs"

CONFIG = SimConfig(
    seed=3,
    events=4,
    users_per_event=50,
    sessions_per_event=6,
    exhibitors_per_event=3,
    update_rate=0.1,
    delete_rate=0.04,
    insert_rate=0.05,
    recreate_rate=0.05,
    big_event_every=3,
    new_event_every=2,
)


def _env(url: URL, sim: Any = None, **extra: str) -> dict[str, str]:
    quiet = {"SYNCSVC_LOG_LEVEL": "warning", "SYNCSVC_LOG_FORMAT": "json"}
    return cli_env(url, None if sim is None else sim.base_url, **(quiet | extra))


def _syncsvc(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "syncsvc", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def _seqs(out: str) -> list[int]:
    return [json.loads(line)["seq"] for line in out.splitlines()]


async def _fetchval(url: URL, sql: str, *args: Any) -> Any:
    conn = await asyncpg.connect(db.libpq_url(url))
    try:
        return await conn.fetchval(sql, *args)
    finally:
        await conn.close()


# --- named pull consumers ------------------------------------------------------------------------


async def test_a_consumer_resumes_where_it_acknowledged(db_url: URL) -> None:
    await _seed(db_url, 30)
    env = _env(db_url)
    assert _syncsvc(env, "consumers", "add", "wh").returncode == 0
    first = _syncsvc(env, "changes", "--consumer", "wh", "--limit", "12")
    assert first.returncode == 0, first.stderr
    assert _seqs(first.stdout) == list(range(1, 13))
    assert await _fetchval(db_url, "SELECT cursor FROM consumers WHERE name = 'wh'") == 12
    rest = _syncsvc(env, "changes", "--consumer", "wh")
    assert _seqs(rest.stdout) == list(range(13, 31))
    again = _syncsvc(env, "changes", "--consumer", "wh")
    assert again.returncode == 0
    assert again.stdout == ""
    # Committed on its side first: acknowledge without output; replay by reset.
    assert _syncsvc(env, "consumers", "reset", "wh", "--to", "5").returncode == 0
    acked = _syncsvc(env, "changes", "--consumer", "wh", "--ack-only", "20")
    assert acked.returncode == 0
    assert acked.stdout == ""
    assert _seqs(_syncsvc(env, "changes", "--consumer", "wh").stdout) == list(range(21, 31))
    status = _syncsvc(env, "status")
    assert "consumers" in status.stdout
    assert "wh" in status.stdout
    listed = _syncsvc(env, "consumers", "list")
    assert "wh" in listed.stdout
    assert "pull" in listed.stdout


async def test_a_filtered_consumer_moves_past_rows_it_does_not_want(db_url: URL) -> None:
    rows = await _seed(db_url, 30)
    env = _env(db_url)
    assert _syncsvc(env, "consumers", "add", "ops", "--entity", "session").returncode == 0
    out = _syncsvc(env, "changes", "--consumer", "ops")
    assert _seqs(out.stdout) == [r["seq"] for r in rows if r["entity"] == "session"]
    # Caught up: the cursor is at the newest row, so its lag is nothing.
    shown = json.loads(_syncsvc(env, "consumers", "show", "ops").stdout)
    assert shown["cursor"] == 30
    assert shown["lag_rows"] == 0


async def test_consumer_misuse_is_one_line_with_the_right_exit_code(
    db_url: URL, tmp_path: Path
) -> None:
    await _seed(db_url, 3)
    env = _env(db_url)
    assert _syncsvc(env, "consumers", "add", "a").returncode == 0
    cases = [
        (("changes", "--consumer", "a", "--entity", "user"), 2, "cannot be combined"),
        (("changes", "--ack-only", "3"), 2, "needs --consumer"),
        (("changes", "--consumer", "nobody"), 2, "no consumer named 'nobody'"),
        (("changes", "--consumer", "a", "--ack-only", "99"), 2, "past the newest change"),
        (("consumers", "add", "a"), 1, "exists already"),
        (("consumers", "add", "Bad Name"), 2, "consumer name"),
        (("consumers", "add", "b", "--webhook", "http://example.com/x"), 2, "https"),
        (("consumers", "add", "b", "--webhook", "https://u:p@example.com/x"), 2, "credentials"),
        (("consumers", "add", "b", "--webhook", "https://example.com/x"), 2, "--secret-file"),
        (("changes", "--environment", "staging"), 2, "--environment 'staging'"),
    ]
    for args, code, words in cases:
        proc = _syncsvc(env, *args)
        assert proc.returncode == code, (args, proc.stderr)
        assert words in proc.stderr, (args, proc.stderr)
        assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    bad_secret = tmp_path / "secret"
    bad_secret.write_text("not-a-secret-value-at-all")
    proc = _syncsvc(
        env, "consumers", "add", "b", "--webhook", "https://example.com/x",
        "--secret-file", str(bad_secret),
    )  # fmt: skip
    assert proc.returncode == 2
    assert "not-a-secret-value-at-all" not in proc.stderr  # never echoed, even malformed


async def test_every_row_carries_its_environment_and_filters_on_it(db_url: URL) -> None:
    rows = await _seed(db_url, 20)
    run2 = rows[-1]["run_id"]
    conn = await asyncpg.connect(db.libpq_url(db_url))
    try:
        await conn.execute("UPDATE runs SET environment = 'production' WHERE id = $1", run2)
        captured = {r["seq"]: r["captured_at"] for r in await conn.fetch("SELECT * FROM changes")}
        await conn.execute(
            "UPDATE changes SET captured_at = captured_at - interval '1 day' WHERE seq <= 5"
        )
    finally:
        await conn.close()
    env = _env(db_url)
    every = [json.loads(line) for line in _syncsvc(env, "changes").stdout.splitlines()]
    assert {(r["run_id"], r["environment"]) for r in every} == {
        (rows[0]["run_id"], "uat"),
        (run2, "production"),
    }
    prod = _syncsvc(env, "changes", "--environment", "production")
    assert _seqs(prod.stdout) == [r["seq"] for r in rows if r["run_id"] == run2]
    window = _syncsvc(env, "changes", "--since", "3", "--until", "8")
    assert _seqs(window.stdout) == [4, 5, 6, 7, 8]
    cutoff = (captured[1] - dt.timedelta(hours=1)).isoformat()
    assert _seqs(_syncsvc(env, "changes", "--captured-before", cutoff).stdout) == [1, 2, 3, 4, 5]
    assert _seqs(_syncsvc(env, "changes", "--captured-after", cutoff).stdout) == list(range(6, 21))
    client = rows[6]["client_id"]
    assert _seqs(_syncsvc(env, "changes", "--client-id", client).stdout) == [7]


# --- follow --------------------------------------------------------------------------------------


async def test_follow_gets_every_committed_seq_once_and_never_an_uncommitted_one(
    simulator: SimFactory, engine: AsyncEngine, db_url: URL, tmp_path: Path
) -> None:
    listen = await asyncpg.connect(db.libpq_url(db_url))
    notified: dict[int, float] = {}
    await listen.add_listener(
        "syncsvc_changes", lambda *a: notified.setdefault(int(a[3]), time.monotonic())
    )
    async with simulator(CONFIG) as sim:
        # A long poll: the follower must be woken by the commits' notifications.
        env = _env(db_url, sim, SYNCSVC_FEED_POLL_INTERVAL="600", SYNCSVC_LOG_LEVEL="debug")
        assert _syncsvc(env, "consumers", "add", "mirror").returncode == 0
        err_path = tmp_path / "follow.log"
        with err_path.open("wb") as err:
            follower = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "syncsvc", "changes", "--follow", "--consumer", "mirror",
                env=env, stdout=asyncio.subprocess.PIPE, stderr=err,
            )  # fmt: skip
        arrived: dict[int, float] = {}
        got: list[int] = []

        async def read() -> None:
            assert follower.stdout is not None
            async for line in follower.stdout:
                seq = json.loads(line)["seq"]
                got.append(seq)
                arrived[seq] = time.monotonic()

        reader = asyncio.create_task(read())

        def reads() -> int:
            return err_path.read_text().count('"feed_read"')

        try:
            await _until(lambda: _listening(listen), "the follower to LISTEN")
            for day in range(3):
                sim.set_day(day)
                proc = await asyncio.to_thread(_syncsvc, env, "run")
                assert proc.returncode == 0, proc.stderr
            high = await listen.fetchval("SELECT max(seq) FROM changes")
            await _until(lambda: _ready(got, high), "the follower to catch up")

            # A unit with its change rows inserted (and its NOTIFY queued) but not committed.
            paused, release = asyncio.Event(), asyncio.Event()

            async def checkpoint(step: str) -> None:
                if step == "before_commit":
                    paused.set()
                    await release.wait()

            async def uncommitted_unit() -> int:
                run_id = await create_run(engine)
                records = [
                    from_typed("user", {"eventGUID": "E-NEW", "userRef": f"N{i}"}) for i in range(5)
                ]
                async with UnitWriter(
                    engine, run_id=run_id, resource="user", scope="E-NEW", checkpoint=checkpoint
                ) as unit:
                    await unit.stage_records(records)
                    result = await unit.apply(complete=True)
                assert result.last_seq is not None
                return result.last_seq

            unit = asyncio.create_task(uncommitted_unit())
            await asyncio.wait_for(paused.wait(), 60)
            before = reads()
            await listen.execute("SELECT pg_notify('syncsvc_changes', '0')")  # wake it now
            await _until(lambda: _true(reads() > before), "the follower to read meanwhile")
            assert got == list(range(1, high + 1))  # nothing of the open transaction
            release.set()
            last = await unit
            await _until(lambda: _ready(got, last), "the committed unit to arrive")
        finally:
            follower.send_signal(signal.SIGTERM)
            rc = await asyncio.wait_for(follower.wait(), 60)
            reader.cancel()
            await listen.close()
        assert rc == 0, err_path.read_text()[-2000:]
    assert got == list(range(1, last + 1)), "every committed seq once, in order"
    assert await _fetchval(db_url, "SELECT cursor FROM consumers WHERE name = 'mirror'") == last
    lat = sorted(arrived[s] - t for s, t in notified.items() if s in arrived)
    print(
        f"\nfollow latency, commit notification -> line read, {len(lat)} units: "
        f"p50 {lat[len(lat) // 2] * 1000:.0f} ms, max {lat[-1] * 1000:.0f} ms"
    )


async def _listening(conn: Any) -> bool:
    n = await conn.fetchval(
        "SELECT count(*) FROM pg_stat_activity WHERE query LIKE 'LISTEN %syncsvc_changes%'"
        " AND pid <> pg_backend_pid() AND datname = current_database()"
    )
    return bool(n)


async def _ready(got: list[int], high: int) -> bool:
    return bool(got) and got[-1] >= high


async def _true(value: bool) -> bool:
    return value


async def _until(check: Callable[[], Any], what: str, seconds: float = 120) -> Any:
    deadline = time.monotonic() + seconds
    while True:
        value = await check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


# --- retention -----------------------------------------------------------------------------------


async def test_prune_never_removes_a_row_a_consumer_has_not_acknowledged(db_url: URL) -> None:
    await _seed(db_url, 40)
    conn = await asyncpg.connect(db.libpq_url(db_url))
    try:
        await conn.execute(
            "UPDATE changes SET captured_at = now() - interval '10 days' WHERE seq <= 30"
        )
        await conn.execute("INSERT INTO consumers (name, cursor) VALUES ('slow', 10), ('b', 25)")
        env = _env(db_url)
        dry = _syncsvc(env, "changes", "prune", "--older-than", "5", "--dry-run")
        assert dry.returncode == 0, dry.stderr
        assert "would delete 10 change rows" in dry.stdout
        proc = _syncsvc(env, "changes", "prune", "--older-than", "5")
        assert proc.returncode == 0, proc.stderr
        left = [r[0] for r in await conn.fetch("SELECT seq FROM changes ORDER BY seq")]
        assert left == list(range(11, 41))  # everything above the slowest cursor stays
        assert "slow (cursor 10)" in proc.stderr
        # --force goes past the consumers and names the ones it breaks.
        forced = _syncsvc(env, "changes", "prune", "--older-than", "5", "--force")
        assert forced.returncode == 0, forced.stderr
        left = [r[0] for r in await conn.fetch("SELECT seq FROM changes ORDER BY seq")]
        assert left == list(range(31, 41))  # only rows older than the cutoff went
        assert "consumer slow (cursor 10) missed rows" in forced.stderr
        assert "consumer b (cursor 25) missed rows" in forced.stderr
        # Nothing newer than the cutoff goes, and never the newest row: seq continues from it.
        await conn.execute("UPDATE changes SET captured_at = now() - interval '10 days'")
        await conn.execute("DELETE FROM consumers")
        assert _syncsvc(env, "changes", "prune", "--older-than", "5").returncode == 0
        assert [r[0] for r in await conn.fetch("SELECT seq FROM changes")] == [40]
    finally:
        await conn.close()


# --- the published schemas against real output --------------------------------------------------


async def test_real_output_matches_the_published_json_schemas(
    simulator: SimFactory, engine: AsyncEngine, db_url: URL
) -> None:
    async with simulator(CONFIG) as sim:
        settings = Settings.load({}).replace(
            base_url=sim.base_url, api_token="sim-account-token", rate_limit=200.0
        )
        for day in range(3):
            sim.set_day(day)
            assert (await scheduler.run_once(settings, engine)).status == "succeeded"
    env = _env(db_url)
    plain = [json.loads(line) for line in _syncsvc(env, "changes").stdout.splitlines()]
    debezium = [
        json.loads(line)
        for line in _syncsvc(env, "changes", "--envelope", "debezium").stdout.splitlines()
    ]
    assert {r["op"] for r in plain} == {"insert", "update", "delete", "rekey"}
    for name, records in (
        ("change-record.schema.json", plain),
        ("change-record-debezium.schema.json", debezium),
    ):
        schema = json.loads((DOCS / name).read_text())
        Draft202012Validator.check_schema(schema)
        validator = Draft202012Validator(schema)
        for record in records:
            errors = list(validator.iter_errors(record))
            assert not errors, (name, record, errors[0].message)
    for r in plain:  # the date-times parse as ISO 8601 with an offset (an independent parse)
        assert dt.datetime.fromisoformat(r["captured_at"]).utcoffset() == dt.timedelta(0)
    # Debezium: one object per change, two for a rekey (delete old key, create new), in order.
    expected: list[tuple[int, str]] = []
    for r in plain:
        ops = {"insert": ["c"], "update": ["u"], "delete": ["d"], "rekey": ["d", "c"]}[r["op"]]
        expected += [(r["seq"], o) for o in ops]
    assert [(d["source"]["seq"], d["op"]) for d in debezium] == expected
    rekey = next(r for r in plain if r["op"] == "rekey")
    halves = [d for d in debezium if d["source"]["seq"] == rekey["seq"]]
    assert halves[0]["before"] == rekey["before"]
    assert halves[1]["after"] == rekey["after"]
    assert halves[0]["source"]["record_key"] == rekey["before"]["userRef"]
    assert halves[1]["source"]["record_key"] == rekey["record_key"]
    assert halves[1]["syncsvc"]["changed_fields"] == rekey["changed_fields"]


async def test_prune_runs_beside_an_open_unit_and_seq_continues_without_a_gap(
    engine: AsyncEngine, db_url: URL
) -> None:
    """A unit holding the seq lock with its rows inserted does not block prune, and prune (which
    keeps the newest committed row) never makes the next seqs start over."""
    await _seed(db_url, 20)
    conn = await asyncpg.connect(db.libpq_url(db_url))
    paused, release = asyncio.Event(), asyncio.Event()

    async def checkpoint(step: str) -> None:
        if step == "changes_inserted":
            paused.set()
            await release.wait()

    async def unit() -> tuple[int | None, int | None]:
        run_id = await create_run(engine)
        records = [from_typed("user", {"eventGUID": "E9", "userRef": f"P{i}"}) for i in range(4)]
        async with UnitWriter(
            engine, run_id=run_id, resource="user", scope="E9", checkpoint=checkpoint
        ) as writer:
            await writer.stage_records(records)
            result = await writer.apply(complete=True)
        return result.first_seq, result.last_seq

    try:
        await conn.execute("UPDATE changes SET captured_at = now() - interval '10 days'")
        task = asyncio.create_task(unit())
        await asyncio.wait_for(paused.wait(), 60)
        proc = await asyncio.to_thread(
            _syncsvc, _env(db_url), "changes", "prune", "--older-than", "1"
        )
        assert proc.returncode == 0, proc.stderr
        assert "deleted 19 change rows" in proc.stdout
        assert [r[0] for r in await conn.fetch("SELECT seq FROM changes")] == [20]
        release.set()
        assert await task == (21, 24)
        seqs = [r[0] for r in await conn.fetch("SELECT seq FROM changes ORDER BY seq")]
        assert seqs == [20, 21, 22, 23, 24]
    finally:
        release.set()
        await conn.close()
