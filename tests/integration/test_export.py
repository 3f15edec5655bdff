"""Parquet exports of a multi-day simulated account (simulator over loopback, real runs, the
real CLI), read back by DuckDB: the change files replay to the tables and to the simulator's
ground truth, the snapshot equals the tables, the history views equal the truth of every day."""

from __future__ import annotations

import datetime as dt
import itertools
import json
import os
import signal
import stat
import subprocess
import sys
import threading
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from typing import Any

import asyncpg
import duckdb
import pytest
from sqlalchemy.engine import URL
from sqlalchemy.ext.asyncio import AsyncEngine

from syncsvc import scheduler
from syncsvc.catalog import BY_ENTITY, RESOURCES
from syncsvc.export.history import as_of_query
from syncsvc.feed.consumers import CONSUMER_LOCK_CLASS
from syncsvc.settings import Settings
from syncsvc.simulator import SimConfig
from syncsvc.store import db
from tests.integration.export_helpers import (
    add_consumer,
    cli_env,
    consumer_cursor,
    db_state,
    duck_changes,
    manifests,
    replay,
    syncsvc,
    truth,
    typed_columns,
)

pytestmark = pytest.mark.db

SimFactory = Callable[..., AbstractAsyncContextManager[Any]]

CONFIG = SimConfig(
    seed=21,
    events=5,
    users_per_event=60,
    sessions_per_event=8,
    exhibitors_per_event=4,
    update_rate=0.1,
    delete_rate=0.04,
    insert_rate=0.05,
    recreate_rate=0.03,
    big_event_every=3,
    new_event_every=2,
)
DAYS = 4


def _settings(sim: Any) -> Settings:
    base = Settings.load({})
    return base.replace(
        base_url=sim.base_url,
        api_token="sim-account-token",
        retry_base_delay=0.01,
        retry_max_delay=0.05,
        retry_attempts=3,
        rate_limit=200.0,
        max_concurrency=4,
    )


async def _sync(sim: Any, engine: AsyncEngine, day: int) -> None:
    sim.set_day(day)
    result = await scheduler.run_once(_settings(sim), engine)
    assert result.status == "succeeded", result.error


async def test_nightly_exports_replay_to_the_tables_and_the_ground_truth(
    simulator: SimFactory, engine: AsyncEngine, db_url: URL, tmp_path: Path
) -> None:
    out = tmp_path / "changes"
    await add_consumer(db_url, "warehouse")
    async with simulator(CONFIG) as sim:
        for day in range(DAYS):
            await _sync(sim, engine, day)
            proc = syncsvc(
                db_url, "export", "changes", "--consumer", "warehouse", "--to", str(out),
                "--max-file-rows", "50", "--batch-mb", "0.1",
            )  # fmt: skip
            assert proc.returncode == 0, proc.stderr
            assert json.loads(proc.stdout)["rows"] > 0

            done = manifests(out)
            assert len(done) == day + 1
            # consecutive ranges, from 0 to the consumer's cursor: nothing missed or repeated
            ranges = [(m["after_seq"], m["through_seq"]) for _, m in done]
            assert all(a == b for (_, a), (b, _) in itertools.pairwise(ranges))
            assert ranges[0][0] == 0
            assert done[-1][1]["through_seq"] == await consumer_cursor(db_url, "warehouse")
            files = [d / f["path"] for d, m in done for f in m["files"]]
            rows = duck_changes(files)
            assert [r["seq"] for r in rows] == list(range(1, len(rows) + 1))
            assert len(rows) == done[-1][1]["through_seq"]

            replayed = replay(rows)
            assert replayed == truth(sim.universe, day)
            assert replayed == await db_state(db_url)
        # the row bound splits every night's export into parts of at most 50 rows
        assert all(len(m["files"]) > 1 for _, m in done)
        assert all(f["rows"] <= 50 for _, m in done for f in m["files"])
        assert {r["op"] for r in rows} == {"insert", "update", "delete", "rekey"}
        assert {r["environment"] for r in rows} == {"uat"}
        # typed columns, as an independent reader sees them
        kinds = {r[0]: r[1] for r in duckdb.sql(f"DESCRIBE SELECT * FROM '{files[0]}'").fetchall()}
        assert kinds["seq"] == "BIGINT"
        assert kinds["after"] == "JSON"
        assert kinds["captured_at"] == "TIMESTAMP WITH TIME ZONE"
        assert kinds["changed_fields"] == "VARCHAR[]"

        # Nothing new: an export of an empty range writes nothing and keeps the cursor.
        before = await consumer_cursor(db_url, "warehouse")
        proc = syncsvc(db_url, "export", "changes", "--consumer", "warehouse", "--to", str(out))
        assert proc.returncode == 0, proc.stderr
        assert json.loads(proc.stdout)["rows"] == 0
        assert len(manifests(out)) == DAYS
        assert await consumer_cursor(db_url, "warehouse") == before

        # The snapshot export equals the tables, and names the seq it is consistent with.
        snap = tmp_path / "snapshot"
        proc = syncsvc(db_url, "export", "snapshot", "--to", str(snap), "--max-file-rows", "200")
        assert proc.returncode == 0, proc.stderr
        state = await db_state(db_url)
        for d, m in manifests(snap):
            resource = BY_ENTITY[m["entity"]]
            assert m["consistent_with_seq"] == before
            rel = duckdb.sql(
                "SELECT * FROM read_parquet(["
                + ", ".join(f"'{d / f['path']}'" for f in m["files"])
                + "])"
            )
            got = {}
            for row in rel.fetchall():
                rec = dict(zip(rel.columns, row, strict=True))
                got[(rec["event_guid"], rec[resource.key_field.column])] = typed_columns(
                    resource, rec
                )
            assert got == state[m["entity"]], m["entity"]
        assert {m["entity"] for _, m in manifests(snap)} == set(BY_ENTITY)


