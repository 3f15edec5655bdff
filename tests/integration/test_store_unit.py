"""UnitWriter on a real PostgreSQL: ops, changed_fields, images, idempotence, incomplete, hold."""

from __future__ import annotations

import datetime as dt
from collections.abc import AsyncIterator
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from syncsvc.errors import IncompleteDumpError
from syncsvc.records import Record, from_typed
from syncsvc.store.read import live_records, read_changes
from syncsvc.store.runs import create_fetch, create_run
from syncsvc.store.schema import fetches, users
from syncsvc.store.unit import HoldPolicy, UnitWriter, apply_records

pytestmark = pytest.mark.db

T0 = dt.datetime(2026, 5, 1, 10, 0, tzinfo=dt.UTC)
NO_HOLD = HoldPolicy(ratio=1.0, min_rows=10**9)


def user(ref: str, event: str = "E1", client_id: str | None = None, **kw: Any) -> Record:
    typed: dict[str, Any] = {
        "userRef": ref,
        "eventGUID": event,
        "clientID": client_id,
        "firstName": f"First {ref}",
        "lastName": "Last",
        "lastModified": T0,
        "customFields": {"type_business": "govt"},
    }
    typed.update(kw)
    return from_typed("user", typed)


async def sync(
    engine: AsyncEngine, records: list[Record], scope: str = "E1", **kw: Any
) -> tuple[int, Any]:
    run_id = await create_run(engine)
    kw.setdefault("hold", NO_HOLD)
    result = await apply_records(
        engine, run_id=run_id, resource="user", scope=scope, records=records, **kw
    )
    return run_id, result


async def test_first_snapshot_inserts_every_record_with_after_images(engine: AsyncEngine) -> None:
    run_id, result = await sync(engine, [user("U1", client_id="C1"), user("U2")])
    assert (result.inserted, result.updated, result.deleted, result.rekeyed) == (2, 0, 0, 0)
    assert (result.first_seq, result.last_seq) == (1, 2)
    changes = await read_changes(engine)
    assert [(c.op, c.record_key, c.changed_fields) for c in changes] == [
        ("insert", "U1", frozenset()),
        ("insert", "U2", frozenset()),
    ]
    first = changes[0]
    assert first.run_id == run_id
    assert first.client_id == "C1"
    assert first.before is None
    assert first.after is not None
    assert first.after["firstName"] == "First U1"
    assert first.after["customFields"] == {"type_business": "govt"}
    assert first.after["lastModified"] == T0
    assert first.source_modified_at == T0
    state = await live_records(engine, "user")
    assert set(state) == {("E1", "U1"), ("E1", "U2")}


async def test_same_snapshot_twice_emits_nothing_the_second_time(engine: AsyncEngine) -> None:
    snapshot = [user(f"U{i}", client_id=f"C{i}") for i in range(50)]
    await sync(engine, snapshot)
    before = await read_changes(engine)
    _, result = await sync(engine, list(reversed(snapshot)))
    assert result.changes == 0
    assert result.first_seq is None
    assert await read_changes(engine) == before


async def test_update_names_exactly_the_changed_fields(engine: AsyncEngine) -> None:
    await sync(engine, [user("U1", customFields={"a": "1", "b": "2", "c": "3"})])
    later = T0 + dt.timedelta(hours=1)
    _, result = await sync(
        engine,
        [user("U1", city="Oslo", lastModified=later, customFields={"a": "1", "b": "9", "d": "4"})],
    )
    assert result.updated == 1
    (change,) = await read_changes(engine, after_seq=1)
    assert change.op == "update"
    assert change.changed_fields == {"city", "lastModified", "custom.b", "custom.c", "custom.d"}
    assert change.before is not None
    assert change.after is not None
    assert change.before["city"] is None
    assert change.after["city"] == "Oslo"
    assert change.source_modified_at == later


async def test_value_change_without_last_modified_moving_is_an_update(engine: AsyncEngine) -> None:
    await sync(engine, [user("U1")])
    await sync(engine, [user("U1", email="a@b.c")])
    (change,) = await read_changes(engine, after_seq=1)
    assert (change.op, change.changed_fields) == ("update", frozenset({"email"}))


