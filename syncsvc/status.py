"""`syncsvc status`: the last runs and their units, failures first."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from syncsvc.store.schema import fetches, runs

# Units that need an operator's eye sort first.
_UNIT_ORDER = {"failed": 0, "held": 1, "running": 2, "pending": 3, "superseded": 4}


@dataclass(frozen=True, slots=True)
class UnitStatus:
    fetch_id: int
    resource: str
    scope: str
    status: str
    attempts: int
    records: int
    bytes: int
    inserted: int
    updated: int
    deleted: int
    rekeyed: int
    error_code: int | None
    error_message: str | None


@dataclass(frozen=True, slots=True)
class RunStatus:
    run_id: int
    status: str
    environment: str
    trigger: str
    started_at: datetime
    finished_at: datetime | None
    records: int
    inserted: int
    updated: int
    deleted: int
    rekeyed: int
    error_message: str | None
    units: tuple[UnitStatus, ...]


async def last_runs(engine: AsyncEngine, limit: int = 5) -> list[RunStatus]:
    """The newest `limit` runs, each with its units (failed and held units first)."""
    async with engine.connect() as conn:
        run_rows = (
            (await conn.execute(sa.select(runs).order_by(runs.c.id.desc()).limit(limit)))
            .mappings()
            .all()
        )
        ids = [r["id"] for r in run_rows]
        unit_rows = (
            (
                await conn.execute(
                    sa.select(fetches).where(fetches.c.run_id.in_(ids)).order_by(fetches.c.id)
                )
            )
            .mappings()
            .all()
            if ids
            else []
        )
    by_run: dict[int, list[dict[str, Any]]] = {}
    for u in unit_rows:
        by_run.setdefault(u["run_id"], []).append(dict(u))
    out = []
    for r in run_rows:
        units = sorted(
            by_run.get(r["id"], []), key=lambda u: (_UNIT_ORDER.get(u["status"], 9), u["id"])
        )
        out.append(
            RunStatus(
                run_id=r["id"],
                status=r["status"],
                environment=r["environment"],
                trigger=r["trigger"],
                started_at=r["started_at"],
                finished_at=r["finished_at"],
                records=r["records"],
                inserted=r["inserted"],
                updated=r["updated"],
                deleted=r["deleted"],
                rekeyed=r["rekeyed"],
                error_message=r["error_message"],
                units=tuple(
                    UnitStatus(
                        fetch_id=u["id"],
                        resource=u["resource"],
                        scope=u["scope"],
                        status=u["status"],
                        attempts=u["attempts"],
                        records=u["records"],
                        bytes=u["bytes"],
                        inserted=u["inserted"],
                        updated=u["updated"],
                        deleted=u["deleted"],
                        rekeyed=u["rekeyed"],
                        error_code=u["error_code"],
                        error_message=u["error_message"],
                    )
                    for u in units
                ),
            )
        )
    return out
