"""Migrations on a real server: no drift from the models, and an upgrade/downgrade round trip."""

from __future__ import annotations

from collections import Counter
from typing import Any

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import inspect, text
from sqlalchemy.engine import URL
from sqlalchemy.ext.asyncio import AsyncEngine

from syncsvc import scheduler
from syncsvc.errors import MigrationError
from syncsvc.settings import Settings
from syncsvc.simulator import SimConfig
from syncsvc.store import db
from syncsvc.store.schema import metadata

pytestmark = pytest.mark.db


def _diff(connection):  # type: ignore[no-untyped-def]
    ctx = MigrationContext.configure(
        connection, opts={"compare_type": True, "compare_server_default": True}
    )
    return compare_metadata(ctx, metadata)


def _tables(connection):  # type: ignore[no-untyped-def]
    return set(inspect(connection).get_table_names())


async def test_models_and_migrations_do_not_drift(db_url: URL) -> None:
    engine = db.make_engine(db_url)
    try:
        async with engine.connect() as conn:
            diff = await conn.run_sync(_diff)
    finally:
        await engine.dispose()
    assert diff == []


async def test_drift_check_catches_a_table_the_migrations_lack(empty_db_url: URL) -> None:
    """The drift comparison is not vacuous: on an empty database it reports every table."""
    engine = db.make_engine(empty_db_url)
    try:
        async with engine.connect() as conn:
            diff = await conn.run_sync(_diff)
    finally:
        await engine.dispose()
    added = {d[1].name for d in diff if d[0] == "add_table"}
    assert added == set(metadata.tables)


async def test_upgrade_downgrade_upgrade_round_trip(empty_db_url: URL) -> None:
    engine = db.make_engine(empty_db_url)
    try:
        await db.upgrade(engine)
        async with engine.connect() as conn:
            assert set(metadata.tables) <= await conn.run_sync(_tables)
        current, head = await db.current_revision(engine)
        assert current == head is not None

        await db.downgrade(engine, "base")
        async with engine.connect() as conn:
            assert await conn.run_sync(_tables) <= {"alembic_version"}
        assert (await db.current_revision(engine))[0] is None

        await db.upgrade(engine)
        async with engine.connect() as conn:
            assert set(metadata.tables) <= await conn.run_sync(_tables)
            assert await conn.run_sync(_diff) == []
    finally:
        await engine.dispose()


async def test_the_light_schema_check_knows_the_migrations_head(empty_db_url: URL) -> None:
    engine = db.make_engine(empty_db_url)
    try:
        with pytest.raises(MigrationError, match="at nothing"):
            await db.require_current(engine)
        await db.upgrade(engine, "0001")
        with pytest.raises(MigrationError, match=f"at 0001, the code needs {db.SCHEMA_HEAD}"):
            await db.require_current(engine)
        await db.upgrade(engine)
        current, head = await db.current_revision(engine)  # alembic's own view
        assert current == head == db.SCHEMA_HEAD
        await db.require_current(engine)  # passes
    finally:
        await engine.dispose()


# --- 0007: many accounts ---------------------------------------------------------------------


def _sim_settings(sim: Any) -> Settings:
    return Settings.load({}).replace(
        base_url=sim.base_url,
        api_token="sim-account-token",
        retry_base_delay=0.01,
        retry_max_delay=0.05,
        rate_limit=200.0,
    )


async def _counts(engine: AsyncEngine, sql: str) -> list[Any]:
    async with engine.connect() as conn:
        return [tuple(r) for r in await conn.execute(text(sql))]


async def test_rows_from_0006_become_the_default_account_and_the_next_run_diffs_against_them(
    empty_db_url: URL, simulator: Any
) -> None:
    config = SimConfig(seed=5, events=4, users_per_event=30, sessions_per_event=5)
    engine = db.make_engine(empty_db_url)
    try:
        async with simulator(config) as sim:
            settings = _sim_settings(sim)
            await db.upgrade(engine)
            first = await scheduler.run_once(settings, engine)
            assert first.status == "succeeded"
            # Back to 0006 (one account: allowed): the rows as the old schema keeps them.
            await db.downgrade(engine, "0006")
            assert "account" not in await _counts(
                engine,
                "SELECT column_name FROM information_schema.columns"
                " WHERE table_name = 'users' AND column_name = 'account'",
            )
            users = (await _counts(engine, "SELECT count(*) FROM users"))[0][0]
            assert users > 50

            await db.upgrade(engine)
            for table in ("runs", "fetches", "changes", "events", "users", "sessions"):
                assert await _counts(engine, f"SELECT DISTINCT account FROM {table}") == [
                    ("default",)
                ], table
            # The implicit account diffs against those rows: the same day is no change at all.
            again = await scheduler.run_once(settings, engine)
            assert again.status == "succeeded"
            assert not any(again.totals().values())
            assert await _counts(
                engine, f"SELECT count(*) FROM changes WHERE run_id = {again.run_id}"
            ) == [(0,)]
            sim.set_day(1)
            next_day = await scheduler.run_once(settings, engine)
            got = Counter(
                (r[0], r[1], r[2], r[3])
                for r in await _counts(
                    engine,
                    "SELECT entity, event_guid, record_key, op FROM changes"
                    f" WHERE run_id = {next_day.run_id} AND account = 'default'",
                )
            )
            want = Counter(
                (e.entity, e.event_guid, e.key, e.op) for e in sim.universe.expected_changes(0, 1)
            )
            assert got == want
    finally:
        await engine.dispose()


async def test_downgrade_below_0007_refuses_while_two_accounts_hold_rows(
    empty_db_url: URL,
) -> None:
    engine = db.make_engine(empty_db_url)
    try:
        await db.upgrade(engine)
        async with engine.begin() as conn:
            await conn.execute(
                text("INSERT INTO runs (environment, account) VALUES ('uat', 'a'), ('uat', 'b')")
            )
        with pytest.raises(Exception, match=r"holds 2 accounts \(a, b\)"):
            await db.downgrade(engine, "0006")
        assert (await db.current_revision(engine))[0] == db.SCHEMA_HEAD
        assert await _counts(engine, "SELECT account FROM runs ORDER BY 1") == [("a",), ("b",)]
    finally:
        await engine.dispose()
