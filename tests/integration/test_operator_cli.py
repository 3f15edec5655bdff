"""The CLI's edges (issue 14, items 3, 5, 6, 7 and `check`/`plan`): validated options, one-line
errors, --version/-h/--config anywhere, warnings for misspelt names, `status` saying why, the
live display on a real terminal (a pty). Real subprocesses, the simulator over loopback, a real
PostgreSQL."""

from __future__ import annotations

import asyncio
import collections
import json
import re
import subprocess
import sys
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy.engine import URL

from syncsvc.simulator import SimConfig
from syncsvc.store import db
from tests.processes import cli_env, run_cli

SimFactory = Callable[..., AbstractAsyncContextManager[Any]]
CONFIG = SimConfig(
    seed=5, events=3, users_per_event=30, sessions_per_event=4, exhibitors_per_event=2
)
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]|\x1b\][^\x07]*\x07")


def _one_line(proc: subprocess.CompletedProcess[str]) -> str:
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    return lines[0]


# --- item 6: every numeric option validated, one line, exit 2 ----------------------------------


@pytest.mark.parametrize(
    ("args", "option"),
    [
        (["changes", "--limit", "-1"], "--limit"),
        (["changes", "--limit", "0"], "--limit"),
        (["changes", "--since", "-5"], "--since"),
        (["changes", "--run", "0"], "--run"),
        (["status", "--last", "-1"], "--last"),
        (["status", "--last", "0"], "--last"),
        (["simulate", "--events", "-1"], "--events"),
        (["simulate", "--port", "70000"], "--port"),
        (["simulate", "--delete-rate", "2"], "--delete-rate"),
        (["demo", "--users-per-event", "0"], "--users-per-event"),
    ],
)
def test_a_bad_number_is_one_line_and_exit_2(args: list[str], option: str) -> None:
    proc = run_cli(cli_env(), *args)
    assert proc.returncode == 2
    assert option in _one_line(proc)


# --- item 7: --version, -h, --config anywhere, names that are no setting ------------------------


def test_version_and_short_help() -> None:
    version = run_cli(cli_env(), "--version")
    assert version.returncode == 0
    assert re.fullmatch(r"syncsvc \d+\.\d+\.\d+\S*\n", version.stdout)
    short = run_cli(cli_env(), "status", "-h")
    assert short.returncode == 0
    assert "--last" in short.stdout
    assert "--format" in short.stdout


def test_run_help_shows_wait_as_a_flag_and_wait_takes_no_value() -> None:
    help_text = run_cli(cli_env(), "run", "--help").stdout
    wait = next(line for line in help_text.splitlines() if "--wait" in line)
    assert "<bool>" not in wait
    assert "BOOLEAN" not in wait
    refused = run_cli(cli_env(), "run", "--wait", "true")
    assert refused.returncode == 2
    assert "true" in _one_line(refused)


