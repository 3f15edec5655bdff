"""Many accounts in one deployment: `[[account]]` tables, one `syncsvc run` (a CLI process) over
simulators on loopback, a real PostgreSQL, read back with plain SQL filtered by account.

The simulators of two accounts are built from one seed, so their event GUIDs (and every record
key) collide: each account's state and change log must still equal its own simulator's ground
truth, and nothing one account does (a refused token, a dead server, a held mass delete) may
touch another's rows.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import json
import socket
import subprocess
from collections import Counter
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import pyarrow.parquet as pq
import pytest
from sqlalchemy.engine import URL

from syncsvc.catalog import BY_ENTITY, RESOURCES, FieldKind
from syncsvc.simulator import SimConfig
from syncsvc.store import db
from syncsvc.vocab import ExitCode
from tests.processes import SIM_TOKEN, cli_env, run_cli, serve, serve_port, started

pytestmark = pytest.mark.db

SimFactory = Callable[..., AbstractAsyncContextManager[Any]]

CONFIG = SimConfig(
    seed=11,
    events=5,
    users_per_event=40,
    sessions_per_event=6,
    exhibitors_per_event=4,
    update_rate=0.1,
    delete_rate=0.05,
    insert_rate=0.05,
    recreate_rate=0.04,
    big_event_every=3,
    new_event_every=2,
)

# Fast retries: a dead server fails its account in well under a second.
TOP = """
log_format = "json"
rate_limit = 200.0
max_concurrency = 4
retry_attempts = 2
retry_base_delay = 0.01
retry_max_delay = 0.05
"""


def _config(tmp_path: Path, accounts: list[dict[str, Any]]) -> Path:
    """A TOML file with one [[account]] table per entry (its token written to a file)."""
    lines = [TOP]
    for a in accounts:
        token = tmp_path / f"{a['name']}.token"
        token.write_text(a.get("token", SIM_TOKEN) + "\n")
        lines += [
            "[[account]]",
            f'name = "{a["name"]}"',
            f'base_url = "{a["base_url"]}"',
            f'api_token_file = "{token}"',
        ]
        lines += [
            f"{k} = {json.dumps(v)}" for k, v in a.items() if k not in ("name", "base_url", "token")
        ]
        lines.append("")
    path = tmp_path / "accounts.toml"
    path.write_text("\n".join(lines))
    return path


async def _run(url: URL, config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    # In a thread: the simulators serve from this test's event loop.
    return await asyncio.to_thread(run_cli, cli_env(url), "--config", str(config), "run", *args)


def _typed(kind: FieldKind, value: Any) -> Any:
    if value is None:
        return None
    if kind is FieldKind.CUSTOM:
        return json.loads(value) if isinstance(value, str) else value
    if kind is FieldKind.REFS:
        return list(value)
    if kind is FieldKind.DATETIME:
        return value.astimezone(dt.UTC)
    return value


def _present(record: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in record.items() if v is not None}


async def _state(url: URL, account: str) -> dict[str, dict[tuple[str, str], dict[str, Any]]]:
    """entity -> {(event_guid, key): record} of one account's live rows, by plain SQL."""
    conn = await asyncpg.connect(db.libpq_url(url))
    try:
        out: dict[str, dict[tuple[str, str], dict[str, Any]]] = {}
        for r in RESOURCES:
            cols = ", ".join(f.column for f in r.fields)
            rows = await conn.fetch(
                f"SELECT {cols} FROM {r.table} WHERE deleted_at IS NULL AND account = $1", account
            )
            out[r.entity] = {
                (row["event_guid"], row[r.key_field.column]): _present(
                    {f.api: _typed(f.kind, row[f.column]) for f in r.fields}
                )
                for row in rows
            }
        return out
    finally:
        await conn.close()


def _truth(sim: Any, day: int) -> dict[str, Any]:
    return {
        entity: {key: _present(rec) for key, rec in recs.items()}
        for entity, recs in sim.universe.snapshot(day).items()
    }


