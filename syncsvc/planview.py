"""`syncsvc plan`: the units a run would execute now, from the events the database holds.

Nothing is fetched: the events are those the last run's `event.do` stored (a run lists them
again first, so a new or vanished event changes its plan), and the units follow the same
planner the run uses, then the units that delete a deleted event's records.
"""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from syncsvc import cascade
from syncsvc.catalog import DATA_RESOURCES, EVENT_ALL
from syncsvc.settings import Settings
from syncsvc.status import previous_bytes
from syncsvc.store import read
from syncsvc.store.schema import fetches
from syncsvc.units import plan, select_events


async def describe(settings: Settings, engine: AsyncEngine) -> list[str]:
    """One line per unit of `settings.account`, in run order, and a closing line saying what the
    plan rests on."""
    account = settings.account
    guids, orphaned = await read.plan_inputs(engine, account)
    async with engine.connect() as conn:
        listed = (
            await conn.execute(
                sa.select(fetches.c.run_id, fetches.c.finished_at)
                .where(
                    fetches.c.resource == "event.do",
                    fetches.c.status == "applied",
                    fetches.c.account == account,
                )
                .order_by(fetches.c.id.desc())
                .limit(1)
            )
        ).first()
    sizes = await previous_bytes(engine, account)
    by_table = {r.table: r for r in DATA_RESOURCES}
    resources = [by_table[name] for name in settings.resources]
    filtered = bool(settings.events_include or settings.events_exclude)
    units = plan(
        resources,
        select_events(settings, guids),
        use_event_all=settings.use_event_all and not filtered,
    )
    lines = [f"{'event:account':<48} event.do (lists the events; always first)"]
    for unit in units:
        what = f"{unit.resource.path}"
        if unit.event == EVENT_ALL:
            what += f" event=all, for {len(unit.covered)} events"
        last = sizes.get((unit.resource.path, str(unit.scope)))
        if last:
            what += f" (last time {last / 1e6:.1f} MB)"
        lines.append(f"{unit.name:<48} {what}")
    vanished = cascade.units(orphaned)
    for unit in vanished:
        lines.append(f"{unit.name:<48} delete every live record: {cascade.REASON}")
    if listed is None:
        basis = "no run has listed the events yet: a run plans after its event.do"
    else:
        basis = (
            f"events as listed by run {listed[0]} at {listed[1]:%Y-%m-%d %H:%M:%S}Z; a run "
            "lists them again first, and falls back to per-event units if event=all is refused"
        )
    lines.append(f"{1 + len(units) + len(vanished)} units; {basis}")
    return lines