def test_a_bad_environment_breaks_neither_help_nor_simulate() -> None:
    env = cli_env(SYNCSVC_RATE_LIMIT="fast", SYNCSVC_BASE_URL="not a url")
    for args in (["run", "--help"], ["--help"], ["simulate", "--help"]):
        proc = run_cli(env, *args)
        assert proc.returncode == 0, (args, proc.stderr)
    sim = subprocess.Popen(
        [sys.executable, "-m", "syncsvc", "simulate", "--port", "0"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert sim.stdout is not None
        assert "simulator serving http://" in sim.stdout.readline()
    finally:
        sim.terminate()
        sim.communicate(timeout=30)
    # A command that needs the settings still refuses them, naming the variable.
    proc = run_cli(env, "status")
    assert proc.returncode == 2
    assert "SYNCSVC_" in _one_line(proc)


def test_config_after_the_subcommand_and_errors_name_the_toml_key(tmp_path: Path) -> None:
    cfg = tmp_path / "syncsvc.toml"
    cfg.write_text('rate_limit = "fast"\n')
    for args in (["--config", str(cfg), "status"], ["status", "--config", str(cfg)]):
        proc = run_cli(cli_env(), *args)
        assert proc.returncode == 2
        line = _one_line(proc)
        assert f"rate_limit in {cfg}" in line
        assert "SYNCSVC_RATE_LIMIT" not in line
    cfg.write_text("rate_limt = 5\n")
    line = _one_line(run_cli(cli_env(), "status", f"--config={cfg}"))
    assert "rate_limt" in line
    assert "did you mean rate_limit" in line


@pytest.mark.db
async def test_a_misspelt_variable_is_warned_about_with_the_closest_name(db_url: URL) -> None:
    proc = await asyncio.to_thread(
        run_cli, cli_env(db_url, SYNCSVC_RATE_LIMT="5", SYNCSVC_LOG_FORMAT="json"), "status"
    )
    assert proc.returncode == 0, proc.stderr
    warnings = [json.loads(x) for x in proc.stderr.splitlines() if "setting_ignored" in x]
    assert len(warnings) == 1
    assert "SYNCSVC_RATE_LIMT" in warnings[0]["warning"]
    assert "did you mean SYNCSVC_RATE_LIMIT" in warnings[0]["warning"]


# --- items 8 and 5: vanished events take their records along; status says why -----------------


async def _live(url: URL, table: str, guids: list[str]) -> int:
    import asyncpg

    conn = await asyncpg.connect(db.libpq_url(url))
    try:
        n: int = await conn.fetchval(
            f"SELECT count(*) FROM {table} WHERE deleted_at IS NULL AND event_guid = ANY($1)",
            guids,
        )
        return n
    finally:
        await conn.close()


async def _deletes(url: URL, entity: str, guids: list[str]) -> int:
    import asyncpg

    conn = await asyncpg.connect(db.libpq_url(url))
    try:
        n: int = await conn.fetchval(
            "SELECT count(*) FROM changes WHERE op = 'delete' AND entity = $1"
            " AND event_guid = ANY($2)",
            entity,
            guids,
        )
        return n
    finally:
        await conn.close()


@pytest.mark.db
async def test_a_vanished_events_records_are_deleted_under_the_hold_and_status_says_why(
    simulator: SimFactory, db_url: URL
) -> None:
    other = SimConfig(
        seed=6, events=2, users_per_event=30, sessions_per_event=4, exhibitors_per_event=2
    )
    async with simulator(CONFIG) as first:
        env = cli_env(db_url, first.base_url, SYNCSVC_RETRY_ATTEMPTS="1")
        proc = await asyncio.to_thread(run_cli, env, "run")
        assert proc.returncode == 0, proc.stderr
        day0 = first.universe.snapshot(0)
    gone = sorted(guid for guid, _ in day0["event"])
    # Per entity and event: how many records the vanished account had. A scope of at least
    # delete_hold_min_rows (20) live rows, all to be deleted, is held; a smaller one applies.
    counts = {
        entity: collections.Counter(guid for guid, _ in day0[entity])
        for entity in ("user", "session", "exhibitor")
    }
    held_scopes = {(e, g) for e, c in counts.items() for g, n in c.items() if n >= 20}
    assert any(e == "user" for e, _ in held_scopes)
    async with simulator(other) as second:
        env = cli_env(db_url, second.base_url, SYNCSVC_RETRY_ATTEMPTS="1")
        refused = sorted(guid for guid, _ in second.universe.snapshot(0)["event"])[0]
        await second.control(
            {
                "faults": [
                    {
                        "resource": "exhibitorData.do",
                        "event": refused,
                        "kind": "api_code",
                        "value": 201,
                        "times": None,
                    }
                ]
            }
        )
        held = await asyncio.to_thread(run_cli, env, "run")
        # The other account's events are deleted, and their records with them in the same
        # run, one change record each; the scopes where all of many rows would go are held.
        assert held.returncode == 3, held.stderr  # a failed unit beside held ones: partial
        assert await _live(db_url, "events", gone) == 0
        for entity, table in (
            ("user", "users"),
            ("session", "sessions"),
            ("exhibitor", "exhibitors"),
        ):
            kept = sum(n for g, n in counts[entity].items() if (entity, g) in held_scopes)
            deleted = sum(counts[entity].values()) - kept
            assert await _live(db_url, table, gone) == kept, entity
            assert await _deletes(db_url, entity, gone) == deleted, entity

        text = await asyncio.to_thread(run_cli, env, "status", "--last", "1")
        assert text.returncode == 0, text.stderr
        flat = " ".join(text.stdout.split())
        for _, guid in held_scopes:
            assert f"event {guid}:" in flat
        assert "would be deleted (100% > threshold 50%)" in flat
        assert "201" in flat  # the failed unit's code, with its message
        as_json = json.loads(
            (
                await asyncio.to_thread(run_cli, env, "status", "--last", "1", "--format", "json")
            ).stdout
        )
        units = as_json[0]["units"]
        held_units = [u for u in units if u["status"] == "held"]
        assert {(_entity(u["resource"]), u["scope"]) for u in held_units} == held_scopes
        assert all(
            u["held"][0]["share"] == 1.0 and u["held"][0]["threshold"] == 0.5 for u in held_units
        )
        failed = [u for u in units if u["status"] == "failed"]
        assert [u["error_code"] for u in failed] == [201]

        await second.control({"clear_faults": True})
        overridden = await asyncio.to_thread(run_cli, env, "run", "--override-hold")
        assert overridden.returncode == 0, overridden.stderr
    for entity, table in (("user", "users"), ("session", "sessions"), ("exhibitor", "exhibitors")):
        assert await _live(db_url, table, gone) == 0
        assert await _deletes(db_url, entity, gone) == sum(counts[entity].values())


def _entity(resource: str) -> str:
    return {"userData.do": "user", "sessionData.do": "session", "exhibitorData.do": "exhibitor"}[
        resource
    ]