async def test_extras_changes_are_named_extras_dot_name(engine: AsyncEngine) -> None:
    await sync(engine, [user("U1", extras={"badge": "red"})])
    await sync(engine, [user("U1", extras={"badge": "blue", "vip": "y"})])
    (change,) = await read_changes(engine, after_seq=1)
    assert change.changed_fields == {"extras.badge", "extras.vip"}


async def test_delete_restore_delete_soft_deletes_without_duplicates(engine: AsyncEngine) -> None:
    await sync(engine, [user("U1"), user("U2")])
    await sync(engine, [user("U1")])
    await sync(engine, [user("U1"), user("U2", city="Back")])
    await sync(engine, [user("U1")])
    ops = [(c.op, c.record_key) for c in await read_changes(engine, after_seq=2)]
    assert ops == [("delete", "U2"), ("insert", "U2"), ("delete", "U2")]
    async with engine.connect() as conn:
        rows = (await conn.execute(sa.select(users).where(users.c.user_ref == "U2"))).all()
    assert len(rows) == 1
    assert rows[0].deleted_at is not None
    assert rows[0].city == "Back"
    assert set(await live_records(engine, "user")) == {("E1", "U1")}


async def test_delete_change_carries_the_before_image_and_client_id(engine: AsyncEngine) -> None:
    await sync(engine, [user("U1", client_id="C1"), user("U2")])
    run_id, _ = await sync(engine, [user("U2")])
    (change,) = await read_changes(engine, after_seq=2)
    assert (change.op, change.record_key, change.client_id) == ("delete", "U1", "C1")
    assert change.after is None
    assert change.before is not None
    assert change.before["firstName"] == "First U1"
    async with engine.connect() as conn:
        row = (await conn.execute(sa.select(users).where(users.c.user_ref == "U1"))).one()
    assert row.deleted_run == run_id


async def test_client_id_moving_to_a_new_user_ref_is_one_rekey(engine: AsyncEngine) -> None:
    await sync(engine, [user("U1", client_id="C1"), user("U2", client_id="C2")])
    await sync(
        engine, [user("U9", client_id="C1", firstName="First U1"), user("U2", client_id="C2")]
    )
    (change,) = await read_changes(engine, after_seq=2)
    assert change.op == "rekey"
    assert change.record_key == "U9"
    assert change.client_id == "C1"
    assert change.changed_fields == {"userRef"}
    assert change.before is not None
    assert change.before["userRef"] == "U1"
    assert change.after is not None
    assert change.after["userRef"] == "U9"
    assert set(await live_records(engine, "user")) == {("E1", "U9"), ("E1", "U2")}


async def test_ambiguous_client_id_moves_fall_back_to_delete_and_insert(
    engine: AsyncEngine,
) -> None:
    # Two new keys carry C1: ambiguous.
    await sync(engine, [user("U1", client_id="C1")])
    await sync(engine, [user("U8", client_id="C1"), user("U9", client_id="C1")])
    ops = sorted((c.op, c.record_key) for c in await read_changes(engine, after_seq=1))
    assert ops == [("delete", "U1"), ("insert", "U8"), ("insert", "U9")]
    # Two vanished keys carried C5: ambiguous too.
    await sync(engine, [user("U1", client_id="C5"), user("U2", client_id="C5")])
    seq = (await read_changes(engine))[-1].seq
    await sync(engine, [user("U3", client_id="C5")])
    ops = sorted((c.op, c.record_key) for c in await read_changes(engine, after_seq=seq))
    assert ops == [("delete", "U1"), ("delete", "U2"), ("insert", "U3")]


async def test_rekey_does_not_cross_events(engine: AsyncEngine) -> None:
    await sync(engine, [user("U1", "E1", client_id="C1")], scope="all")
    await sync(engine, [user("U9", "E2", client_id="C1")], scope="all", covered_events=["E1", "E2"])
    ops = sorted((c.op, c.event_guid, c.record_key) for c in await read_changes(engine, 1))
    assert ops == [("delete", "E1", "U1"), ("insert", "E2", "U9")]


async def test_duplicate_keys_in_one_dump_last_wins_and_are_counted(engine: AsyncEngine) -> None:
    _, result = await sync(engine, [user("U1", city="A"), user("U2"), user("U1", city="B")])
    assert result.duplicates == 1
    assert result.records == 2
    assert result.inserted == 2
    state = await live_records(engine, "user")
    assert state[("E1", "U1")]["city"] == "B"


