"""`syncsvc changes` and `syncsvc status` on a real database, checked against the rows written."""

from __future__ import annotations

import csv
import io
import json
import subprocess
import sys
from typing import Any

import asyncpg
import pytest
from sqlalchemy.engine import URL

from syncsvc.store import db
from tests.processes import cli_env, run_cli

pytestmark = pytest.mark.db


def _env(url: URL) -> dict[str, str]:
    return cli_env(url, SYNCSVC_LOG_LEVEL="warning")


def _syncsvc(url: URL, *args: str) -> subprocess.CompletedProcess[str]:
    return run_cli(_env(url), *args, timeout=120)


async def _seed(url: URL, n: int) -> list[dict[str, Any]]:
    """n change rows over two runs, as a capture would have written them."""
    conn = await asyncpg.connect(db.libpq_url(url))
    try:
        run1 = await conn.fetchval(
            "INSERT INTO runs (environment, status) VALUES ('uat', 'succeeded') RETURNING id"
        )
        run2 = await conn.fetchval(
            "INSERT INTO runs (environment, status, error_message) "
            "VALUES ('uat', 'partial', 'one unit failed') RETURNING id"
        )
        await conn.execute(
            """
            INSERT INTO fetches (run_id, resource, entity, scope, status, error_code, error_message)
            VALUES ($1, 'userData.do', 'user', 'E1', 'applied', NULL, NULL),
                   ($1, 'userData.do', 'user', 'E2', 'failed', 500, 'Internal error')
            """,
            run2,
        )
        ops = ("insert", "update", "delete", "rekey")
        rows = []
        for i in range(1, n + 1):
            rows.append(
                {
                    "seq": i,
                    "run_id": run1 if i <= n // 2 else run2,
                    "entity": "user" if i % 3 else "session",
                    "event_guid": f"E{i % 2}",
                    "record_key": f"U{i}",
                    "client_id": None if i % 5 == 0 else f"C{i}",
                    "op": ops[i % 4],
                    "changed_fields": ["email", "custom.type_business"] if i % 4 == 1 else [],
                    "before": None if i % 4 == 0 else {"userRef": f"U{i}", "email": "a@x"},
                    "after": None if i % 4 == 2 else {"userRef": f"U{i}", "email": "é@x"},
                }
            )
        await conn.copy_records_to_table(
            "changes",
            records=[
                (
                    r["seq"],
                    r["run_id"],
                    r["entity"],
                    r["event_guid"],
                    r["record_key"],
                    r["client_id"],
                    r["op"],
                    r["changed_fields"],
                    None if r["before"] is None else json.dumps(r["before"]),
                    None if r["after"] is None else json.dumps(r["after"]),
                )
                for r in rows
            ],
            columns=[
                "seq",
                "run_id",
                "entity",
                "event_guid",
                "record_key",
                "client_id",
                "op",
                "changed_fields",
                "before",
                "after",
            ],
        )
    finally:
        await conn.close()
    return rows


_COMPARED = (
    "seq",
    "run_id",
    "entity",
    "event_guid",
    "record_key",
    "client_id",
    "op",
    "changed_fields",
    "before",
    "after",
)


async def test_changes_streams_ndjson_from_the_cursor_in_seq_order(db_url: URL) -> None:
    rows = await _seed(db_url, 40)
    proc = _syncsvc(db_url, "changes", "--since", "10")
    assert proc.returncode == 0, proc.stderr
    got = [json.loads(line) for line in proc.stdout.splitlines()]
    assert [{k: g[k] for k in _COMPARED} for g in got] == [
        {k: r[k] for k in _COMPARED} for r in rows if r["seq"] > 10
    ]
    assert all(g["captured_at"] for g in got)


