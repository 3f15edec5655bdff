"""SCD2 history views: one `<table>_history` view per entity over the change log

Each row is a version of a record (valid_from, valid_to, is_current, the record's typed fields),
so "the record as of T" is one query. Views rather than maintained tables: always exact, nothing
added to a unit's transaction (figures in docs/warehouse.md). The SQL is what
syncsvc/export/history.py generates today, frozen here (a test keeps the two equal).

The change log's (entity, event_guid, record_key) index becomes a covering one with seq, op and
captured_at: the views bound each version from it alone (an index-only scan), and a small partial
index finds the rekeys (their `before` names the key a rekey ended). The covering index replaces
the old one, whose leading columns it keeps, so a change row still updates one such index.

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-30 14:10:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

VIEWS = {
    "events_history": """
CREATE VIEW events_history AS
WITH marks AS (
    SELECT seq, event_guid, record_key, op, captured_at
    FROM changes WHERE entity = 'event'
), versions AS (
    SELECT m.*, lead(captured_at) OVER w AS valid_to, lead(seq) OVER w AS ended_by_seq
    FROM marks m
    WINDOW w AS (PARTITION BY event_guid, record_key ORDER BY seq)
)
SELECT
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
    SELECT seq, event_guid, record_key, op, captured_at
    FROM changes WHERE entity = 'user'
    UNION ALL
    -- a rekey also ends the version of the key it replaced
    SELECT seq, event_guid, before ->> 'userRef', 'rekeyed', captured_at
    FROM changes WHERE entity = 'user' AND op = 'rekey'
), versions AS (
    SELECT m.*, lead(captured_at) OVER w AS valid_to, lead(seq) OVER w AS ended_by_seq
    FROM marks m
    WINDOW w AS (PARTITION BY event_guid, record_key ORDER BY seq)
)
SELECT
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
    SELECT seq, event_guid, record_key, op, captured_at
    FROM changes WHERE entity = 'session'
), versions AS (
    SELECT m.*, lead(captured_at) OVER w AS valid_to, lead(seq) OVER w AS ended_by_seq
    FROM marks m
    WINDOW w AS (PARTITION BY event_guid, record_key ORDER BY seq)
)
SELECT
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
    SELECT seq, event_guid, record_key, op, captured_at
    FROM changes WHERE entity = 'exhibitor'
    UNION ALL
    -- a rekey also ends the version of the key it replaced
    SELECT seq, event_guid, before ->> 'exhibitorID', 'rekeyed', captured_at
    FROM changes WHERE entity = 'exhibitor' AND op = 'rekey'
), versions AS (
    SELECT m.*, lead(captured_at) OVER w AS valid_to, lead(seq) OVER w AS ended_by_seq
    FROM marks m
    WINDOW w AS (PARTITION BY event_guid, record_key ORDER BY seq)
)
SELECT
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


def upgrade() -> None:
    op.drop_index(op.f("ix_changes_entity_event_guid_record_key"), table_name="changes")
    op.create_index(
        op.f("ix_changes_entity_event_guid_record_key_seq"),
        "changes",
        ["entity", "event_guid", "record_key", "seq"],
        postgresql_include=["op", "captured_at"],
    )
    op.create_index(
        "ix_changes_rekeys",
        "changes",
        ["entity", "event_guid"],
        postgresql_where=sa.text("op = 'rekey'"),
    )
    for sql in VIEWS.values():
        op.execute(sql)


def downgrade() -> None:
    for name in reversed(VIEWS):
        op.execute(f"DROP VIEW IF EXISTS {name}")
    op.drop_index("ix_changes_rekeys", table_name="changes")
    op.drop_index(op.f("ix_changes_entity_event_guid_record_key_seq"), table_name="changes")
    op.create_index(
        op.f("ix_changes_entity_event_guid_record_key"),
        "changes",
        ["entity", "event_guid", "record_key"],
    )