async def test_records_without_key_or_outside_the_event_are_rejected(engine: AsyncEngine) -> None:
    _, result = await sync(
        engine, [user("U1"), from_typed("user", {"eventGUID": "E1"}), user("U2", "E2")]
    )
    assert result.rejected == 2
    assert set(await live_records(engine, "user")) == {("E1", "U1")}


async def test_incomplete_dump_applies_nothing_and_deletes_nothing(engine: AsyncEngine) -> None:
    await sync(engine, [user(f"U{i}") for i in range(5)])
    before_changes = await read_changes(engine)
    before_state = await live_records(engine, "user")
    run_id = await create_run(engine)
    async with UnitWriter(engine, run_id=run_id, resource="user", scope="E1") as unit:
        await unit.stage_records([user("U0", city="changed")])
        with pytest.raises(IncompleteDumpError):
            await unit.apply(complete=False)
    assert await read_changes(engine) == before_changes
    assert await live_records(engine, "user") == before_state


async def test_failed_stage_then_restart_stages_only_the_second_attempt(
    engine: AsyncEngine,
) -> None:
    """A retried fetch calls the sink again: the first attempt's rows must not survive."""
    run_id = await create_run(engine)

    async def broken() -> AsyncIterator[list[Record]]:
        yield [user("U1"), user("GHOST")]
        raise IncompleteDumpError("cut short")

    async def whole() -> AsyncIterator[list[Record]]:
        yield [user("U1")]
        yield [user("U2")]

    async with UnitWriter(engine, run_id=run_id, resource="user", scope="E1", batch_rows=1) as u:
        with pytest.raises(IncompleteDumpError):
            await u.stage(broken())
        staged = await u.stage(whole())
        assert staged.records == 2
        result = await u.apply(complete=True)
    assert result.inserted == 2
    assert set(await live_records(engine, "user")) == {("E1", "U1"), ("E1", "U2")}


async def test_mass_delete_is_held_and_reported_then_override_applies(engine: AsyncEngine) -> None:
    hold = HoldPolicy(ratio=0.5, min_rows=20)
    await sync(engine, [user(f"U{i:02}") for i in range(40)])
    state = await live_records(engine, "user")
    seq = (await read_changes(engine))[-1].seq
    survivors = [user(f"U{i:02}", city="new") for i in range(15)]  # 25 of 40 gone: 62%
    run_id = await create_run(engine)
    fetch_id = await create_fetch(engine, run_id=run_id, resource="user", scope="E1")
    result = await apply_records(
        engine,
        run_id=run_id,
        fetch_id=fetch_id,
        resource="user",
        scope="E1",
        records=survivors,
        hold=hold,
    )
    assert result.status == "held"
    assert [(h.event_guid, h.live, h.deletes) for h in result.held] == [("E1", 40, 25)]
    assert result.changes == 0
    assert await read_changes(engine, seq) == []
    assert await live_records(engine, "user") == state
    async with engine.connect() as conn:
        row = (await conn.execute(sa.select(fetches).where(fetches.c.id == fetch_id))).one()
    assert row.status == "held"
    assert row.details["held"] == [{"event_guid": "E1", "live": 40, "deletes": 25}]

    _, result = await sync(engine, survivors, hold=hold, override_hold=True)
    assert result.status == "applied"
    assert (result.deleted, result.updated) == (25, 15)
    assert [h.event_guid for h in result.overridden] == ["E1"]
    assert len(await live_records(engine, "user")) == 15


async def test_deletes_at_or_below_the_threshold_apply(engine: AsyncEngine) -> None:
    hold = HoldPolicy(ratio=0.5, min_rows=20)
    await sync(engine, [user(f"U{i:02}") for i in range(40)])
    _, result = await sync(engine, [user(f"U{i:02}") for i in range(20)], hold=hold)  # 50%
    assert (result.status, result.deleted) == ("applied", 20)


async def test_small_scopes_are_never_held(engine: AsyncEngine) -> None:
    await sync(engine, [user(f"U{i}") for i in range(10)])
    _, result = await sync(engine, [], hold=HoldPolicy(ratio=0.5, min_rows=20))
    assert (result.status, result.deleted) == ("applied", 10)


