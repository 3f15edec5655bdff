"""Property: the change log is exact (against an oracle of docs/design.md's change semantics) and
replaying it in seq order reproduces the current state, over random snapshot sequences."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from syncsvc.catalog import BY_ENTITY, CUSTOM_PREFIX, USERS, FieldKind
from syncsvc.records import EXTRAS, EXTRAS_PREFIX, from_typed
from syncsvc.store.read import ChangeRow, live_records, read_changes
from syncsvc.store.runs import create_run
from syncsvc.store.unit import HoldPolicy, apply_records

pytestmark = pytest.mark.db

Key = tuple[str, str]
Typed = dict[str, Any]
NO_HOLD = HoldPolicy(ratio=1.0, min_rows=10**9)
EVENTS = ["E1", "E2"]
T = [dt.datetime(2026, 5, 1, tzinfo=dt.UTC), dt.datetime(2026, 5, 2, 8, 30, tzinfo=dt.UTC)]


def _mapping_diff(prefix: str, a: dict[str, str] | None, b: dict[str, str] | None) -> set[str]:
    a, b = a or {}, b or {}
    return {prefix + k for k in a.keys() | b.keys() if a.get(k) != b.get(k)}


def changed_fields(a: Typed, b: Typed) -> frozenset[str]:
    """docs/design.md: API names of differing fields; custom.<code>; extras.<name>."""
    out: set[str] = set()
    for f in USERS.fields:
        if f.kind is FieldKind.CUSTOM:
            out |= _mapping_diff(CUSTOM_PREFIX, a[f.api], b[f.api])
        elif a[f.api] != b[f.api]:
            out.add(f.api)
    out |= _mapping_diff(EXTRAS_PREFIX, a.get(EXTRAS), b.get(EXTRAS))
    return frozenset(out)


def oracle(before: dict[Key, Typed], after: dict[Key, Typed]) -> set[tuple[Any, ...]]:
    """Expected (event, key, op, changed_fields, old_key) per docs/design.md "Change records"."""
    out: set[tuple[Any, ...]] = set()
    vanished = [k for k in before if k not in after]
    born = [k for k in after if k not in before]
    for k in after.keys() & before.keys():
        if after[k] != before[k]:
            out.add((*k, "update", changed_fields(before[k], after[k]), None))

    def by_client(keys: list[Key], state: dict[Key, Typed]) -> dict[tuple[str, str], list[Key]]:
        groups: dict[tuple[str, str], list[Key]] = {}
        for k in keys:
            if (c := state[k]["clientID"]) is not None:
                groups.setdefault((k[0], c), []).append(k)
        return groups

    old_groups, new_groups = by_client(vanished, before), by_client(born, after)
    paired_old: set[Key] = set()
    paired_new: set[Key] = set()
    for ec, olds in old_groups.items():
        news = new_groups.get(ec, [])
        if len(olds) == 1 and len(news) == 1:
            (o,), (n,) = olds, news
            paired_old.add(o)
            paired_new.add(n)
            out.add((*n, "rekey", changed_fields(before[o], after[n]), o[1]))
    for k in vanished:
        if k not in paired_old:
            out.add((*k, "delete", frozenset(), None))
    for k in born:
        if k not in paired_new:
            out.add((*k, "insert", frozenset(), None))
    return out


def observed(changes: list[ChangeRow]) -> set[tuple[Any, ...]]:
    out = set()
    for c in changes:
        old_key = c.before["userRef"] if c.op == "rekey" and c.before else None
        out.add((c.event_guid, c.record_key, c.op, c.changed_fields, old_key))
    return out


def replay(changes: list[ChangeRow]) -> dict[Key, Typed]:
    """Apply the change log (one entity's) in seq order to an empty state."""
    state: dict[Key, Typed] = {}
    for c in sorted(changes, key=lambda c: c.seq):
        key = (c.event_guid, c.record_key)
        key_field = BY_ENTITY[c.entity].key
        if c.op == "insert":
            assert key not in state
            assert c.after is not None
            state[key] = c.after
        elif c.op == "update":
            assert state[key] == c.before
            assert c.after is not None
            state[key] = c.after
        elif c.op == "delete":
            assert state.pop(key) == c.before
        else:
            assert c.before is not None
            assert c.after is not None
            assert state.pop((c.event_guid, c.before[key_field])) == c.before
            assert key not in state
            state[key] = c.after
    return state


user_records = st.fixed_dictionaries(
    {
        "eventGUID": st.sampled_from(EVENTS),
        "userRef": st.sampled_from([f"U{i}" for i in range(8)]),
        "clientID": st.sampled_from([None, "C0", "C1", "C2", "C3"]),
        "firstName": st.sampled_from([None, "Ada", "Bob"]),
        "city": st.sampled_from([None, "Oslo"]),
        "lastModified": st.sampled_from(T),
        "registrationDate": st.sampled_from([None, T[0]]),
        "customFields": st.none()
        | st.dictionaries(
            st.sampled_from(["k1", "k2", "k3"]), st.sampled_from(["1", "2"]), min_size=1
        ),
        EXTRAS: st.none()
        | st.dictionaries(st.sampled_from(["x"]), st.sampled_from(["a", "b"]), min_size=1),
    }
)


def u(ref: str, client_id: str | None, **kw: Any) -> Typed:
    return {"eventGUID": "E1", "userRef": ref, "clientID": client_id, **kw}


dumps = st.lists(st.lists(user_records, max_size=14), min_size=1, max_size=5)


async def _reset(engine: AsyncEngine) -> None:
    async with engine.begin() as conn:
        await conn.execute(text("TRUNCATE runs, fetches, changes, users RESTART IDENTITY CASCADE"))


@settings(
    max_examples=30,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(sequence=dumps)
@example(  # a rekey, a restore, a clientID shared with a surviving key, then ambiguous moves
    sequence=[
        [u("U1", "C1"), u("U2", "C2"), u("U3", None)],
        [u("U9", "C1"), u("U2", "C2")],
        [u("U9", "C1"), u("U2", "C2"), u("U3", None), u("U4", "C2")],
        [u("U3", None), u("U5", "C2"), u("U6", "C2"), u("U7", "C1", city="Oslo")],
    ]
)
async def test_change_log_is_exact_and_replays_to_the_current_state(
    engine: AsyncEngine, sequence: list[list[Typed]]
) -> None:
    await _reset(engine)
    expected_state: dict[Key, Typed] = {}
    seq = 0
    for dump in sequence:
        after: dict[Key, Typed] = {}
        for rec in dump:  # duplicate keys inside one dump: last wins
            full = from_typed("user", rec)
            typed = {f.api: full[i] for i, f in enumerate(USERS.fields)}
            typed[EXTRAS] = full.extras
            after[(rec["eventGUID"], rec["userRef"])] = typed
        run_id = await create_run(engine)
        await apply_records(
            engine,
            run_id=run_id,
            resource="user",
            scope="all",
            records=[from_typed("user", r) for r in dump],
            covered_events=EVENTS,
            hold=NO_HOLD,
        )
        step = await read_changes(engine, after_seq=seq)
        assert observed(step) == oracle(expected_state, after)
        assert [c.seq for c in step] == list(range(seq + 1, seq + 1 + len(step)))
        seq += len(step)
        expected_state = after
        assert await live_records(engine, "user") == expected_state
    assert replay(await read_changes(engine)) == expected_state
