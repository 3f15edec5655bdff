"""many accounts: an `account` column on runs, fetches, changes and every state table

One deployment syncs many Cvent accounts into one database. Every run, fetch, change and state
row names its account; the state tables' primary keys lead with it, (account, event_guid[, key]),
so two accounts may hold the same event GUID (the same Cvent account synced under two names, two
simulators with one seed) and never see each other's rows. Existing rows become the implicit
account's, 'default' (the column's server default stays: a row written without an account is the
implicit account's; syncsvc's own writers always name it).

Indexes: the clientID index (rekeys pair per account and event) leads with the account; the
change log's covering index and the rekey index keep the entity first (each history view reads
one entity) and take the account next. The history views partition each record's versions by
(account, event_guid, record_key) and show the account first: they are dropped and created
again (a view cannot gain a column in the middle).

Downgrade: only while the database holds one account (the old keys cannot tell two apart); it
refuses otherwise, changing nothing.

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-30 23:00:00
"""

from __future__ import annotations

import importlib.util
from collections.abc import Sequence
from pathlib import Path

import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

DEFAULT = "default"
COMMENT = "the account (settings: [[account]] name) the row belongs to"
# table -> its key columns after the account
STATE_KEYS = {
    "events": ("event_guid",),
    "users": ("event_guid", "user_ref"),
    "sessions": ("event_guid", "session_id"),
    "exhibitors": ("event_guid", "exhibitor_id"),
}
CLIENT_ID_TABLES = ("users", "exhibitors")
FILTERS_NEW = "entity, op, event, environment, account: each a list; absent means all"
FILTERS_OLD = "entity, op, event, environment: each a list; absent means all"

