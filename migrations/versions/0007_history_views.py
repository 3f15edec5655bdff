"""SCD2 history views: one `<table>_history` view per entity over the change log

Each row is a version of a record (valid_from, valid_to, is_current, the record's typed fields),
so "the record as of T" is one query. Views rather than maintained tables: always exact, nothing
added to a unit's transaction (figures in docs/warehouse.md). The SQL is what
syncsvc/export/history.py generates today, frozen here (a test keeps the two equal).

Revision ID: 0007
Revises: 0003
Create Date: 2026-11-30 14:10:00
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0007"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

VIEWS = {
    "events_history": """
CREATE VIEW events_history AS
WITH marks AS (
    SELECT seq, event_guid, record_key, op, captured_at, run_id, before, after
    FROM changes WHERE entity = 'event'
), versions AS (
    SELECT m.*, lead(captured_at) OVER w AS valid_to, lead(seq) OVER w AS ended_by_seq
    FROM marks m
    WINDOW w AS (PARTITION BY event_guid, record_key ORDER BY seq)
)
SELECT
    event_guid,
    after ->> 'eventCode' AS event_code,
    after ->> 'eventName' AS event_name,
    (after ->> 'startDate')::date AS start_date,
    (after ->> 'endDate')::date AS end_date,
    after ->> 'timeZone' AS time_zone,
    after ->> 'status' AS status,
    NULLIF(after -> 'extras', 'null'::jsonb) AS extras,
    captured_at AS valid_from,
    valid_to,
    valid_to IS NULL AS is_current,
    seq AS started_by_seq,
    ended_by_seq,
    run_id AS started_by_run,
    op AS started_by_op
FROM versions
WHERE op IN ('insert', 'update', 'rekey')
""",
    "users_history": """
CREATE VIEW users_history AS
WITH marks AS (
    SELECT seq, event_guid, record_key, op, captured_at, run_id, before, after
    FROM changes WHERE entity = 'user'
    UNION ALL
    -- a rekey also ends the version of the key it replaced
    SELECT seq, event_guid, before ->> 'userRef', 'rekeyed', captured_at, run_id, NULL, NULL
    FROM changes WHERE entity = 'user' AND op = 'rekey'
), versions AS (
    SELECT m.*, lead(captured_at) OVER w AS valid_to, lead(seq) OVER w AS ended_by_seq
    FROM marks m
    WINDOW w AS (PARTITION BY event_guid, record_key ORDER BY seq)
)
SELECT
    event_guid,
    after ->> 'userRef' AS user_ref,
    after ->> 'clientID' AS client_id,
    after ->> 'firstName' AS first_name,
    after ->> 'lastName' AS last_name,
    after ->> 'email' AS email,
    after ->> 'company' AS company,
    after ->> 'title' AS title,
    after ->> 'phone' AS phone,
    after ->> 'city' AS city,
    after ->> 'state' AS state,
    after ->> 'country' AS country,
    after ->> 'attendeeType' AS attendee_type,
    after ->> 'registrationStatus' AS registration_status,
    (after ->> 'registrationDate')::timestamptz AS registration_date,
    (after ->> 'lastModified')::timestamptz AS last_modified,
    NULLIF(after -> 'customFields', 'null'::jsonb) AS custom_fields,
    NULLIF(after -> 'extras', 'null'::jsonb) AS extras,
    CASE WHEN op = 'rekey' THEN before ->> 'userRef' END AS previous_user_ref,
    captured_at AS valid_from,
    valid_to,
    valid_to IS NULL AS is_current,
    seq AS started_by_seq,
    ended_by_seq,
    run_id AS started_by_run,
    op AS started_by_op
FROM versions
WHERE op IN ('insert', 'update', 'rekey')
""",
    "sessions_history": """
CREATE VIEW sessions_history AS
WITH marks AS (
    SELECT seq, event_guid, record_key, op, captured_at, run_id, before, after
    FROM changes WHERE entity = 'session'
), versions AS (
    SELECT m.*, lead(captured_at) OVER w AS valid_to, lead(seq) OVER w AS ended_by_seq
    FROM marks m
    WINDOW w AS (PARTITION BY event_guid, record_key ORDER BY seq)
)
SELECT
    event_guid,
    after ->> 'sessionID' AS session_id,
    after ->> 'sessionCode' AS session_code,
    after ->> 'title' AS title,
    after ->> 'abstract' AS abstract,
    after ->> 'sessionType' AS session_type,
    after ->> 'track' AS track,
    after ->> 'room' AS room,
    (after ->> 'startTime')::timestamptz AS start_time,
    (after ->> 'endTime')::timestamptz AS end_time,
    (after ->> 'capacity')::bigint AS capacity,
    after ->> 'status' AS status,
    CASE WHEN jsonb_typeof(after -> 'speakers') = 'array' THEN ARRAY(SELECT jsonb_array_elements_text(after -> 'speakers')) END AS speakers,
    (after ->> 'lastModified')::timestamptz AS last_modified,
    NULLIF(after -> 'customFields', 'null'::jsonb) AS custom_fields,
    NULLIF(after -> 'extras', 'null'::jsonb) AS extras,
    captured_at AS valid_from,
    valid_to,
    valid_to IS NULL AS is_current,
    seq AS started_by_seq,
    ended_by_seq,
    run_id AS started_by_run,
    op AS started_by_op
FROM versions
WHERE op IN ('insert', 'update', 'rekey')
""",
    "exhibitors_history": """
CREATE VIEW exhibitors_history AS
WITH marks AS (
    SELECT seq, event_guid, record_key, op, captured_at, run_id, before, after
    FROM changes WHERE entity = 'exhibitor'
    UNION ALL
    -- a rekey also ends the version of the key it replaced
    SELECT seq, event_guid, before ->> 'exhibitorID', 'rekeyed', captured_at, run_id, NULL, NULL
    FROM changes WHERE entity = 'exhibitor' AND op = 'rekey'
), versions AS (
    SELECT m.*, lead(captured_at) OVER w AS valid_to, lead(seq) OVER w AS ended_by_seq
    FROM marks m
    WINDOW w AS (PARTITION BY event_guid, record_key ORDER BY seq)
)
SELECT
    event_guid,
    after ->> 'exhibitorID' AS exhibitor_id,
    after ->> 'clientID' AS client_id,
    after ->> 'name' AS name,
    after ->> 'boothNumber' AS booth_number,
    after ->> 'website' AS website,
    after ->> 'sponsorLevel' AS sponsor_level,
    after ->> 'description' AS description,
    CASE WHEN jsonb_typeof(after -> 'contacts') = 'array' THEN ARRAY(SELECT jsonb_array_elements_text(after -> 'contacts')) END AS contacts,
    (after ->> 'lastModified')::timestamptz AS last_modified,
    NULLIF(after -> 'customFields', 'null'::jsonb) AS custom_fields,
    NULLIF(after -> 'extras', 'null'::jsonb) AS extras,
    CASE WHEN op = 'rekey' THEN before ->> 'exhibitorID' END AS previous_exhibitor_id,
    captured_at AS valid_from,
    valid_to,
    valid_to IS NULL AS is_current,
    seq AS started_by_seq,
    ended_by_seq,
    run_id AS started_by_run,
    op AS started_by_op
FROM versions
WHERE op IN ('insert', 'update', 'rekey')
""",
}


def upgrade() -> None:
    for sql in VIEWS.values():
        op.execute(sql)


def downgrade() -> None:
    for name in reversed(VIEWS):
        op.execute(f"DROP VIEW IF EXISTS {name}")