async def test_event_all_holds_the_tripping_event_and_applies_the_others(
    engine: AsyncEngine,
) -> None:
    hold = HoldPolicy(ratio=0.5, min_rows=20)
    e1 = [user(f"A{i:02}", "E1") for i in range(30)]
    e2 = [user(f"B{i:02}", "E2") for i in range(30)]
    e3 = [user(f"C{i:02}", "E3") for i in range(30)]
    await sync(engine, e1 + e2 + e3, scope="all", hold=hold)
    seq = (await read_changes(engine))[-1].seq
    # E1 loses 20 of 30 (held); E2 loses 2 and gains 1; E3 is absent from the dump but covered:
    # all 30 of its rows would go (held).
    new = e1[:10] + e2[2:] + [user("B99", "E2")]
    _, result = await sync(engine, new, scope="all", hold=hold, covered_events=["E1", "E2", "E3"])
    assert result.status == "held"
    assert sorted((h.event_guid, h.live, h.deletes) for h in result.held) == [
        ("E1", 30, 20),
        ("E3", 30, 30),
    ]
    assert (result.inserted, result.deleted) == (1, 2)
    changes = await read_changes(engine, seq)
    assert {c.event_guid for c in changes} == {"E2"}
    state = await live_records(engine, "user")
    assert sum(1 for k in state if k[0] == "E1") == 30
    assert sum(1 for k in state if k[0] == "E3") == 30


async def test_event_all_without_covered_events_never_deletes_an_absent_event(
    engine: AsyncEngine,
) -> None:
    await sync(engine, [user("A1", "E1"), user("B1", "E2")], scope="all")
    _, result = await sync(engine, [user("A1", "E1")], scope="all")
    assert result.changes == 0


async def test_events_entity_is_diffed_the_same_way(engine: AsyncEngine) -> None:
    def event(guid: str, **kw: Any) -> Record:
        return from_typed(
            "event", {"eventGUID": guid, "eventName": f"Event {guid}", "status": "Active", **kw}
        )

    run_id = await create_run(engine)
    await apply_records(
        engine, run_id=run_id, resource="event.do", scope="all", records=[event("E1"), event("E2")]
    )
    await apply_records(
        engine,
        run_id=run_id,
        resource="event",
        scope="all",
        records=[event("E1", status="Completed", startDate=dt.date(2026, 5, 1)), event("E2")],
    )
    changes = await read_changes(engine, 2)
    assert [(c.entity, c.op, c.record_key, c.changed_fields) for c in changes] == [
        ("event", "update", "E1", frozenset({"status", "startDate"}))
    ]
    assert changes[0].after is not None
    assert changes[0].after["startDate"] == dt.date(2026, 5, 1)


async def test_fetch_row_records_the_unit_counts(engine: AsyncEngine) -> None:
    run_id = await create_run(engine)
    fetch_id = await create_fetch(engine, run_id=run_id, resource="userData.do", scope="E1")
    await apply_records(
        engine,
        run_id=run_id,
        fetch_id=fetch_id,
        resource="user",
        scope="E1",
        records=[user("U1"), user("U1"), user("U2"), from_typed("user", {"eventGUID": "E1"})],
    )
    async with engine.connect() as conn:
        row = (await conn.execute(sa.select(fetches).where(fetches.c.id == fetch_id))).one()
    assert (row.status, row.records, row.duplicates, row.rejected, row.inserted) == (
        "applied",
        2,
        1,
        1,
        2,
    )
    assert all(c.fetch_id == fetch_id for c in await read_changes(engine))