VIEWS = {
    "events_history": """
CREATE VIEW events_history AS
WITH marks AS (
    SELECT seq, account, event_guid, record_key, op, captured_at
    FROM changes WHERE entity = 'event'
), versions AS (
    SELECT m.*, lead(captured_at) OVER w AS valid_to, lead(seq) OVER w AS ended_by_seq
    FROM marks m
    WINDOW w AS (PARTITION BY account, event_guid, record_key ORDER BY seq)
)
SELECT
    v.account,
    v.event_guid,
    c.after ->> 'eventCode' AS event_code,
    c.after ->> 'eventName' AS event_name,
    (c.after ->> 'startDate')::date AS start_date,
    (c.after ->> 'endDate')::date AS end_date,
    c.after ->> 'timeZone' AS time_zone,
    c.after ->> 'status' AS status,
    NULLIF(c.after -> 'extras', 'null'::jsonb) AS extras,
    v.captured_at AS valid_from,
    v.valid_to,
    v.valid_to IS NULL AS is_current,
    v.seq AS started_by_seq,
    v.ended_by_seq,
    c.run_id AS started_by_run,
    v.op AS started_by_op
FROM versions v JOIN changes c ON c.seq = v.seq
WHERE v.op IN ('insert', 'update', 'rekey')
""",
    "users_history": """
CREATE VIEW users_history AS
WITH marks AS (
    SELECT seq, account, event_guid, record_key, op, captured_at
    FROM changes WHERE entity = 'user'
    UNION ALL
    -- a rekey also ends the version of the key it replaced
    SELECT seq, account, event_guid, before ->> 'userRef', 'rekeyed', captured_at
    FROM changes WHERE entity = 'user' AND op = 'rekey'
), versions AS (
    SELECT m.*, lead(captured_at) OVER w AS valid_to, lead(seq) OVER w AS ended_by_seq
    FROM marks m
    WINDOW w AS (PARTITION BY account, event_guid, record_key ORDER BY seq)
)
SELECT
    v.account,
    v.event_guid,
    c.after ->> 'userRef' AS user_ref,
    c.after ->> 'clientID' AS client_id,
    c.after ->> 'firstName' AS first_name,
    c.after ->> 'lastName' AS last_name,
    c.after ->> 'email' AS email,
    c.after ->> 'company' AS company,
    c.after ->> 'title' AS title,
    c.after ->> 'phone' AS phone,
    c.after ->> 'city' AS city,
    c.after ->> 'state' AS state,
    c.after ->> 'country' AS country,
    c.after ->> 'attendeeType' AS attendee_type,
    c.after ->> 'registrationStatus' AS registration_status,
    (c.after ->> 'registrationDate')::timestamptz AS registration_date,
    (c.after ->> 'lastModified')::timestamptz AS last_modified,
    NULLIF(c.after -> 'customFields', 'null'::jsonb) AS custom_fields,
    NULLIF(c.after -> 'extras', 'null'::jsonb) AS extras,
    CASE WHEN v.op = 'rekey' THEN c.before ->> 'userRef' END AS previous_user_ref,
    v.captured_at AS valid_from,
    v.valid_to,
    v.valid_to IS NULL AS is_current,
    v.seq AS started_by_seq,
    v.ended_by_seq,
    c.run_id AS started_by_run,
    v.op AS started_by_op
FROM versions v JOIN changes c ON c.seq = v.seq
WHERE v.op IN ('insert', 'update', 'rekey')
""",
    "sessions_history": """
CREATE VIEW sessions_history AS
WITH marks AS (
    SELECT seq, account, event_guid, record_key, op, captured_at
    FROM changes WHERE entity = 'session'
), versions AS (
    SELECT m.*, lead(captured_at) OVER w AS valid_to, lead(seq) OVER w AS ended_by_seq
    FROM marks m
    WINDOW w AS (PARTITION BY account, event_guid, record_key ORDER BY seq)
)
SELECT
    v.account,
    v.event_guid,
    c.after ->> 'sessionID' AS session_id,
    c.after ->> 'sessionCode' AS session_code,
    c.after ->> 'title' AS title,
    c.after ->> 'abstract' AS abstract,
    c.after ->> 'sessionType' AS session_type,
    c.after ->> 'track' AS track,
    c.after ->> 'room' AS room,
    (c.after ->> 'startTime')::timestamptz AS start_time,
    (c.after ->> 'endTime')::timestamptz AS end_time,
    (c.after ->> 'capacity')::bigint AS capacity,
    c.after ->> 'status' AS status,
    CASE WHEN jsonb_typeof(c.after -> 'speakers') = 'array' THEN ARRAY(SELECT jsonb_array_elements_text(c.after -> 'speakers')) END AS speakers,
    (c.after ->> 'lastModified')::timestamptz AS last_modified,
    NULLIF(c.after -> 'customFields', 'null'::jsonb) AS custom_fields,
    NULLIF(c.after -> 'extras', 'null'::jsonb) AS extras,
    v.captured_at AS valid_from,
    v.valid_to,
    v.valid_to IS NULL AS is_current,
    v.seq AS started_by_seq,
    v.ended_by_seq,
    c.run_id AS started_by_run,
    v.op AS started_by_op
FROM versions v JOIN changes c ON c.seq = v.seq
WHERE v.op IN ('insert', 'update', 'rekey')
""",
    "exhibitors_history": """
CREATE VIEW exhibitors_history AS
WITH marks AS (
    SELECT seq, account, event_guid, record_key, op, captured_at
    FROM changes WHERE entity = 'exhibitor'
    UNION ALL
    -- a rekey also ends the version of the key it replaced
    SELECT seq, account, event_guid, before ->> 'exhibitorID', 'rekeyed', captured_at
    FROM changes WHERE entity = 'exhibitor' AND op = 'rekey'
), versions AS (
    SELECT m.*, lead(captured_at) OVER w AS valid_to, lead(seq) OVER w AS ended_by_seq
    FROM marks m
    WINDOW w AS (PARTITION BY account, event_guid, record_key ORDER BY seq)
)
SELECT
    v.account,
    v.event_guid,
    c.after ->> 'exhibitorID' AS exhibitor_id,
    c.after ->> 'clientID' AS client_id,
    c.after ->> 'name' AS name,
    c.after ->> 'boothNumber' AS booth_number,
    c.after ->> 'website' AS website,
    c.after ->> 'sponsorLevel' AS sponsor_level,
    c.after ->> 'description' AS description,
    CASE WHEN jsonb_typeof(c.after -> 'contacts') = 'array' THEN ARRAY(SELECT jsonb_array_elements_text(c.after -> 'contacts')) END AS contacts,
    (c.after ->> 'lastModified')::timestamptz AS last_modified,
    NULLIF(c.after -> 'customFields', 'null'::jsonb) AS custom_fields,
    NULLIF(c.after -> 'extras', 'null'::jsonb) AS extras,
    CASE WHEN v.op = 'rekey' THEN c.before ->> 'exhibitorID' END AS previous_exhibitor_id,
    v.captured_at AS valid_from,
    v.valid_to,
    v.valid_to IS NULL AS is_current,
    v.seq AS started_by_seq,
    v.ended_by_seq,
    c.run_id AS started_by_run,
    v.op AS started_by_op
FROM versions v JOIN changes c ON c.seq = v.seq
WHERE v.op IN ('insert', 'update', 'rekey')
""",
}