async def _changes(url: URL, account: str, run_id: int) -> Counter[tuple[Any, ...]]:
    """One account's change rows of one run, as (entity, event, key, op, fields, clientID,
    old key), by plain SQL."""
    conn = await asyncpg.connect(db.libpq_url(url))
    try:
        rows = await conn.fetch(
            "SELECT entity, event_guid, record_key, op, changed_fields, client_id, before::text"
            " FROM changes WHERE account = $1 AND run_id = $2",
            account,
            run_id,
        )
    finally:
        await conn.close()
    out: Counter[tuple[Any, ...]] = Counter()
    for r in rows:
        old = None
        if r["op"] == "rekey":
            old = json.loads(r["before"])[BY_ENTITY[r["entity"]].key]
        out[
            (
                r["entity"],
                r["event_guid"],
                r["record_key"],
                r["op"],
                frozenset(r["changed_fields"]),
                r["client_id"],
                old,
            )
        ] += 1
    return out


def _expected(sim: Any, day_a: int, day_b: int) -> Counter[tuple[Any, ...]]:
    return Counter(
        (e.entity, e.event_guid, e.key, e.op, e.changed_fields, e.client_id, e.old_key)
        for e in sim.universe.expected_changes(day_a, day_b)
    )


async def _runs(url: URL) -> list[tuple[int, str, str]]:
    """(id, account, status) of every run, in order."""
    conn = await asyncpg.connect(db.libpq_url(url))
    try:
        rows = await conn.fetch("SELECT id, account, status FROM runs ORDER BY id")
    finally:
        await conn.close()
    return [(r["id"], r["account"], r["status"]) for r in rows]


def _last_run(runs: list[tuple[int, str, str]], account: str) -> tuple[int, str]:
    run_id, _, status = [r for r in runs if r[1] == account][-1]
    return run_id, status


async def test_two_accounts_with_colliding_guids_each_equal_their_own_ground_truth(
    simulator: SimFactory, db_url: URL, tmp_path: Path
) -> None:
    async with simulator(CONFIG) as sim_a, simulator(CONFIG) as sim_b:
        config = _config(
            tmp_path,
            [{"name": "a", "base_url": sim_a.base_url}, {"name": "b", "base_url": sim_b.base_url}],
        )
        sims = {"a": sim_a, "b": sim_b}
        days = {"a": (0, 1), "b": (0, 2)}  # one seed, two different days: two truths
        for step in (0, 1):
            for name, sim in sims.items():
                sim.set_day(days[name][step])
            proc = await _run(db_url, config)
            assert proc.returncode == 0, proc.stderr
            runs = await _runs(db_url)
            for name, sim in sims.items():
                day = days[name][step]
                run_id, status = _last_run(runs, name)
                assert status == "succeeded"
                assert await _state(db_url, name) == _truth(sim, day), name
                before = days[name][step - 1] if step else -1
                assert await _changes(db_url, name, run_id) == _expected(sim, before, day), name
            if step == 0:
                # The same GUIDs and keys in both accounts, each stored once per account.
                a, b = await _state(db_url, "a"), await _state(db_url, "b")
                assert a == b
                assert set(a["user"]) == set(b["user"])
                assert len(a["user"]) > 100
        assert [r[1] for r in await _runs(db_url)] == ["a", "b", "a", "b"]

        # A consumer filtered on one account sees exactly that account's changes.
        env = cli_env(db_url)
        add = await asyncio.to_thread(run_cli, env, "consumers", "add", "only-b", "--account", "b")
        assert add.returncode == 0, add.stderr
        read = await asyncio.to_thread(run_cli, env, "changes", "--consumer", "only-b")
        assert read.returncode == 0, read.stderr
        emitted = [json.loads(line) for line in read.stdout.splitlines()]
        conn = await asyncpg.connect(db.libpq_url(db_url))
        try:
            b_seqs = [r[0] for r in await conn.fetch(
                "SELECT seq FROM changes WHERE account = 'b' ORDER BY seq"
            )]  # fmt: skip
        finally:
            await conn.close()
        assert [c["seq"] for c in emitted] == b_seqs
        assert {c["account"] for c in emitted} == {"b"}
        debezium = await asyncio.to_thread(
            run_cli, env, "changes", "--account", "a", "--envelope", "debezium", "--limit", "5"
        )
        assert debezium.returncode == 0, debezium.stderr
        sources = [json.loads(line)["source"] for line in debezium.stdout.splitlines()]
        assert sources
        assert {s["account"] for s in sources} == {"a"}

        # The exports: an account column, and --account picks one.
        out = tmp_path / "exports"
        snap = await asyncio.to_thread(
            run_cli,
            env,
            "export",
            "snapshot",
            "--to",
            str(out),
            "--entity",
            "user",
            "--account",
            "a",
        )
        assert snap.returncode == 0, snap.stderr
        (snapshot,) = [json.loads(line) for line in snap.stdout.splitlines()]
        users = _parquet_rows(out / snapshot["directory"])
        assert {u["account"] for u in users} == {"a"}
        assert {(u["event_guid"], u["user_ref"]) for u in users} == set(_truth(sim_a, 1)["user"])
        log = await asyncio.to_thread(
            run_cli, env, "export", "changes", "--to", str(out), "--since", "0", "--account", "b"
        )
        assert log.returncode == 0, log.stderr
        exported = _parquet_rows(out / json.loads(log.stdout)["directory"])
        assert [c["seq"] for c in exported] == b_seqs
        assert {c["account"] for c in exported} == {"b"}


