"""`syncsvc demo`: the whole product on embedded defaults in under a minute.

Embedded PostgreSQL, an in-process simulator, migrate, sync day 0, advance the simulator a day,
sync again, and show what changed. The demo's data is kept apart from a real run's: with the
embedded server it uses its own data directory (`<data_dir>/demo`), so a later `syncsvc run`
against a real account never sees the simulated events (and never deletes them). With
SYNCSVC_DATABASE_URL it refuses to reset a database that holds runs other than its own.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import sys
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from rich.console import Console
from sqlalchemy.ext.asyncio import AsyncEngine

from syncsvc import console as ui
from syncsvc import scheduler
from syncsvc.errors import StoreError
from syncsvc.settings import Settings
from syncsvc.simulator import SimConfig, run_simulator
from syncsvc.store import db
from syncsvc.store.schema import changes, runs

DEMO_TOKEN = "sim-account-token"  # noqa: S105 (the simulator's built-in demo token)


async def _reset_schema(engine: AsyncEngine) -> None:
    current, _ = await db.current_revision(engine)
    if current is not None:
        async with engine.connect() as conn:
            foreign = await conn.scalar(
                sa.select(sa.func.count()).select_from(runs).where(runs.c.trigger != "demo")
            )
        if foreign:
            raise StoreError(
                "this database holds runs that are not the demo's: point the demo elsewhere "
                "(unset SYNCSVC_DATABASE_URL, or set SYNCSVC_DATA_DIR to a new directory)"
            )
        await db.downgrade(engine, "base")
    await db.upgrade(engine)


async def _samples(engine: AsyncEngine, run_id: int) -> list[dict[str, Any]]:
    """A few change records of the run: a rekey, an update with its fields, a delete, an insert."""
    out = []
    async with engine.connect() as conn:
        for op in ("rekey", "update", "delete", "insert"):
            row = (
                (
                    await conn.execute(
                        sa.select(changes)
                        .where(
                            changes.c.run_id == run_id,
                            changes.c.op == op,
                            changes.c.entity == "user",
                        )
                        .order_by(changes.c.seq)
                        .limit(1)
                    )
                )
                .mappings()
                .first()
            )
            if row is not None:
                out.append(dict(row))
    return out


def _show_change(out: Console, c: dict[str, Any]) -> None:
    before, after = c["before"] or {}, c["after"] or {}
    head = f"seq {c['seq']} {c['op']:7} {c['entity']} {c['event_guid']}/{c['record_key']}"
    if c["client_id"]:
        head += f" clientID={c['client_id']}"
    out.print(f"[bold]{head}[/bold]")
    if c["op"] == "rekey":
        out.print(
            f"    userRef {before.get('userRef')} -> {after.get('userRef')}"
            f" (same clientID: the user was re-created in Cvent)"
        )
    for name in list(c["changed_fields"])[:6]:
        if name == "userRef":
            continue
        if name.startswith("custom."):
            code = name.removeprefix("custom.")
            old = (before.get("customFields") or {}).get(code)
            new = (after.get("customFields") or {}).get(code)
        else:
            old, new = before.get(name), after.get(name)
        out.print(f"    {name}: {json.dumps(old, default=str)} -> {json.dumps(new, default=str)}")
    if c["op"] in ("insert", "delete"):
        image = after or before
        out.print(f"    {image.get('firstName')} {image.get('lastName')} <{image.get('email')}>")


def demo_settings(settings: Settings) -> Settings:
    """The settings the demo runs with: its own embedded data directory unless a database URL
    is given."""
    if settings.database_url:
        return settings
    return settings.replace(data_dir=settings.data_dir / "demo")


def program() -> str:
    """How to call syncsvc again from here: `syncsvc` when the one on PATH is this one, else the
    path that was used (`.venv/bin/syncsvc` after the quick start)."""
    argv0 = Path(sys.argv[0])
    if argv0.name == "syncsvc" and argv0.is_file():
        on_path = shutil.which("syncsvc")
        if on_path and Path(on_path).resolve() == argv0.resolve():
            return "syncsvc"
        rel = os.path.relpath(argv0)
        return rel if not rel.startswith("..") else str(argv0)
    python = os.path.relpath(sys.executable)
    return f"{python if not python.startswith('..') else sys.executable} -m syncsvc"


async def run_demo(settings: Settings, out: Console, config: SimConfig) -> int:
    settings = demo_settings(settings)
    async with run_simulator(config, host="127.0.0.1", port=0) as sim:
        settings = settings.replace(base_url=sim.base_url, api_token=DEMO_TOKEN)
        async with db.connect(settings) as engine:
            out.print("[bold]1.[/bold] migrating the database")
            await _reset_schema(engine)
            results: list[scheduler.RunResult] = []
            for day in (config.day, config.day + 1):
                sim.set_day(day)
                out.print(f"[bold]{len(results) + 2}.[/bold] syncing the simulator's day {day}")
                with ui.RunProgress(out) as progress:
                    result = await scheduler.run_once(
                        settings,
                        engine,
                        trigger="demo",
                        on_unit=progress.unit_done,
                        on_plan=progress.planned,
                        on_fetch=progress.fetch_progress,
                    )
                ui.print_summary(out, result)
                results.append(result)
            out.print(
                "\n[bold]What changed between the two days, a few of the change records:[/bold]"
            )
            for c in await _samples(engine, results[-1].run_id):
                _show_change(out, c)
    cmd = program()
    if settings.database_url:
        head = "Done (SYNCSVC_DATABASE_URL). Next:"
        env: list[str] = []
        done = f"  {cmd} status"
    else:
        # The demo's own data directory: the commands below name it, so they read the demo's
        # database and not the one a real run uses.
        head = (
            f"Done (embedded PostgreSQL in {settings.data_dir / 'pgdata'}). The demo keeps its "
            "own database; to look at it:"
        )
        env = [f"  export SYNCSVC_DATA_DIR={shlex.quote(str(settings.data_dir))}"]
        done = f"  {cmd} db stop; unset SYNCSVC_DATA_DIR"
    width = max(len(cmd) + 32, len(done))
    rows = [
        (f"  {cmd} changes --since 0 | head", "the change log as NDJSON, by cursor"),
        (f"  {cmd} changes --op rekey --format csv", "filter by entity, op, event, run"),
        (f"  {cmd} status", "the runs and their units"),
        (f'  psql "$({cmd} db url)"', "the current-state tables and the log"),
    ]
    if env:
        rows.append((done, "then: stop its server, back to your own data"))
    out.print(
        "\n".join(["", head, *env, *(f"{c:<{width}}  # {why}" for c, why in rows)]),
        markup=False,
        highlight=False,
        soft_wrap=True,
    )
    return max(r.exit_code for r in results)