async def test_history_as_of_the_end_of_each_day_equals_that_days_ground_truth(
    simulator: SimFactory, engine: AsyncEngine, db_url: URL
) -> None:
    ends: list[dt.datetime] = []
    async with simulator(CONFIG) as sim:
        for day in range(DAYS):
            await _sync(sim, engine, day)
            async with engine.connect() as conn:
                raw = await db.raw_connection(conn)
                ends.append(await raw.fetchval("SELECT clock_timestamp()"))
        conn = await asyncpg.connect(db.libpq_url(db_url))
        try:
            rekeys = await conn.fetchval("SELECT count(*) FROM changes WHERE op = 'rekey'")
            assert rekeys > 0
            for day, end in enumerate(ends):
                expected = truth(sim.universe, day)
                for r in RESOURCES:
                    rows = await conn.fetch(as_of_query(r), end)
                    got = {
                        (row["event_guid"], row[r.key_field.column]): typed_columns(r, dict(row))
                        for row in rows
                    }
                    assert len(got) == len(rows)  # one version per record at any instant
                    assert got == expected[r.entity], (day, r.entity)
            # A rekey continues the clientID's history: the old key's version ends exactly when
            # the new key's begins, and the new one names the key it replaced.
            rows = await conn.fetch(
                "SELECT n.user_ref, n.client_id, n.valid_from, o.valid_to, o.client_id AS old_cid"
                " FROM users_history n JOIN users_history o ON o.event_guid = n.event_guid"
                " AND o.user_ref = n.previous_user_ref AND o.ended_by_seq = n.started_by_seq"
                " WHERE n.started_by_op = 'rekey'"
            )
            n_user_rekeys = await conn.fetchval(
                "SELECT count(*) FROM changes WHERE op = 'rekey' AND entity = 'user'"
            )
            assert len(rows) == n_user_rekeys > 0
            assert all(r["valid_from"] == r["valid_to"] for r in rows)
            assert all(r["client_id"] == r["old_cid"] is not None for r in rows)
            current = await conn.fetchval("SELECT count(*) FROM users_history WHERE is_current")
            assert current == len(truth(sim.universe, DAYS - 1)["user"])
        finally:
            await conn.close()


def _start_export(url: URL, out: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "syncsvc", "export", "changes", "--consumer", "nightly",
         "--to", str(out), "--max-file-rows", "20"],
        env=cli_env(url),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )  # fmt: skip


def _open_fifo_reader(path: Path, got: list[bytes]) -> threading.Thread:
    """Read the first bytes written into a FIFO (blocks until a writer opens it)."""

    def read() -> None:
        with open(path, "rb") as f:
            got.append(f.read(4))

    t = threading.Thread(target=read, daemon=True)
    t.start()
    return t


