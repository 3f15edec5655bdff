"""`syncsvc status`: the last runs and their units, failures first."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from syncsvc import vocab
from syncsvc.settings import DEFAULT_ACCOUNT
from syncsvc.store.schema import fetches, runs

# Units that need an operator's eye sort first.
_UNIT_ORDER = {
    vocab.UnitStatus.FAILED: 0,
    vocab.UnitStatus.HELD: 1,
    vocab.UnitStatus.RUNNING: 2,
    vocab.UnitStatus.PENDING: 3,
    vocab.UnitStatus.SUPERSEDED: 4,
}


@dataclass(frozen=True, slots=True)
class HeldScope:
    """One scope a unit held: its live rows, the deletes it would have applied, and the share
    of the live rows that is, against the threshold in force for that run."""

    event_guid: str
    live: int
    deletes: int
    threshold: float | None

    @property
    def share(self) -> float:
        return self.deletes / self.live if self.live else 1.0

    def describe(self) -> str:
        scope = "the account's events" if self.event_guid == "*" else f"event {self.event_guid}"
        limit = f" > threshold {self.threshold:.0%}" if self.threshold is not None else ""
        return (
            f"{scope}: {self.deletes:,} of {self.live:,} live rows would be deleted "
            f"({self.share:.0%}{limit})"
        )


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
    held: tuple[HeldScope, ...] = ()
    note: str | None = None  # why a unit without a fetch exists (an event's records cascading)

    @property
    def reason(self) -> str:
        """What an operator reads: the error's code and message, or why the unit was held."""
        if self.status == vocab.UnitStatus.HELD and self.held:
            text = "held: " + "; ".join(h.describe() for h in self.held)
        elif self.error_code is not None or self.error_message:
            code = "" if self.error_code is None else str(self.error_code)
            text = f"{code} {self.error_message or ''}"
        else:
            text = ""
        if self.note:
            text = f"{self.note}; {text}" if text.strip() else self.note
        return text.strip()


@dataclass(frozen=True, slots=True)
class RunStatus:
    run_id: int
    account: str
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

    def as_json(self) -> dict[str, Any]:
        """A plain, JSON-ready view (`status --format json`)."""
        out = asdict(self)
        for key in ("started_at", "finished_at"):
            value = out[key]
            out[key] = value.isoformat() if value is not None else None
        for unit, data in zip(self.units, out["units"], strict=True):
            data["reason"] = unit.reason
            for h, hd in zip(unit.held, data["held"], strict=True):
                hd["share"] = round(h.share, 4)
        return out


def _held(details: dict[str, Any] | None) -> tuple[HeldScope, ...]:
    details = details or {}
    threshold = (details.get("hold") or {}).get("ratio")
    return tuple(
        HeldScope(h["event_guid"], int(h["live"]), int(h["deletes"]), threshold)
        for h in details.get("held") or ()
    )


async def previous_bytes(
    engine: AsyncEngine, account: str = DEFAULT_ACCOUNT
) -> dict[tuple[str, str], int]:
    """(resource path, scope) -> decoded bytes of `account`'s last applied fetch of it: a unit's
    expected size, for the ETA of a run on a terminal when the server sends no Content-Length."""
    latest = (
        sa.select(fetches.c.resource, fetches.c.scope, fetches.c.bytes)
        .distinct(fetches.c.resource, fetches.c.scope)
        .where(
            fetches.c.status.in_((vocab.UnitStatus.APPLIED, vocab.UnitStatus.HELD)),
            fetches.c.bytes > 0,
            fetches.c.account == account,
        )
        .order_by(fetches.c.resource, fetches.c.scope, fetches.c.id.desc())
    )
    async with engine.connect() as conn:
        return {(str(r), str(s)): int(b) for r, s, b in (await conn.execute(latest)).tuples()}


async def last_runs(
    engine: AsyncEngine, limit: int = 5, accounts: tuple[str, ...] = ()
) -> list[RunStatus]:
    """The newest `limit` runs (of `accounts`; none given: of every account), each with its
    units (failed and held units first)."""
    query = sa.select(runs).order_by(runs.c.id.desc()).limit(limit)
    if accounts:
        query = query.where(runs.c.account.in_(accounts))
    async with engine.connect() as conn:
        run_rows = (await conn.execute(query)).mappings().all()
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
                account=r["account"],
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
                        held=_held(u["details"]),
                        note=(u["details"] or {}).get("cascade"),
                    )
                    for u in units
                ),
            )
        )
    return out
