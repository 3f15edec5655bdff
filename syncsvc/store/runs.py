"""Run and fetch rows (`runs`, `fetches`): every write to them but a unit's own, which its
transaction makes (store/unit.py), so the scheduler and tests share them. A database error leaves
each function as a StoreError (store/boundary.py).

Final states stick: a run's status is written only while it is `running` (an `abandoned` run
stays abandoned even when its process lives on and tries to close it), and a unit's only while
it is `pending`/`running` (plus `failed` -> `superseded` for a refused `event=all` unit), so a
late write never turns a committed unit into a failed one or revives a closed one.
"""

from __future__ import annotations

import os
import socket
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from syncsvc.catalog import Resource, resolve
from syncsvc.errors import StoreError
from syncsvc.scope import Scope
from syncsvc.settings import DEFAULT_ACCOUNT
from syncsvc.store.boundary import guarded
from syncsvc.store.schema import fetches, runs

# `error_code` columns are int4. A server can send any number (seen: 99999999999999); one that
# does not fit is stored as NULL and stays readable in `error_message` (SyncError's text names the
# code), so recording a failure never fails on it.
INT4_MAX = 2**31 - 1
OPEN_UNIT = ("pending", "running")


def storable_code(code: int | None) -> int | None:
    """`code` when it fits the int4 `error_code` columns, else None (the message keeps it)."""
    if code is None or not -INT4_MAX - 1 <= code <= INT4_MAX:
        return None
    return code


