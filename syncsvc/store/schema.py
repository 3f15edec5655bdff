"""The one MetaData: current-state tables (built from the resource catalog), the change log, runs.

Alembic autogenerates from `metadata`; a test fails when it and the migrations drift.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import (
    ARRAY,
    BigInteger,
    Boolean,
    CheckConstraint,
    Column,
    Date,
    Double,
    ForeignKey,
    Identity,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    PrimaryKeyConstraint,
    Table,
    Text,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB, TIMESTAMP

from syncsvc.catalog import RESOURCES, FieldKind, Resource
from syncsvc.settings import DEFAULT_ACCOUNT
from syncsvc.vocab import Op, RunStatus, UnitStatus

metadata = MetaData(
    naming_convention={
        "ix": "ix_%(table_name)s_%(column_0_N_name)s",
        "uq": "uq_%(table_name)s_%(column_0_N_name)s",
        "ck": "ck_%(table_name)s_%(constraint_name)s",
        "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
        "pk": "pk_%(table_name)s",
    }
)

TZ = TIMESTAMP(timezone=True)

# The words of syncsvc/vocab.py, in their order (the migrations' check constraints hold it), as
# plain strings: a member's repr is not its SQL literal.
RUN_STATUSES = tuple(s.value for s in RunStatus)
FETCH_STATUSES = tuple(s.value for s in UnitStatus)
CONSUMER_STATUSES = ("active", "failing", "paused")
ENVELOPES = ("syncsvc", "debezium")
OPS = tuple(op.value for op in Op)
ENTITIES = tuple(r.entity for r in RESOURCES)


def _in(column: str, values: tuple[str, ...]) -> str:
    return f"{column} IN ({', '.join(repr(v) for v in values)})"


def _account() -> Column[Any]:
    # Migration 0007 (many accounts). The server default is the implicit account's name: rows
    # from before the migration (and a hand-written row) belong to it; syncsvc's own writers
    # always name the account.
    return Column(
        "account",
        Text,
        nullable=False,
        server_default=DEFAULT_ACCOUNT,
        comment="the account (settings: [[account]] name) the row belongs to",
    )


runs = Table(
    "runs",
    metadata,
    Column("id", BigInteger, Identity(), primary_key=True),
    Column("started_at", TZ, nullable=False, server_default=text("now()")),
    Column("finished_at", TZ),
    Column("status", Text, nullable=False, server_default="running"),
    Column("environment", Text, nullable=False),
    Column("api_host", Text, comment="host of the base URL; never the token"),
    Column("trigger", Text, nullable=False, server_default="run"),
    Column("options", JSONB, nullable=False, server_default=text("'{}'::jsonb")),
    Column("units_total", Integer, nullable=False, server_default="0"),
    Column("units_failed", Integer, nullable=False, server_default="0"),
    Column("units_held", Integer, nullable=False, server_default="0"),
    Column("records", BigInteger, nullable=False, server_default="0"),
    Column("bytes", BigInteger, nullable=False, server_default="0"),
    Column("inserted", BigInteger, nullable=False, server_default="0"),
    Column("updated", BigInteger, nullable=False, server_default="0"),
    Column("deleted", BigInteger, nullable=False, server_default="0"),
    Column("rekeyed", BigInteger, nullable=False, server_default="0"),
    Column("error_code", Integer),
    Column("error_message", Text),
    Column("hostname", Text),
    Column("pid", Integer),
    _account(),
    CheckConstraint(_in("status", RUN_STATUSES), name="status"),
    CheckConstraint(_in("environment", ("uat", "production")), name="environment"),
)

fetches = Table(
    "fetches",
    metadata,
    Column("id", BigInteger, Identity(), primary_key=True),
    Column("run_id", BigInteger, ForeignKey("runs.id", ondelete="CASCADE"), nullable=False),
    Column("resource", Text, nullable=False),
    Column("entity", Text, nullable=False),
    Column("scope", Text, nullable=False, comment="'all' or one event GUID"),
    Column("status", Text, nullable=False, server_default="pending"),
    Column("started_at", TZ),
    Column("finished_at", TZ),
    Column("attempts", Integer, nullable=False, server_default="0"),
    Column("http_status", Integer),
    Column("bytes", BigInteger, nullable=False, server_default="0"),
    Column("records", BigInteger, nullable=False, server_default="0"),
    Column(
        "rejected",
        BigInteger,
        nullable=False,
        server_default="0",
        comment="records without their key: counted, never stored",
    ),
    Column("duplicates", BigInteger, nullable=False, server_default="0"),
    Column("inserted", BigInteger, nullable=False, server_default="0"),
    Column("updated", BigInteger, nullable=False, server_default="0"),
    Column("deleted", BigInteger, nullable=False, server_default="0"),
    Column("rekeyed", BigInteger, nullable=False, server_default="0"),
    Column("fetch_seconds", Double),
    Column("stage_seconds", Double),
    Column("apply_seconds", Double),
    Column("error_code", Integer),
    Column("error_message", Text),
    Column("details", JSONB, nullable=False, server_default=text("'{}'::jsonb")),
    _account(),
    CheckConstraint(_in("status", FETCH_STATUSES), name="status"),
    Index(None, "run_id"),
)


def _column_type(kind: FieldKind) -> Any:
    types: dict[FieldKind, Any] = {
        FieldKind.TEXT: Text(),
        FieldKind.INT: BigInteger(),
        FieldKind.DATE: Date(),
        FieldKind.DATETIME: TIMESTAMP(timezone=True),
        FieldKind.REFS: ARRAY(Text),
        FieldKind.CUSTOM: JSONB(),
    }
    return types[kind]


def _state_table(resource: Resource) -> Table:
    """A current-state table: the catalog's fields plus soft delete, row hash and run marks."""
    key_columns = (
        ["event_guid"] if not resource.per_event else ["event_guid", resource.key_field.column]
    )
    columns = [
        Column(f.column, _column_type(f.kind), nullable=f.column not in key_columns)
        for f in resource.fields
    ]
    table = Table(
        resource.table,
        metadata,
        *columns,
        Column("extras", JSONB, comment="elements the catalog does not know, kept verbatim"),
        Column("row_hash", LargeBinary, nullable=False, comment="hash of the normalized record"),
        # Run marks carry no foreign key: a unit writes up to a million rows, and a key would
        # cost one lookup in `runs` per row and per mark (measured: most of an initial load).
        Column("first_seen_run", BigInteger, nullable=False),
        Column(
            "last_stored_run",
            BigInteger,
            nullable=False,
            comment="last run that stored its values (insert, update, rekey)",
        ),
        Column("last_changed_run", BigInteger, nullable=False),
        Column("deleted_at", TZ, comment="soft delete: set when a complete dump lacks the record"),
        Column("deleted_run", BigInteger),
        _account(),
        # The account, then eventGUID first: a per-event unit reads its event's rows through the
        # key's prefix, and two accounts may hold the same event GUID without meeting.
        PrimaryKeyConstraint("account", *key_columns),
    )
    if resource.has_client_id:
        Index(
            None,
            table.c.account,
            table.c.event_guid,
            table.c.client_id,
            postgresql_where=table.c.client_id.isnot(None),
        )
    return table