def _parquet_rows(directory: Path) -> list[dict[str, Any]]:
    """Every row of an export directory's Parquet parts, in part order."""
    manifest = json.loads((directory / "manifest.json").read_text())
    rows: list[dict[str, Any]] = []
    for part in manifest["files"]:
        rows += pq.read_table(directory / part["path"]).to_pylist()
    return rows


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.parametrize("trouble", ["token", "down", "held"])
async def test_one_accounts_trouble_leaves_the_others_applied_and_its_own_state_intact(
    simulator: SimFactory, db_url: URL, tmp_path: Path, trouble: str
) -> None:
    other_seed = dataclasses.replace(CONFIG, seed=12) if trouble == "held" else CONFIG
    async with (
        simulator(CONFIG) as sim_a,
        simulator(CONFIG) as sim_b,
        simulator(other_seed) as elsewhere,
    ):
        b: dict[str, Any] = {"name": "b", "base_url": sim_b.base_url}
        # b first: its trouble comes before a's run, which must still happen.
        first = _config(tmp_path, [b, {"name": "a", "base_url": sim_a.base_url}])
        proc = await _run(db_url, first)
        assert proc.returncode == 0, proc.stderr

        sim_a.set_day(1)
        sim_b.set_day(1)
        if trouble == "token":
            b["token"] = "a-refused-token"
        elif trouble == "down":
            b["base_url"] = f"http://127.0.0.1:{_closed_port()}/api/"
        else:
            # Pointed at another account by mistake: every event it knew vanishes at once.
            b |= {"base_url": elsewhere.base_url, "delete_hold_min_rows": 1}
        second = _config(tmp_path, [b, {"name": "a", "base_url": sim_a.base_url}])
        proc = await _run(db_url, second)
        expected = ExitCode.HELD if trouble == "held" else ExitCode.FAILED
        assert proc.returncode == expected, (proc.stdout, proc.stderr)
        # A failure's reason on stderr; a held run's on stdout, with the summary.
        said = proc.stdout if trouble == "held" else proc.stderr
        assert "account b: " + ("event.do held" if trouble == "held" else "") in said
        assert "a-refused-token" not in proc.stdout + proc.stderr

        runs = await _runs(db_url)
        a_run, a_status = _last_run(runs, "a")
        b_run, b_status = _last_run(runs, "b")
        assert b_run < a_run  # b ran (and failed) first
        assert (a_status, b_status) == ("succeeded", "held" if trouble == "held" else "failed")
        assert await _state(db_url, "a") == _truth(sim_a, 1)
        assert await _changes(db_url, "a", a_run) == _expected(sim_a, 0, 1)
        assert await _state(db_url, "b") == _truth(sim_b, 0)  # its previous state, whole
        assert await _changes(db_url, "b", b_run) == Counter()
        if trouble == "held":
            conn = await asyncpg.connect(db.libpq_url(db_url))
            try:
                held = await conn.fetchval(
                    "SELECT count(*) FROM fetches WHERE run_id = $1 AND status = 'held'", b_run
                )
            finally:
                await conn.close()
            assert held == 1


async def test_an_unknown_account_name_is_a_config_error(db_url: URL, tmp_path: Path) -> None:
    config = _config(tmp_path, [{"name": "a", "base_url": "http://127.0.0.1:9/api/"}])
    proc = await _run(db_url, config, "--account", "zz")
    assert proc.returncode == ExitCode.CONFIG
    assert proc.stderr.strip() == "syncsvc: no account named 'zz' (configured: a)"