def _old_views() -> dict[str, str]:
    """Migration 0005's views (alembic loads revision files by path, not as a package)."""
    spec = importlib.util.spec_from_file_location(
        "syncsvc_migration_0005", Path(__file__).with_name("0005_history_views.py")
    )
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    views: dict[str, str] = module.VIEWS
    return views


def upgrade() -> None:
    for name in reversed(VIEWS):
        op.execute(f"DROP VIEW IF EXISTS {name}")
    for table in ("runs", "fetches", "changes", *STATE_KEYS):
        # A constant default: PostgreSQL 11+ adds the column without rewriting the table.
        op.add_column(
            table,
            sa.Column(
                "account", sa.Text(), server_default=DEFAULT, nullable=False, comment=COMMENT
            ),
        )
    for table, keys in STATE_KEYS.items():
        op.drop_constraint(f"pk_{table}", table, type_="primary")
        op.create_primary_key(f"pk_{table}", table, ["account", *keys])
    for table in CLIENT_ID_TABLES:
        op.drop_index(f"ix_{table}_event_guid_client_id", table_name=table)
        op.create_index(
            f"ix_{table}_account_event_guid_client_id",
            table,
            ["account", "event_guid", "client_id"],
            postgresql_where=sa.text("client_id IS NOT NULL"),
        )
    op.drop_index("ix_changes_entity_event_guid_record_key_seq", table_name="changes")
    op.create_index(
        "ix_changes_entity_account_event_guid_record_key_seq",
        "changes",
        ["entity", "account", "event_guid", "record_key", "seq"],
        postgresql_include=["op", "captured_at"],
    )
    op.drop_index("ix_changes_rekeys", table_name="changes")
    op.create_index(
        "ix_changes_rekeys",
        "changes",
        ["entity", "account", "event_guid"],
        postgresql_where=sa.text("op = 'rekey'"),
    )
    op.alter_column("consumers", "filters", comment=FILTERS_NEW, existing_comment=FILTERS_OLD)
    for sql in VIEWS.values():
        op.execute(sql)


def downgrade() -> None:
    bind = op.get_bind()
    accounts = [
        r[0]
        for r in bind.execute(
            sa.text(
                "SELECT account FROM runs UNION SELECT account FROM events"
                " UNION SELECT account FROM changes ORDER BY 1"
            )
        )
    ]
    if len(accounts) > 1:
        raise RuntimeError(
            f"cannot downgrade below 0007: the database holds {len(accounts)} accounts"
            f" ({', '.join(accounts)}) and the older schema keys rows without one"
        )
    for name in reversed(VIEWS):
        op.execute(f"DROP VIEW IF EXISTS {name}")
    op.alter_column("consumers", "filters", comment=FILTERS_OLD, existing_comment=FILTERS_NEW)
    op.drop_index("ix_changes_rekeys", table_name="changes")
    op.create_index(
        "ix_changes_rekeys",
        "changes",
        ["entity", "event_guid"],
        postgresql_where=sa.text("op = 'rekey'"),
    )
    op.drop_index("ix_changes_entity_account_event_guid_record_key_seq", table_name="changes")
    op.create_index(
        "ix_changes_entity_event_guid_record_key_seq",
        "changes",
        ["entity", "event_guid", "record_key", "seq"],
        postgresql_include=["op", "captured_at"],
    )
    for table in CLIENT_ID_TABLES:
        op.drop_index(f"ix_{table}_account_event_guid_client_id", table_name=table)
        op.create_index(
            f"ix_{table}_event_guid_client_id",
            table,
            ["event_guid", "client_id"],
            postgresql_where=sa.text("client_id IS NOT NULL"),
        )
    for table, keys in STATE_KEYS.items():
        op.drop_constraint(f"pk_{table}", table, type_="primary")
        op.create_primary_key(f"pk_{table}", table, list(keys))
    for table in ("runs", "fetches", "changes", *STATE_KEYS):
        op.drop_column(table, "account")
    for sql in _old_views().values():
        op.execute(sql)
