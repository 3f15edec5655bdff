"""the shared rate budget: one row per API token, one lease per request in flight, SQL functions

With `rate_budget = shared`, every process using a token takes its request starts and in-flight
places from the token's row here (syncsvc/store/ratebudget.py; the rules are those of
syncsvc/budget.py). Each step is one function call, one row lock, one short transaction:
`rate_budget_take` grants a start (or says when to ask again), `rate_budget_done` gives the
place back and wakes waiting processes (NOTIFY rate_budget), `rate_budget_backoff` pauses every
process after a refusal, `rate_budget_renew` is a holder's heartbeat. Times are the database's
clock (epoch seconds): the processes' clocks are never compared with it or with each other.

Revision ID: 0008
Revises: 0007
Create Date: 2026-11-30 23:00:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

FUNCTIONS = """
-- A success count toward the climb back to the configured rate: one step up per `rate_limit`
-- successes (AIMD), none while the rate is the configured one.
CREATE FUNCTION rate_budget_climb(_key text, _n int) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    b rate_budget;
    s int;
BEGIN
    IF _n <= 0 THEN
        RETURN;
    END IF;
    SELECT * INTO b FROM rate_budget WHERE token_key = _key FOR UPDATE;
    IF NOT FOUND OR b.rate_limit >= b.configured THEN
        RETURN;
    END IF;
    s := b.successes + _n;
    WHILE b.rate_limit < b.configured AND s >= b.rate_limit LOOP
        s := s - b.rate_limit;
        b.rate_limit := b.rate_limit + 1;
    END LOOP;
    IF b.rate_limit >= b.configured THEN
        s := 0;
    END IF;
    UPDATE rate_budget SET rate_limit = b.rate_limit, successes = s WHERE token_key = _key;
END $$;

-- One start: (lease, wait, start_at) when granted (start in `wait` seconds); (NULL, retry, NULL)
-- when the window or a pause puts the start beyond the horizon (ask again in `retry` seconds);
-- (NULL, NULL, NULL) when every in-flight place is held (a `free` NOTIFY says when one is back).
CREATE FUNCTION rate_budget_take(
    _key text, _holder text, _horizon float8, _ttl float8, _safety float8, _successes int
) RETURNS TABLE (lease_id bigint, wait float8, start_at float8)
LANGUAGE plpgsql AS $$
DECLARE
    b rate_budget;
    now_ float8;
    n int;
    k int;
    t float8;
    lid bigint;
BEGIN
    PERFORM rate_budget_climb(_key, _successes);
    SELECT * INTO b FROM rate_budget WHERE token_key = _key FOR UPDATE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'no rate budget row for this token';
    END IF;
    -- Read after the lock: a grant computed from the time the call queued would be stale.
    now_ := extract(epoch FROM clock_timestamp());
    -- Leases whose holder stopped renewing them (killed, frozen) give their places back here.
    DELETE FROM rate_budget_lease AS l WHERE l.token_key = _key AND l.expires <= now_;
    SELECT count(*) INTO n FROM rate_budget_lease AS l WHERE l.token_key = _key;
    IF n >= b.max_in_flight THEN
        RETURN QUERY SELECT NULL::bigint, NULL::float8, NULL::float8;
        RETURN;
    END IF;
    -- First come, first served: never before the last grant, so `starts` stays sorted and the
    -- window is one lookup.
    k := cardinality(b.starts);
    t := greatest(now_, b.paused_until, b.starts[k]);
    IF k >= b.rate_limit THEN
        t := greatest(t, b.starts[k - b.rate_limit + 1] + b.rate_period * _safety);
    END IF;
    IF t > now_ + _horizon THEN
        RETURN QUERY SELECT NULL::bigint, t - now_ - _horizon, NULL::float8;
        RETURN;
    END IF;
    UPDATE rate_budget
       SET starts = (starts || t)[greatest(1, k + 2 - configured):]
     WHERE token_key = _key;
    INSERT INTO rate_budget_lease (token_key, holder, expires)
    VALUES (_key, _holder, now_ + _ttl)
    RETURNING id INTO lid;
    RETURN QUERY SELECT lid, t - now_, t;
END $$;

-- The request ended: the place goes back, waiting processes hear. `_unused`: the grant's start
-- time when the start was given up (never made), so it leaves the window for someone else.
CREATE FUNCTION rate_budget_done(
    _key text, _lease_id bigint, _successes int, _unused float8
) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    i int;
BEGIN
    DELETE FROM rate_budget_lease WHERE id = _lease_id;
    IF FOUND THEN
        PERFORM pg_notify('rate_budget', 'free ' || _key);
    END IF;
    IF _unused IS NOT NULL THEN
        SELECT array_position(starts, _unused) INTO i FROM rate_budget
         WHERE token_key = _key FOR UPDATE;
        IF i IS NOT NULL THEN  -- one entry: two grants may share a time
            UPDATE rate_budget SET starts = starts[1:i - 1] || starts[i + 1:]
             WHERE token_key = _key;
        END IF;
    END IF;
    PERFORM rate_budget_climb(_key, _successes);
END $$;

