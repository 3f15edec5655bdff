"""Migrations on a real server: no drift from the models, and an upgrade/downgrade round trip."""

from __future__ import annotations

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import inspect
from sqlalchemy.engine import URL

from syncsvc.errors import MigrationError
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
