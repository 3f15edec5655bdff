"""run and unit statuses for interruptions, and the change feed's consumers

Runs gain `interrupted` (SIGINT/SIGTERM, or cancelled at serve's drain limit), distinct from
`abandoned` (found still running after its process died). Units gain `cancelled` (stopped before
they committed) and `abandoned` (left running by a dead run, closed by the next one). A consumer
of the change log is a row: its name, the last seq it acknowledged, its filters, and for a
webhook consumer the endpoint and its delivery health.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-30 13:45:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_OLD_RUN = ("running", "succeeded", "partial", "failed", "held", "abandoned")
_NEW_RUN = ("running", "succeeded", "partial", "failed", "held", "interrupted", "abandoned")
_OLD_FETCH = ("pending", "running", "applied", "failed", "held", "superseded", "skipped")
_NEW_FETCH = (*_OLD_FETCH, "cancelled", "abandoned")


def _in(column: str, values: tuple[str, ...]) -> str:
    return f"{column} IN ({', '.join(repr(v) for v in values)})"


def _status_check(table: str, values: tuple[str, ...]) -> None:
    op.drop_constraint(op.f(f"ck_{table}_status"), table, type_="check")
    op.create_check_constraint(op.f(f"ck_{table}_status"), table, _in("status", values))


def upgrade() -> None:
    _status_check("runs", _NEW_RUN)
    _status_check("fetches", _NEW_FETCH)
    op.create_table(
        "consumers",
        sa.Column("name", sa.Text(), nullable=False),
        sa.Column(
            "cursor",
            sa.BigInteger(),
            server_default="0",
            nullable=False,
            comment="the last acknowledged seq: everything up to it was delivered",
        ),
        sa.Column(
            "filters",
            postgresql.JSONB(astext_type=sa.Text()),
            server_default=sa.text("'{}'::jsonb"),
            nullable=False,
            comment="entity, op, event, environment: each a list; absent means all",
        ),
        sa.Column("webhook_url", sa.Text(), nullable=True, comment="null for a pull consumer"),
        sa.Column("status", sa.Text(), server_default="active", nullable=False),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.Column("failing_since", postgresql.TIMESTAMP(timezone=True), nullable=True),
        sa.Column("last_delivered_at", postgresql.TIMESTAMP(timezone=True), nullable=True),
        sa.Column(
            "created_at",
            postgresql.TIMESTAMP(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.Column(
            "updated_at",
            postgresql.TIMESTAMP(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.CheckConstraint(
            "status IN ('active', 'failing', 'paused')", name=op.f("ck_consumers_status")
        ),
        sa.PrimaryKeyConstraint("name", name=op.f("pk_consumers")),
    )


def downgrade() -> None:
    op.drop_table("consumers")
    op.execute("UPDATE fetches SET status = 'failed' WHERE status IN ('cancelled', 'abandoned')")
    op.execute("UPDATE runs SET status = 'failed' WHERE status = 'interrupted'")
    _status_check("fetches", _OLD_FETCH)
    _status_check("runs", _OLD_RUN)