async def test_an_export_killed_half_way_leaves_no_manifest_and_the_next_gives_the_rest(
    simulator: SimFactory, engine: AsyncEngine, db_url: URL, tmp_path: Path
) -> None:
    out = tmp_path / "changes"
    await add_consumer(db_url, "nightly")
    async with simulator(CONFIG) as sim:
        await _sync(sim, engine, 0)
        proc = syncsvc(db_url, "export", "changes", "--consumer", "nightly", "--to", str(out))
        assert proc.returncode == 0, proc.stderr
        first = await consumer_cursor(db_url, "nightly")
        await _sync(sim, engine, 1)
    async with engine.connect() as conn:
        raw = await db.raw_connection(conn)
        last = int(await raw.fetchval("SELECT max(seq) FROM changes"))
    assert last - first > 60

    # The second part of the next export is a FIFO: the export writes part 0 whole, then
    # blocks inside part 1 until we read from it; reading its first bytes proves it is there.
    directory = out / f"changes_{first:020d}_{last:020d}"
    directory.mkdir(parents=True)
    fifo = directory / "part-00001.parquet"
    os.mkfifo(fifo)
    child = _start_export(db_url, out)
    try:
        got: list[bytes] = []
        reader = _open_fifo_reader(fifo, got)
        reader.join(timeout=120)
        assert got == [b"PAR1"], "the export never reached its second part"
        assert (directory / "part-00000.parquet").stat().st_size > 0
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=30)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    assert child.returncode == -signal.SIGKILL
    assert not (directory / "manifest.json").exists()
    assert await consumer_cursor(db_url, "nightly") == first  # nothing acknowledged

    # The loader's view: only directories with a manifest count. Remove the FIFO left behind
    # (a loader never opens unlisted files; the test's reader is done with it).
    assert stat.S_ISFIFO(fifo.stat().st_mode)
    fifo.unlink()
    proc = syncsvc(
        db_url, "export", "changes", "--consumer", "nightly", "--to", str(out),
        "--max-file-rows", "20",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    done = manifests(out)
    assert [(m["after_seq"], m["through_seq"]) for _, m in done] == [(0, first), (first, last)]
    rows = duck_changes([d / f["path"] for d, m in done for f in m["files"]])
    assert [r["seq"] for r in rows] == list(range(1, last + 1))  # each once, none missing
    assert replay(rows) == await db_state(db_url)
    assert await consumer_cursor(db_url, "nightly") == last


async def test_export_filters_from_the_consumer_and_a_fixed_range(
    simulator: SimFactory, engine: AsyncEngine, db_url: URL, tmp_path: Path
) -> None:
    await add_consumer(db_url, "crm", filters='{"entity": ["user"], "op": ["rekey", "update"]}')
    async with simulator(CONFIG) as sim:
        await _sync(sim, engine, 0)
        await _sync(sim, engine, 1)
    proc = syncsvc(db_url, "export", "changes", "--consumer", "crm", "--to", str(tmp_path / "c"))
    assert proc.returncode == 0, proc.stderr
    ((d, m),) = manifests(tmp_path / "c")
    rows = duck_changes([d / f["path"] for f in m["files"]])
    conn = await asyncpg.connect(db.libpq_url(db_url))
    try:
        want = await conn.fetch(
            "SELECT seq FROM changes WHERE entity = 'user' AND op IN ('rekey', 'update') "
            "ORDER BY seq"
        )
        last = await conn.fetchval("SELECT max(seq) FROM changes")
    finally:
        await conn.close()
    assert [r["seq"] for r in rows] == [w["seq"] for w in want]
    assert want
    assert m["filters"] == {"entity": ["user"], "op": ["rekey", "update"]}
    assert m["through_seq"] == last

    proc = syncsvc(
        db_url, "export", "changes", "--since", "10", "--until", "25", "--to", str(tmp_path / "r")
    )
    assert proc.returncode == 0, proc.stderr
    ((d, m),) = manifests(tmp_path / "r")
    assert [r["seq"] for r in duck_changes([d / f["path"] for f in m["files"]])] == list(
        range(11, 26)
    )
    assert (m["after_seq"], m["through_seq"], m["consumer"]) == (10, 25, None)

    # A filter value is data, never SQL: it matches no event, and the export is empty.
    await add_consumer(db_url, "odd", filters=json.dumps({"event": ["x' OR 'a' = 'a"]}))
    proc = syncsvc(db_url, "export", "changes", "--consumer", "odd", "--to", str(tmp_path / "o"))
    assert proc.returncode == 0, proc.stderr
    ((_, m),) = manifests(tmp_path / "o")
    assert (m["rows"], m["files"], m["through_seq"]) == (0, [], last)


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["--since", "0", "--consumer", "x"], "exactly one of --consumer"),
        (["--consumer", "nobody"], "no consumer named 'nobody'"),
        (["--since", "0", "--to", "ftp://host/x"], "ftp://host/x"),
        (["--since", "0", "--max-file-rows", "0"], "must be positive"),
    ],
)
async def test_export_refuses_bad_input_with_one_line_and_exit_2(
    db_url: URL, tmp_path: Path, args: list[str], words: str
) -> None:
    to = [] if "--to" in args else ["--to", str(tmp_path / "x")]
    proc = syncsvc(db_url, "export", "changes", *args, *to)
    assert proc.returncode == 2, proc.stderr
    assert words in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
    assert "Traceback" not in proc.stderr