def _totals(run_id: Any) -> dict[str, Any]:
    """The run's counters as scalar subqueries summed over its units' rows. Only a committed
    unit's transaction writes records and change counts on its row, so these are the sums of
    its committed units."""
    t = (
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
    return {c.name: sa.select(c).scalar_subquery() for c in t.c}


@guarded("could not record the run's start")
async def create_run(
    engine: AsyncEngine,
    *,
    account: str = DEFAULT_ACCOUNT,
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
                account=account,
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


@guarded("could not record the run's end")
async def finish_run(
    engine: AsyncEngine,
    run_id: int,
    *,
    status: str,
    error_code: int | None = None,
    error_message: str | None = None,
) -> bool:
    """Close a run: its final status, and its totals summed from its fetches.

    Units still open are closed as `cancelled` in the same transaction (they never committed).
    Returns False, changing nothing, when the run is no longer `running` (a newer run marked it
    `abandoned`: it stays so).
    """
    async with engine.begin() as conn:
        return await finish_in(
            conn, run_id, status=status, error_code=error_code, error_message=error_message
        )


async def finish_in(
    conn: AsyncConnection,
    run_id: int,
    *,
    status: str,
    error_code: int | None = None,
    error_message: str | None = None,
) -> bool:
    """`finish_run` in the caller's transaction."""
    closed = await conn.execute(
        sa.update(runs)
        .where(runs.c.id == run_id, runs.c.status == "running")
        .values(status=status)
        .returning(runs.c.id)
    )
    if closed.first() is None:
        return False
    await conn.execute(
        sa.update(fetches)
        .where(fetches.c.run_id == run_id, fetches.c.status.in_(OPEN_UNIT))
        .values(status="cancelled", finished_at=sa.func.now())
    )
    await conn.execute(
        sa.update(runs)
        .where(runs.c.id == run_id)
        .values(
            finished_at=sa.func.now(),
            error_code=storable_code(error_code),
            error_message=error_message,
            **_totals(run_id),
        )
    )
    return True


@guarded("could not close the run's open units")
async def close_open_units(engine: AsyncEngine, run_id: int, *, message: str) -> None:
    """Close a fenced run's open units as `cancelled` (its run row is no longer ours to close)."""
    async with engine.begin() as conn:
        await conn.execute(
            sa.update(fetches)
            .where(fetches.c.run_id == run_id, fetches.c.status.in_(OPEN_UNIT))
            .values(status="cancelled", finished_at=sa.func.now(), error_message=message)
        )


@guarded("could not close the stale runs")
async def abandon_stale_runs(engine: AsyncEngine, account: str = DEFAULT_ACCOUNT) -> list[int]:
    """Mark every `running` run of `account` `abandoned` (call it holding the account's run
    lock: none of them can still hold the right to write) and close the units dead runs left
    open. Another account's runs hold their own lock and are left alone.

    The UPDATE takes each run row's lock, so it waits for any unit of that run committing at this
    moment (a unit locks its run row FOR SHARE and checks it is `running` before it commits, see
    store/unit.py); once it commits, no unit of those runs can commit any more: the fence.
    Returns the abandoned runs' ids.
    """
    async with engine.begin() as conn:
        stale = [
            int(r[0])
            for r in await conn.execute(
                sa.update(runs)
                .where(runs.c.status == "running", runs.c.account == account)
                .values(
                    status="abandoned",
                    finished_at=sa.func.now(),
                    error_message="the run lost its lock before it finished (its process ended,"
                    " or its lock session was lost and a newer run started)",
                )
                .returning(runs.c.id)
            )
        ]
        # Every unit a closed run left open, however old (runs abandoned before this repair).
        await conn.execute(
            sa.update(fetches)
            .where(
                fetches.c.status.in_(OPEN_UNIT),
                fetches.c.account == account,
                fetches.c.run_id.in_(sa.select(runs.c.id).where(runs.c.status != "running")),
            )
            .values(status="abandoned", finished_at=sa.func.now())
        )
        for run_id in stale:
            await conn.execute(sa.update(runs).where(runs.c.id == run_id).values(**_totals(run_id)))
    return stale


@guarded("could not record the unit's start")
async def create_fetch(
    engine: AsyncEngine,
    *,
    run_id: int,
    resource: Resource | str,
    scope: Scope | str,
    status: str = "running",
) -> int:
    """Insert a `fetches` row for one unit (resource, scope) of a run and return its id; its
    account is the run's."""
    res = resolve(resource)
    row = sa.select(
        sa.literal(run_id, sa.BigInteger),
        sa.literal(res.path),
        sa.literal(res.entity),
        sa.literal(str(scope)),
        sa.literal(status),
        sa.func.now(),
        runs.c.account,
    ).where(runs.c.id == run_id)
    async with engine.begin() as conn:
        fetch_id = await conn.scalar(
            sa.insert(fetches)
            .from_select(
                ["run_id", "resource", "entity", "scope", "status", "started_at", "account"], row
            )
            .returning(fetches.c.id)
        )
    if fetch_id is None:
        raise StoreError(f"run {run_id} does not exist", resource=res.path)
    return int(fetch_id)


@guarded("could not record the unit's end")
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
) -> bool:
    """Record a fetch's transport figures and final status (apply already wrote its counts).

    Only an open unit changes status (and a failed one may become `superseded`); returns False,
    changing nothing, for a unit already closed with another status.
    """
    values: dict[str, Any] = {"status": status, "finished_at": sa.func.now()}
    for name, value in (
        ("attempts", attempts),
        ("http_status", http_status),
        ("bytes", bytes_read),
        ("fetch_seconds", fetch_seconds),
        ("error_code", storable_code(error_code)),
        ("error_message", error_message),
    ):
        if value is not None:
            values[name] = value
    if details:
        values["details"] = fetches.c.details.op("||")(
            sa.bindparam("extra_details", details, type_=JSONB)
        )
    # Open, or already closed with this very status (its figures may still be added).
    open_: sa.ColumnElement[bool] = fetches.c.status.in_((*OPEN_UNIT, status))
    if status == "superseded":
        open_ = sa.or_(open_, fetches.c.status == "failed")
    async with engine.begin() as conn:
        done = await conn.execute(
            sa.update(fetches)
            .where(fetches.c.id == fetch_id, open_)
            .values(**values)
            .returning(fetches.c.id)
        )
        return done.first() is not None


@guarded("could not cancel the run's running units")
async def cancel_running_units(engine: AsyncEngine, run_id: int, *, message: str) -> int:
    """Close the run's `running` units as `cancelled` (its deadline passed); how many."""
    async with engine.begin() as conn:
        swept = await conn.execute(
            sa.update(fetches)
            .where(fetches.c.run_id == run_id, fetches.c.status == "running")
            .values(status="cancelled", finished_at=sa.func.now(), error_message=message)
        )
    return int(swept.rowcount)


@guarded("could not close the interrupted runs")
async def close_interrupted(engine: AsyncEngine, hostname: str, pid: int, *, message: str) -> int:
    """Close as `interrupted` the runs this process (host and pid) left `running`, and their open
    units as `cancelled`: the last word of an interrupted `run` when the run could not write its
    own (the interruption reached it mid-write). A run another run has fenced off is no longer
    `running` and is left as it is."""
    async with engine.begin() as conn:
        ids = (
            (
                await conn.execute(
                    sa.update(runs)
                    .where(
                        runs.c.status == "running", runs.c.hostname == hostname, runs.c.pid == pid
                    )
                    .values(status="interrupted", finished_at=sa.func.now(), error_message=message)
                    .returning(runs.c.id)
                )
            )
            .scalars()
            .all()
        )
        if ids:
            await conn.execute(
                sa.update(fetches)
                .where(fetches.c.run_id.in_(ids), fetches.c.status.in_(OPEN_UNIT))
                .values(
                    status="cancelled",
                    finished_at=sa.func.now(),
                    error_message="cancelled before it committed; nothing applied",
                )
            )
    return len(ids)