async def test_run_and_fetch_helpers_close_with_totals(engine: AsyncEngine) -> None:
    from syncsvc.store.runs import finish_fetch, finish_run
    from syncsvc.store.schema import runs

    run_id = await create_run(engine, environment="production", api_host="x.example")
    fetch_id = await create_fetch(engine, run_id=run_id, resource="userData.do", scope="all")
    await apply_records(
        engine,
        run_id=run_id,
        fetch_id=fetch_id,
        resource="user",
        scope="all",
        records=[user("U1"), user("U2")],
    )
    await finish_fetch(
        engine,
        fetch_id,
        status="applied",
        attempts=2,
        http_status=200,
        bytes_read=1234,
        details={"egress": "127.0.0.1"},
    )
    failed = await create_fetch(engine, run_id=run_id, resource="exhibitorData.do", scope="E9")
    await finish_fetch(engine, failed, status="failed", error_code=201, error_message="unknown")
    await finish_run(engine, run_id, status="partial")
    async with engine.connect() as conn:
        run = (await conn.execute(sa.select(runs).where(runs.c.id == run_id))).one()
        fetch = (await conn.execute(sa.select(fetches).where(fetches.c.id == fetch_id))).one()
    assert (run.status, run.units_total, run.units_failed, run.inserted, run.bytes) == (
        "partial",
        2,
        1,
        2,
        1234,
    )
    assert run.finished_at is not None
    assert (fetch.attempts, fetch.http_status, fetch.inserted) == (2, 200, 2)
    assert fetch.details["egress"] == "127.0.0.1"
    assert fetch.details["first_seq"] == 1


async def test_event_do_mass_delete_is_held_as_one_account_scope(engine: AsyncEngine) -> None:
    run_id = await create_run(engine)
    events = [from_typed("event", {"eventGUID": f"E{i:02}"}) for i in range(30)]
    await apply_records(engine, run_id=run_id, resource="event", scope="all", records=events)
    result = await apply_records(
        engine,
        run_id=run_id,
        resource="event",
        scope="all",
        records=events[:5],
        hold=HoldPolicy(ratio=0.5, min_rows=20),
    )
    assert [(h.event_guid, h.live, h.deletes) for h in result.held] == [("*", 30, 25)]
    assert len(await live_records(engine, "event")) == 30


async def test_a_dump_cut_short_leaves_the_unit_unapplied(engine: AsyncEngine) -> None:
    """The client's iterator raises (truncated body, code != 0): the error leaves the unit and
    the transaction rolls back; nothing is inserted, updated or deleted."""
    await sync(engine, [user(f"U{i}") for i in range(5)])
    before = (await read_changes(engine), await live_records(engine, "user"))
    run_id = await create_run(engine)

    async def truncated() -> AsyncIterator[list[Record]]:
        yield [user("U0", city="changed"), user("NEW")]
        raise IncompleteDumpError("body cut short")

    async def unit_of_work() -> None:
        async with UnitWriter(engine, run_id=run_id, resource="user", scope="E1") as unit:
            await unit.stage(truncated())
            await unit.apply(complete=True)  # never reached

    with pytest.raises(IncompleteDumpError):
        await unit_of_work()
    assert (await read_changes(engine), await live_records(engine, "user")) == before


async def test_rows_hashed_another_way_are_rehashed_without_a_change(engine: AsyncEngine) -> None:
    # What the first run after a row-hash change sees: every stored hash differs, no value does.
    records = [user("U1", client_id="C1"), user("U2"), user("U3")]
    await sync(engine, records)
    async with engine.begin() as conn:
        await conn.execute(sa.update(users).values(row_hash=sa.func.decode("00", "hex")))
    before = await read_changes(engine)
    _, result = await sync(engine, [*records[:2], user("U3", firstName="Changed")])
    assert (result.inserted, result.updated, result.deleted, result.rekeyed) == (0, 1, 0, 0)
    new = [c for c in await read_changes(engine) if c.seq > before[-1].seq]
    assert [(c.op, c.record_key, c.changed_fields) for c in new] == [
        ("update", "U3", frozenset({"firstName"}))
    ]
    async with engine.connect() as conn:
        stored = dict((await conn.execute(sa.select(users.c.user_ref, users.c.row_hash))).all())
    assert stored["U1"] == records[0].row_hash  # rewritten to the current hash
    assert stored["U2"] == records[1].row_hash
    # ... so the run after it compares by hash again and finds nothing.
    _, again = await sync(engine, [*records[:2], user("U3", firstName="Changed")])
    assert again.changes == 0


# --- accounts: a unit sees its own account only --------------------------------------------------