_PEAK_RSS = (
    "import resource, sys\n"
    "from syncsvc.cli import main\n"
    "try:\n    main(sys.argv[1:])\nexcept SystemExit:\n    pass\n"
    "sys.stderr.write(str(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss))\n"
)


def _export_peak_kb(url: URL, until: int, out: Path) -> int:
    proc = subprocess.run(
        [sys.executable, "-c", _PEAK_RSS, "export", "changes", "--since", "0",
         "--until", str(until), "--to", str(out)],
        env=cli_env(url),
        capture_output=True,
        text=True,
        timeout=280,
    )  # fmt: skip
    assert json.loads(proc.stdout)["rows"] == until, proc.stderr
    return int(proc.stderr.strip().splitlines()[-1])


async def test_export_memory_stays_flat_for_a_large_log(db_url: URL, tmp_path: Path) -> None:
    """Exporting 60,000 changes of ~2 KB images each (130 MB of JSON) peaks within a few
    batches of exporting 600: nothing is held beyond the batch being written."""
    image = (
        "jsonb_build_object('userRef', 'U' || g, 'bio', repeat(md5(g::text), 30), "
        "'customFields', jsonb_build_object('note', repeat(md5((g + 1)::text), 2)))"
    )
    conn = await asyncpg.connect(db.libpq_url(db_url))
    try:
        run = await conn.fetchval("INSERT INTO runs (environment) VALUES ('uat') RETURNING id")
        await conn.execute(
            "INSERT INTO changes (seq, run_id, entity, event_guid, record_key, op, before, after) "
            f"SELECT g, $1, 'user', 'E1', 'U' || g, 'update', {image}, {image} "
            "FROM generate_series(1, 60000) AS g",
            run,
        )
    finally:
        await conn.close()
    small = _export_peak_kb(db_url, 600, tmp_path / "small")
    large = _export_peak_kb(db_url, 60_000, tmp_path / "large")
    assert large - small < 48 * 1024, (small, large)


async def test_a_webhook_consumer_is_not_exported(db_url: URL, tmp_path: Path) -> None:
    await add_consumer(db_url, "hook")
    conn = await asyncpg.connect(db.libpq_url(db_url))
    try:
        await conn.execute(
            "UPDATE consumers SET webhook_url = 'http://127.0.0.1:9/hook' WHERE name = 'hook'"
        )
    finally:
        await conn.close()
    proc = syncsvc(db_url, "export", "changes", "--consumer", "hook", "--to", str(tmp_path))
    assert proc.returncode == 2, proc.stderr
    assert "delivered by webhook" in proc.stderr
    assert await consumer_cursor(db_url, "hook") == 0


async def test_a_second_reader_of_one_consumer_refuses_while_the_first_runs(
    db_url: URL, tmp_path: Path
) -> None:
    await add_consumer(db_url, "busy")
    holder = await asyncpg.connect(db.libpq_url(db_url))
    try:
        # What any reader of the consumer holds (an export, `changes --consumer`, a delivery).
        await holder.execute(
            "SELECT pg_advisory_lock($1, hashtext($2))", CONSUMER_LOCK_CLASS, "busy"
        )
        proc = syncsvc(db_url, "export", "changes", "--consumer", "busy", "--to", str(tmp_path))
        assert proc.returncode == 2, proc.stderr
        assert "consumer 'busy' is being read by another process" in proc.stderr
    finally:
        await holder.close()
    proc = syncsvc(db_url, "export", "changes", "--consumer", "busy", "--to", str(tmp_path))
    assert proc.returncode == 0, proc.stderr
