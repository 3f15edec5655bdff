"""the change feed's consumers: webhook secret file, envelope, batch size, in-flight batch

A webhook consumer names the file its signing secret is read from (never the secret itself), the
envelope its changes are shaped in (syncsvc or debezium), an optional batch size, and the last seq
of the batch it is delivering: written before the first attempt, so a batch re-sent after a crash
holds the same changes under the same idempotency id.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-30 14:00:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column(
        "consumers",
        sa.Column(
            "secret_file",
            sa.Text(),
            nullable=True,
            comment="path of the file holding the webhook signing secret; never the secret",
        ),
    )
    op.add_column(
        "consumers",
        sa.Column("envelope", sa.Text(), server_default="syncsvc", nullable=False),
    )
    op.add_column(
        "consumers",
        sa.Column(
            "batch_size", sa.Integer(), nullable=True, comment="null: SYNCSVC_WEBHOOK_BATCH_SIZE"
        ),
    )
    op.add_column(
        "consumers",
        sa.Column(
            "inflight_until",
            sa.BigInteger(),
            nullable=True,
            comment="the last seq of the batch being delivered; null between batches",
        ),
    )
    op.create_check_constraint(
        op.f("ck_consumers_envelope"), "consumers", "envelope IN ('syncsvc', 'debezium')"
    )


def downgrade() -> None:
    op.drop_constraint(op.f("ck_consumers_envelope"), "consumers", type_="check")
    op.drop_column("consumers", "inflight_until")
    op.drop_column("consumers", "batch_size")
    op.drop_column("consumers", "envelope")
    op.drop_column("consumers", "secret_file")