-- A 429 or code 301: no start for anyone before the pause ends (at least one period); the rate
-- halves once per pause. Every process hears the pause (NOTIFY) and drops grants it holds for
-- starts inside it. Returns the pause's seconds from now, and the lowered rate if it was lowered.
CREATE FUNCTION rate_budget_backoff(_key text, _delay float8)
RETURNS TABLE (pause float8, lowered int)
LANGUAGE plpgsql AS $$
DECLARE
    b rate_budget;
    now_ float8;
    until_ float8;
    r int;
BEGIN
    SELECT * INTO b FROM rate_budget WHERE token_key = _key FOR UPDATE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'no rate budget row for this token';
    END IF;
    now_ := extract(epoch FROM clock_timestamp());
    until_ := greatest(b.paused_until, now_ + greatest(_delay, b.rate_period));
    r := b.rate_limit;
    IF now_ >= b.paused_until THEN
        r := greatest(1, b.rate_limit / 2);
    END IF;
    UPDATE rate_budget SET paused_until = until_, rate_limit = r, successes = 0
     WHERE token_key = _key;
    PERFORM pg_notify('rate_budget', 'pause ' || _key || ' ' || (until_ - now_)::text);
    RETURN QUERY SELECT until_ - now_, CASE WHEN r < b.rate_limit THEN r END;
END $$;

-- A holder's heartbeat: its leases live another `_ttl` seconds.
CREATE FUNCTION rate_budget_renew(_ids bigint[], _ttl float8) RETURNS void
LANGUAGE sql AS $$
    UPDATE rate_budget_lease SET expires = extract(epoch FROM clock_timestamp()) + _ttl
     WHERE id = ANY(_ids);
$$;
"""

FUNCTION_NAMES = (
    "rate_budget_renew(bigint[], float8)",
    "rate_budget_backoff(text, float8)",
    "rate_budget_done(text, bigint, int, float8)",
    "rate_budget_take(text, text, float8, float8, float8, int)",
    "rate_budget_climb(text, int)",
)


def upgrade() -> None:
    op.create_table(
        "rate_budget",
        sa.Column(
            "token_key",
            sa.Text(),
            nullable=False,
            comment="HMAC-SHA256 of the API token keyed by rate_budget_salt; never the token",
        ),
        sa.Column(
            "configured", sa.Integer(), nullable=False, comment="request starts per period, as set"
        ),
        sa.Column(
            "rate_limit",
            sa.Integer(),
            nullable=False,
            comment="starts per period now (halved on 429)",
        ),
        sa.Column("rate_period", sa.Double(), nullable=False, comment="seconds"),
        sa.Column("max_in_flight", sa.Integer(), nullable=False),
        sa.Column(
            "starts",
            postgresql.ARRAY(sa.Double()),
            nullable=False,
            server_default=sa.text("'{}'::double precision[]"),
            comment="the last `configured` granted start times (epoch seconds), sorted",
        ),
        sa.Column(
            "paused_until",
            sa.Double(),
            nullable=False,
            server_default="0",
            comment="epoch seconds",
        ),
        sa.Column("successes", sa.Integer(), nullable=False, server_default="0"),
        sa.CheckConstraint(
            "configured >= 1 AND rate_limit >= 1 AND max_in_flight >= 1",
            name=op.f("ck_rate_budget_positive"),
        ),
        sa.PrimaryKeyConstraint("token_key", name=op.f("pk_rate_budget")),
    )
    op.create_table(
        "rate_budget_lease",
        sa.Column("id", sa.BigInteger(), sa.Identity(), nullable=False),
        sa.Column("token_key", sa.Text(), nullable=False),
        sa.Column(
            "holder",
            sa.Text(),
            nullable=False,
            comment="host:pid:random of the process holding it",
        ),
        sa.Column(
            "expires",
            sa.Double(),
            nullable=False,
            comment="epoch seconds; the holder's heartbeat pushes it on while the request runs",
        ),
        sa.ForeignKeyConstraint(
            ["token_key"],
            ["rate_budget.token_key"],
            name=op.f("fk_rate_budget_lease_token_key_rate_budget"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_rate_budget_lease")),
    )
    op.create_index(
        op.f("ix_rate_budget_lease_token_key_expires"),
        "rate_budget_lease",
        ["token_key", "expires"],
    )
    op.create_table(
        "rate_budget_salt",
        sa.Column("one", sa.Boolean(), server_default=sa.text("true"), nullable=False),
        sa.Column(
            "salt",
            sa.Text(),
            nullable=False,
            comment="random, made by the first process to need it",
        ),
        sa.CheckConstraint("one", name=op.f("ck_rate_budget_salt_one_row")),
        sa.PrimaryKeyConstraint("one", name=op.f("pk_rate_budget_salt")),
    )
    # One statement per call: asyncpg prepares what it runs, and a prepared statement is one.
    for statement in FUNCTIONS.split("\n\n"):
        op.execute(statement)


def downgrade() -> None:
    for fn in FUNCTION_NAMES:
        op.execute(f"DROP FUNCTION {fn}")
    op.drop_table("rate_budget_salt")
    op.drop_index(op.f("ix_rate_budget_lease_token_key_expires"), table_name="rate_budget_lease")
    op.drop_table("rate_budget_lease")
    op.drop_table("rate_budget")