state_tables: dict[str, Table] = {r.entity: _state_table(r) for r in RESOURCES}
events = state_tables["event"]
users = state_tables["user"]
sessions = state_tables["session"]
exhibitors = state_tables["exhibitor"]

consumers = Table(
    "consumers",
    metadata,
    Column("name", Text, primary_key=True),
    Column(
        "cursor",
        BigInteger,
        nullable=False,
        server_default="0",
        comment="the last acknowledged seq: everything up to it was delivered",
    ),
    Column(
        "filters",
        JSONB,
        nullable=False,
        server_default=text("'{}'::jsonb"),
        comment="entity, op, event, environment, account: each a list; absent means all",
    ),
    Column("webhook_url", Text, comment="null for a pull consumer"),
    Column("status", Text, nullable=False, server_default="active"),
    Column("last_error", Text),
    Column("failing_since", TZ),
    Column("last_delivered_at", TZ),
    Column("created_at", TZ, nullable=False, server_default=text("now()")),
    Column("updated_at", TZ, nullable=False, server_default=text("now()")),
    # Migration 0004 (the change feed).
    Column(
        "secret_file",
        Text,
        comment="path of the file holding the webhook signing secret; never the secret",
    ),
    Column("envelope", Text, nullable=False, server_default="syncsvc"),
    Column("batch_size", Integer, comment="null: SYNCSVC_WEBHOOK_BATCH_SIZE"),
    Column(
        "inflight_until",
        BigInteger,
        comment="the last seq of the batch being delivered; null between batches",
    ),
    CheckConstraint(_in("status", CONSUMER_STATUSES), name="status"),
    CheckConstraint(_in("envelope", ENVELOPES), name="envelope"),
)