async def test_changes_filters_by_entity_op_event_and_run(db_url: URL) -> None:
    rows = await _seed(db_url, 40)
    run2 = rows[-1]["run_id"]
    proc = _syncsvc(
        db_url,
        "changes",
        "--entity",
        "user",
        "--op",
        "update",
        "--op",
        "rekey",
        "--event",
        "E1",
        "--run",
        str(run2),
    )
    assert proc.returncode == 0, proc.stderr
    got = [json.loads(line)["seq"] for line in proc.stdout.splitlines()]
    expected = [
        r["seq"]
        for r in rows
        if r["entity"] == "user"
        and r["op"] in ("update", "rekey")
        and r["event_guid"] == "E1"
        and r["run_id"] == run2
    ]
    assert expected
    assert got == expected


async def test_changes_as_csv_round_trips_through_a_csv_reader(db_url: URL) -> None:
    rows = await _seed(db_url, 12)
    proc = _syncsvc(db_url, "changes", "--format", "csv", "--limit", "5")
    assert proc.returncode == 0, proc.stderr
    got = list(csv.DictReader(io.StringIO(proc.stdout)))
    assert [int(g["seq"]) for g in got] == [1, 2, 3, 4, 5]
    for g, r in zip(got, rows, strict=False):
        assert json.loads(g["changed_fields"]) == r["changed_fields"]
        assert (json.loads(g["after"]) if g["after"] else None) == r["after"]
        assert (g["client_id"] or None) == r["client_id"]


async def test_changes_rejects_an_unknown_op_with_exit_2(db_url: URL) -> None:
    proc = _syncsvc(db_url, "changes", "--op", "upsert")
    assert proc.returncode == 2
    assert "--op 'upsert'" in proc.stderr


async def test_changes_memory_stays_flat_for_a_large_log(db_url: URL) -> None:
    """Exporting 200,000 rows peaks at about the same RSS as exporting 2,000."""
    await _seed(db_url, 200_000)

    def peak_rss(limit: int) -> int:
        code = (
            "import resource, sys\n"
            "from syncsvc.cli import main\n"
            "try:\n    main(sys.argv[1:])\nexcept SystemExit:\n    pass\n"
            "sys.stderr.write(str(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss))\n"
        )
        proc = subprocess.run(
            [sys.executable, "-c", code, "changes", "--limit", str(limit)],
            env=_env(db_url),
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert proc.stdout.count("\n") == limit
        return int(proc.stderr.strip().splitlines()[-1])

    small, large = peak_rss(2_000), peak_rss(200_000)
    assert large < small * 1.3 + 10_000, (small, large)  # KiB


async def test_status_lists_runs_with_failed_units_first(db_url: URL) -> None:
    await _seed(db_url, 4)
    proc = _syncsvc(db_url, "status")
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert "partial" in out
    assert "succeeded" in out
    assert out.index("partial") < out.index("succeeded")  # newest run first
    assert out.index("failed") < out.index("applied")  # failed unit before the applied one
    assert "Internal error" in out


def _start(url: URL, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "syncsvc", *args],
        env=_env(url),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


async def test_a_connection_lost_mid_read_is_one_line_not_a_traceback(db_url: URL) -> None:
    """The reader's backend is terminated while its cursor is open: `changes` exits 1 with one
    line on stderr. The reader is paused mid-read by its own full stdout pipe (nothing read from
    it until its backend is gone), so the kill lands between two fetches of the cursor."""
    await _seed(db_url, 20_000)  # megabytes of NDJSON: far more than a pipe and a prefetch hold
    proc = _start(db_url, "changes")
    try:
        assert proc.stdout is not None
        first = json.loads(proc.stdout.readline())  # it is reading: its cursor is open
        assert first["seq"] == 1
        conn = await asyncpg.connect(db.libpq_url(db_url))
        try:
            # The reader's session holds the cursor's snapshot open while its output is blocked.
            killed = await conn.fetch(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                " WHERE datname = current_database() AND pid <> pg_backend_pid()"
                " AND backend_type = 'client backend' AND xact_start IS NOT NULL"
            )
        finally:
            await conn.close()
        assert [r[0] for r in killed] == [True]
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 1, err
    assert out.count("\n") < 20_000 - 1  # stopped short of the log's end
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("syncsvc: reading the change log failed: "), err
