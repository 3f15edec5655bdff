"""the state tables' `last_seen_run` becomes `last_stored_run`: the name says what it holds

The column was only ever written when a unit stored the record's values (an insert, an update, a
rekey), never when a dump merely carried the record unchanged, so "seen" promised more than it
held. Writing it for every record a dump carries would rewrite every live row on every run (a
million rows a day on a 1M-record account, where a run now writes only the ~2% that changed),
so the column keeps its meaning and takes a true name. A rename is a catalog change: no row is
rewritten.

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-30 18:00:00
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

STATE_TABLES = ("events", "users", "sessions", "exhibitors")
STORED = "last run that stored its values (insert, update, rekey)"
SEEN = "last run it changed in"


def upgrade() -> None:
    for table in STATE_TABLES:
        op.alter_column(
            table,
            "last_seen_run",
            new_column_name="last_stored_run",
            comment=STORED,
            existing_comment=SEEN,
        )


def downgrade() -> None:
    for table in STATE_TABLES:
        op.alter_column(
            table,
            "last_stored_run",
            new_column_name="last_seen_run",
            comment=SEEN,
            existing_comment=STORED,
        )