async def test_a_units_diff_deletes_rekeys_holds_and_cascades_stay_in_its_account(
    engine: AsyncEngine,
) -> None:
    from syncsvc import cascade
    from syncsvc.store import read

    def event(guid: str) -> Record:
        return from_typed("event", {"eventGUID": guid, "eventName": f"Event {guid}"})

    people = [user(f"U{i}", client_id=f"C{i}") for i in range(30)]
    runs = {}
    for account in ("a", "b"):
        runs[account] = run_id = await create_run(engine, account=account)
        await apply_records(
            engine, run_id=run_id, resource="event", scope="all", records=[event("E1")]
        )
        first = await apply_records(
            engine, run_id=run_id, resource="user", scope="E1", records=people, hold=NO_HOLD
        )
        # The same GUID and keys in the other account are no reason to skip a first load.
        assert (first.inserted, first.first_load) == (30, True)

    run_b = await create_run(engine, account="b")
    # b: a mass delete (held), then a rekey (U0 re-created as U0new), then its event vanishing.
    held = await apply_records(
        engine, run_id=run_b, resource="user", scope="E1", records=people[:2], hold=HoldPolicy()
    )
    assert held.status == "held"
    rekey = [*people[1:], user("U0new", client_id="C0")]
    moved = await apply_records(
        engine, run_id=run_b, resource="user", scope="E1", records=rekey, hold=NO_HOLD
    )
    assert (moved.rekeyed, moved.inserted, moved.deleted) == (1, 0, 0)
    await apply_records(engine, run_id=run_b, resource="event", scope="all", records=[])
    assert [str(u.scope) for u in cascade.units((await read.plan_inputs(engine, "b"))[1])] == ["E1"]
    assert cascade.units((await read.plan_inputs(engine, "a"))[1]) == []
    gone = await apply_records(
        engine, run_id=run_b, resource="user", scope="E1", records=[], hold=NO_HOLD
    )
    assert gone.deleted == 30

    # a: untouched, row for row, and no change of a's beyond its first load.
    assert set(await live_records(engine, "user", account="a")) == {
        ("E1", f"U{i}") for i in range(30)
    }
    assert await live_records(engine, "user", account="b") == {}
    a_changes = await read_changes(engine, account="a")
    assert {c.run_id for c in a_changes} == {runs["a"]}
    assert {c.op for c in a_changes} == {"insert"}
    b_ops = [c.op for c in await read_changes(engine, account="b") if c.run_id == run_b]
    assert sorted(set(b_ops)) == ["delete", "rekey"]


async def test_a_units_finished_at_is_its_end_not_its_transactions_start(
    engine: AsyncEngine,
) -> None:
    run_id = await create_run(engine)
    fetch_id = await create_fetch(engine, run_id=run_id, resource="user", scope="E1")
    async with UnitWriter(
        engine, run_id=run_id, fetch_id=fetch_id, resource="user", scope="E1"
    ) as unit:
        await unit.stage_records([user("U1"), user("U2")])
        # The unit's transaction began before this instant; its apply comes after it.
        async with engine.connect() as conn:
            between = (await conn.execute(sa.select(sa.func.clock_timestamp()))).scalar_one()
        await unit.apply(complete=True, hold=NO_HOLD)
    async with engine.connect() as conn:
        row = (await conn.execute(sa.select(fetches).where(fetches.c.id == fetch_id))).one()
    assert row.status == "applied"
    assert row.finished_at > between


