"""Run and fetch rows (`runs`, `fetches`), created here so the scheduler and tests share them."""

from __future__ import annotations

import os
import socket
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.ext.asyncio import AsyncEngine

from syncsvc.cvent.catalog import Resource, resolve
from syncsvc.store.schema import fetches, runs


async def create_run(
    engine: AsyncEngine,
    *,
    environment: str = "uat",
    api_host: str | None = None,
    trigger: str = "run",
    options: dict[str, Any] | None = None,
) -> int:
    """Insert a `runs` row (status running) and return its id."""
    async with engine.begin() as conn:
        run_id = await conn.scalar(
            sa.insert(runs)
            .values(
                environment=environment,
                api_host=api_host,
                trigger=trigger,
                options=options or {},
                hostname=socket.gethostname(),
                pid=os.getpid(),
            )
            .returning(runs.c.id)
        )
    assert run_id is not None
    return int(run_id)


async def finish_run(
    engine: AsyncEngine,
    run_id: int,
    *,
    status: str,
    error_code: int | None = None,
    error_message: str | None = None,
) -> None:
    """Close a run: its final status, and its totals summed from its fetches."""
    totals = (
        sa.select(
            sa.func.count().label("units_total"),
            sa.func.count().filter(fetches.c.status == "failed").label("units_failed"),
            sa.func.count().filter(fetches.c.status == "held").label("units_held"),
            sa.func.coalesce(sa.func.sum(fetches.c.records), 0).label("records"),
            sa.func.coalesce(sa.func.sum(fetches.c.bytes), 0).label("bytes"),
            sa.func.coalesce(sa.func.sum(fetches.c.inserted), 0).label("inserted"),
            sa.func.coalesce(sa.func.sum(fetches.c.updated), 0).label("updated"),
            sa.func.coalesce(sa.func.sum(fetches.c.deleted), 0).label("deleted"),
            sa.func.coalesce(sa.func.sum(fetches.c.rekeyed), 0).label("rekeyed"),
        )
        .where(fetches.c.run_id == run_id)
        .subquery()
    )
    async with engine.begin() as conn:
        await conn.execute(
            sa.update(runs)
            .where(runs.c.id == run_id)
            .values(
                status=status,
                finished_at=sa.func.now(),
                error_code=error_code,
                error_message=error_message,
                **{c.name: sa.select(c).scalar_subquery() for c in totals.c},
            )
        )


async def create_fetch(
    engine: AsyncEngine,
    *,
    run_id: int,
    resource: Resource | str,
    scope: str,
    status: str = "running",
) -> int:
    """Insert a `fetches` row for one unit (resource, scope) of a run and return its id."""
    res = resolve(resource)
    async with engine.begin() as conn:
        fetch_id = await conn.scalar(
            sa.insert(fetches)
            .values(
                run_id=run_id,
                resource=res.path,
                entity=res.entity,
                scope=scope,
                status=status,
                started_at=sa.func.now(),
            )
            .returning(fetches.c.id)
        )
    assert fetch_id is not None
    return int(fetch_id)


async def finish_fetch(
    engine: AsyncEngine,
    fetch_id: int,
    *,
    status: str,
    attempts: int | None = None,
    http_status: int | None = None,
    bytes_read: int | None = None,
    fetch_seconds: float | None = None,
    error_code: int | None = None,
    error_message: str | None = None,
    details: dict[str, Any] | None = None,
) -> None:
    """Record a fetch's transport figures and final status (apply already wrote its counts)."""
    values: dict[str, Any] = {"status": status, "finished_at": sa.func.now()}
    for name, value in (
        ("attempts", attempts),
        ("http_status", http_status),
        ("bytes", bytes_read),
        ("fetch_seconds", fetch_seconds),
        ("error_code", error_code),
        ("error_message", error_message),
    ):
        if value is not None:
            values[name] = value
    if details:
        values["details"] = fetches.c.details.op("||")(
            sa.bindparam("extra_details", details, type_=JSONB)
        )
    async with engine.begin() as conn:
        await conn.execute(sa.update(fetches).where(fetches.c.id == fetch_id).values(**values))