async def _until(probe: Callable[[], Any]) -> None:
    """Poll a state probe (a plain or async callable) until it is true."""
    while True:
        found = probe()
        if asyncio.iscoroutine(found):
            found = await found
        if found:
            return
        await asyncio.sleep(0.02)


async def test_two_accounts_run_at_once_while_one_account_never_runs_twice(
    simulator: SimFactory, db_url: URL, tmp_path: Path
) -> None:
    async with simulator(CONFIG) as sim_a, simulator(CONFIG) as sim_b:
        config = _config(
            tmp_path,
            [{"name": "a", "base_url": sim_a.base_url}, {"name": "b", "base_url": sim_b.base_url}],
        )
        # a's run parks in its users fetch, holding a's run lock, until released.
        hold = {"resource": "userData.do", "event": "*", "kind": "hold", "times": 1}
        await sim_a.control({"faults": [hold]})
        args = ("--config", str(config), "run", "--account", "a")
        with started(cli_env(db_url), *args) as first:
            await _until(lambda: not any(f.kind == "hold" for f in sim_a.simulator.faults))
            other = await _run(db_url, config, "--account", "b")
            assert other.returncode == 0, other.stderr
            twice = await _run(db_url, config, "--account", "a")
            assert twice.returncode == ExitCode.LOCKED, twice.stderr
            assert "account a: " in twice.stderr
            await sim_a.control({"release": True})
            _out, err = await asyncio.to_thread(first.communicate, timeout=300)
            assert first.returncode == 0, err
        for name, sim in (("a", sim_a), ("b", sim_b)):
            assert await _state(db_url, name) == _truth(sim, 0)
        assert sorted((r[1], r[2]) for r in await _runs(db_url)) == [
            ("a", "succeeded"),
            ("b", "succeeded"),
        ]


async def test_serve_runs_each_account_on_its_schedule_and_judges_health_per_account(
    simulator: SimFactory, db_url: URL, tmp_path: Path
) -> None:
    async with simulator(CONFIG) as sim_a, simulator(CONFIG) as sim_b:
        config = _config(
            tmp_path,
            [
                {"name": "a", "base_url": sim_a.base_url, "schedule": "0 2 * * *"},
                {"name": "b", "base_url": sim_b.base_url, "schedule": "30 4 * * 1"},
            ],
        )
        env = cli_env(db_url, SYNCSVC_SERVE_PORT="0", SYNCSVC_SERVE_HOST="127.0.0.1")
        with serve(env, "--config", str(config), "--run-now") as proc:
            port = await asyncio.to_thread(serve_port, proc)

            async def both_done() -> bool:
                return [r[2] for r in await _runs(db_url)] == ["succeeded", "succeeded"]

            await _until(both_done)
            async with (
                aiohttp.ClientSession() as session,
                session.get(f"http://127.0.0.1:{port}/healthz") as response,
            ):
                body = await response.json()
            assert response.status == 200, body
            assert "account a: run" in body["reason"]
            assert "account b: run" in body["reason"]
        for name, sim in (("a", sim_a), ("b", sim_b)):
            assert await _state(db_url, name) == _truth(sim, 0)
        assert sorted(r[1] for r in await _runs(db_url)) == ["a", "b"]


async def test_check_tests_each_accounts_api_on_its_own_line(
    simulator: SimFactory, db_url: URL, tmp_path: Path
) -> None:
    async with simulator(CONFIG) as sim_a, simulator(CONFIG) as sim_b:
        config = _config(
            tmp_path,
            [
                {"name": "a", "base_url": sim_a.base_url},
                {"name": "b", "base_url": sim_b.base_url, "token": "a-refused-token"},
            ],
        )
        proc = await asyncio.to_thread(run_cli, cli_env(db_url), "--config", str(config), "check")
        assert proc.returncode == ExitCode.FAILED, proc.stderr
        api = [line for line in proc.stdout.splitlines() if " api " in line]
        assert len(api) == 2, proc.stdout
        assert api[0].startswith("PASS")
        assert " api a " in api[0]
        assert api[1].startswith("FAIL")
        assert " api b " in api[1]
        assert "a-refused-token" not in proc.stdout + proc.stderr