changes = Table(
    "changes",
    metadata,
    Column(
        "seq",
        BigInteger,
        primary_key=True,
        autoincrement=False,
        comment="strictly increasing in commit order; allocated under an advisory lock",
    ),
    # No foreign keys (migration 0002): a key is checked row by row, and an initial load writes
    # a million change rows. The writer takes both ids from rows it created first.
    Column("run_id", BigInteger, nullable=False),
    Column("fetch_id", BigInteger),
    Column("entity", Text, nullable=False),
    Column("event_guid", Text, nullable=False),
    Column("record_key", Text, nullable=False),
    Column("client_id", Text),
    Column("op", Text, nullable=False),
    Column("changed_fields", ARRAY(Text), nullable=False, server_default=text("'{}'::text[]")),
    Column("before", JSONB),
    Column("after", JSONB),
    Column("source_modified_at", TZ),
    Column("captured_at", TZ, nullable=False, server_default=text("now()")),
    _account(),
    CheckConstraint(_in("op", OPS), name="op"),
    CheckConstraint(_in("entity", ENTITIES), name="entity"),
    Index(None, "run_id"),
    # Covering (migration 0005): the history views bound each version from this index alone.
    # The entity leads (each view reads one), then the record's identity, account first
    # (migration 0007): a version is one account's.
    Index(
        None,
        "entity",
        "account",
        "event_guid",
        "record_key",
        "seq",
        postgresql_include=["op", "captured_at"],
    ),
    Index(
        "ix_changes_rekeys",
        "entity",
        "account",
        "event_guid",
        postgresql_where=text("op = 'rekey'"),
    ),
)

# The shared rate budget (migration 0008; syncsvc/store/ratebudget.py, whose SQL functions the
# migration creates): one row per API token, one lease per request in flight.
rate_budget = Table(
    "rate_budget",
    metadata,
    Column(
        "token_key",
        Text,
        primary_key=True,
        comment="HMAC-SHA256 of the API token keyed by rate_budget_salt; never the token",
    ),
    Column("configured", Integer, nullable=False, comment="request starts per period, as set"),
    Column("rate_limit", Integer, nullable=False, comment="starts per period now (halved on 429)"),
    Column("rate_period", Double, nullable=False, comment="seconds"),
    Column("max_in_flight", Integer, nullable=False),
    Column(
        "starts",
        ARRAY(Double),
        nullable=False,
        server_default=text("'{}'::double precision[]"),
        comment="the last `configured` granted start times (epoch seconds), sorted",
    ),
    Column("paused_until", Double, nullable=False, server_default="0", comment="epoch seconds"),
    Column("successes", Integer, nullable=False, server_default="0"),
    CheckConstraint("configured >= 1 AND rate_limit >= 1 AND max_in_flight >= 1", name="positive"),
)

rate_budget_lease = Table(
    "rate_budget_lease",
    metadata,
    Column("id", BigInteger, Identity(), primary_key=True),
    Column(
        "token_key",
        Text,
        ForeignKey("rate_budget.token_key", ondelete="CASCADE"),
        nullable=False,
    ),
    Column("holder", Text, nullable=False, comment="host:pid:random of the process holding it"),
    Column(
        "expires",
        Double,
        nullable=False,
        comment="epoch seconds; the holder's heartbeat pushes it on while the request runs",
    ),
    Index(None, "token_key", "expires"),
)

rate_budget_salt = Table(
    "rate_budget_salt",
    metadata,
    Column("one", Boolean, primary_key=True, server_default=text("true")),
    Column("salt", Text, nullable=False, comment="random, made by the first process to need it"),
    CheckConstraint("one", name="one_row"),
)