async def test_plan_inputs_are_the_live_events_and_the_vanished_events_live_scopes(
    engine: AsyncEngine,
) -> None:
    from syncsvc.store import read

    def event(guid: str) -> Record:
        return from_typed("event", {"eventGUID": guid, "eventName": f"Event {guid}"})

    def session(key: str, guid: str) -> Record:
        return from_typed("session", {"sessionID": key, "eventGUID": guid, "title": key})

    for account in ("a", "b"):
        run_id = await create_run(engine, account=account)
        guids = ["E3", "E1", "E4", "E2"]
        await apply_records(
            engine,
            run_id=run_id,
            resource="event",
            scope="all",
            records=[event(g) for g in guids],
        )
        for g in guids:
            await apply_records(
                engine,
                run_id=run_id,
                resource="user",
                scope=g,
                records=[user(f"U{g}", event=g)],
            )
        for g in ("E4", "E2"):
            await apply_records(
                engine,
                run_id=run_id,
                resource="session",
                scope=g,
                records=[session(f"S{g}", g)],
            )
    # b's E2 and E4 vanish (their users and sessions are left live), a's E1.
    run_b = await create_run(engine, account="b")
    await apply_records(
        engine,
        run_id=run_b,
        resource="event",
        scope="all",
        records=[event("E1"), event("E3")],
        hold=NO_HOLD,
    )
    run_a = await create_run(engine, account="a")
    await apply_records(
        engine,
        run_id=run_a,
        resource="event",
        scope="all",
        records=[event(g) for g in ("E2", "E3", "E4")],
        hold=NO_HOLD,
    )
    for account in ("a", "b"):
        both = await read.plan_inputs(engine, account)
        assert both == await _plan_inputs_by_plain_sql(engine, account)
    guids, orphaned = await read.plan_inputs(engine, "b")
    assert guids == ["E1", "E3"]
    assert [(r.entity, g) for r, g in orphaned] == [
        ("user", "E2"),
        ("user", "E4"),
        ("session", "E2"),
        ("session", "E4"),
    ]


async def _plan_inputs_by_plain_sql(
    engine: AsyncEngine, account: str
) -> tuple[list[str], list[tuple[Any, str]]]:
    """The live events, and the (resource, event) scopes with live rows under a deleted event,
    read one query each with plain SQL."""
    from syncsvc.catalog import DATA_RESOURCES

    async with engine.connect() as conn:
        live = await conn.exec_driver_sql(
            "SELECT event_guid FROM events WHERE account = $1 AND deleted_at IS NULL"
            " ORDER BY event_guid",
            (account,),
        )
        guids = [str(g) for (g,) in live]
        orphaned = []
        for resource in DATA_RESOURCES:
            rows = await conn.exec_driver_sql(
                f"SELECT DISTINCT t.event_guid FROM {resource.table} t"
                " JOIN events e ON e.account = t.account AND e.event_guid = t.event_guid"
                " WHERE t.account = $1 AND t.deleted_at IS NULL AND e.deleted_at IS NOT NULL"
                " ORDER BY 1",
                (account,),
            )
            orphaned += [(resource, str(g)) for (g,) in rows]
    return guids, orphaned


async def test_a_unit_that_finds_nothing_changed_sends_none_of_the_diffs_later_statements(
    engine: AsyncEngine,
) -> None:
    """Most units of a quiet night: the diff's keys come back empty, so the diff table, rekeys,
    hold counts and state writes are not sent (the fetch row's step timings, which the status
    pages show, name the statements that ran), and nothing in the store moves."""

    async def unit(records: list[Record]) -> tuple[Any, dict[str, float]]:
        run_id = await create_run(engine)
        fetch_id = await create_fetch(engine, run_id=run_id, resource="user", scope="E1")
        result = await apply_records(
            engine,
            run_id=run_id,
            resource="user",
            scope="E1",
            records=records,
            fetch_id=fetch_id,
            hold=NO_HOLD,
        )
        async with engine.connect() as conn:
            details = await conn.scalar(
                sa.select(fetches.c.details).where(fetches.c.id == fetch_id)
            )
        return result, details["step_seconds"]

    async def store() -> tuple[list[Any], int]:
        async with engine.connect() as conn:
            rows = (await conn.execute(sa.text("SELECT * FROM users ORDER BY user_ref"))).all()
            seq = await conn.scalar(sa.text("SELECT coalesce(max(seq), 0) FROM changes"))
        return [tuple(r) for r in rows], int(seq)

    await sync(engine, [user("U1", client_id="C1"), user("U2")])
    night = [user("U1", client_id="C1", firstName="New"), user("U2")]
    changed, steps = await unit(night)
    assert (changed.updated, changed.first_seq is not None) == (1, True)
    assert {"diff_keys", "diff_rows", "counted"} <= steps.keys()
    before = await store()
    same, steps = await unit(night)
    assert (same.inserted, same.updated, same.deleted, same.rekeyed) == (0, 0, 0, 0)
    assert (same.status, same.first_seq, same.records) == ("applied", None, 2)
    assert "diff_keys" in steps
    assert not {"diff_rows", "counted"} & steps.keys()
    assert await store() == before
