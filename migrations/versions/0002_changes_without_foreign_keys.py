"""changes without foreign keys

A foreign key is checked row by row: an initial load of a million records writes a million
change rows, and the two keys on changes (run_id, fetch_id) cost two lookups each, about a
fifth of the whole load. The state tables' run marks carry no key for the same reason. The
writer sets both ids from rows it created first, and syncsvc never deletes runs or fetches.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-24 10:30:00
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.drop_constraint(op.f("fk_changes_run_id_runs"), "changes", type_="foreignkey")
    op.drop_constraint(op.f("fk_changes_fetch_id_fetches"), "changes", type_="foreignkey")


def downgrade() -> None:
    op.create_foreign_key(
        op.f("fk_changes_fetch_id_fetches"), "changes", "fetches", ["fetch_id"], ["id"]
    )
    op.create_foreign_key(op.f("fk_changes_run_id_runs"), "changes", "runs", ["run_id"], ["id"])
