"""`syncsvc demo`: the whole product on embedded defaults in under a minute.

Embedded PostgreSQL, an in-process simulator, migrate, sync day 0, advance the simulator a day,
sync again, and show what changed. The demo owns the database it runs in: it refuses to reset
one that holds runs other than its own.
"""

from __future__ import annotations

import json
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


async def run_demo(settings: Settings, out: Console, config: SimConfig) -> int:
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
                    )
                ui.print_summary(out, result)
                results.append(result)
            out.print(
                "\n[bold]What changed between the two days, a few of the change records:[/bold]"
            )
            for c in await _samples(engine, results[-1].run_id):
                _show_change(out, c)
    where = (
        f"embedded PostgreSQL in {settings.data_dir / 'pgdata'}"
        if not settings.database_url
        else "SYNCSVC_DATABASE_URL"
    )
    out.print(
        f"\nDone ({where}). Next:\n"
        "  syncsvc changes --since 0 | head        # the change log as NDJSON, by cursor\n"
        "  syncsvc changes --op rekey --format csv  # filter by entity, op, event, run\n"
        "  syncsvc status                           # the runs and their units\n"
        '  psql "$(syncsvc db url)"                 # the current-state tables and the log'
    )
    return max(r.exit_code for r in results)
