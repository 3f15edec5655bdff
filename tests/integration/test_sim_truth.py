"""The simulator's ground truth agrees with what it serves, read by an independent parser.

Dumps are fetched over real HTTP, parsed with the standard library's xml.etree (not lxml, not
simulator code), typed and diffed here; the result must be exactly `expected_changes`.
"""

from __future__ import annotations

import collections
import xml.etree.ElementTree as ET
from datetime import UTC, date, datetime
from typing import Any

import aiohttp
import pytest

from syncsvc import catalog
from syncsvc.catalog import FieldKind
from syncsvc.simulator import ExpectedChange, RunningSimulator, SimConfig

TOKEN = "sim-account-token"

# Rates high enough that every kind of change happens within a few days on a small account.
BUSY = SimConfig(
    seed=7,
    events=3,
    users_per_event=40,
    sessions_per_event=8,
    exhibitors_per_event=6,
    update_rate=0.5,
    delete_rate=0.08,
    insert_rate=0.1,
    recreate_rate=0.15,
    restore_share=0.6,
    client_id_share=0.6,
    client_id_later_share=0.3,
    new_event_every=2,
    event_days=2,
)


# --- an independent reading of the wire --------------------------------------------------------


def _text(el: ET.Element | None) -> str | None:
    if el is None or el.text is None:
        return None
    return el.text.strip() or None


def _typed(resource: catalog.Resource, el: ET.Element) -> dict[str, Any]:
    out: dict[str, Any] = {f.api: None for f in resource.fields}
    extras: dict[str, str] = {}
    kinds = {f.api: f.kind for f in resource.fields}
    for child in el:
        name = child.tag
        kind = kinds.get(name)
        if kind is None:
            extras[name] = (child.text or "").strip()
        elif kind is FieldKind.REFS:
            refs = [t for c in child if (t := _text(c))]
            out[name] = refs or None
        elif kind is FieldKind.CUSTOM:
            custom = {c.tag: t for c in child if (t := _text(c))}
            out[name] = custom or None
        else:
            text = _text(child)
            if text is None:
                out[name] = None
            elif kind is FieldKind.INT:
                out[name] = int(text)
            elif kind is FieldKind.DATE:
                out[name] = date.fromisoformat(text)
            elif kind is FieldKind.DATETIME:
                value = datetime.fromisoformat(text)
                if value.tzinfo is None:
                    value = value.replace(tzinfo=UTC)
                out[name] = value.astimezone(UTC)
            else:
                out[name] = text
    out["extras"] = extras or None
    return out


def parse_dump(resource: catalog.Resource, body: bytes) -> list[dict[str, Any]]:
    root = ET.fromstring(body)  # noqa: S314 (our own loopback server)
    assert root.tag == "response"
    assert root.findtext("responseCode") == "0", body[:300]
    container = root.find(resource.container)
    assert container is not None
    return [_typed(resource, el) for el in container.findall(resource.record)]


async def fetch(
    session: aiohttp.ClientSession, sim: RunningSimulator, path: str, event: str | None = None
) -> bytes:
    data = {"apiToken": TOKEN}
    if event is not None:
        data["event"] = event
    async with session.post(sim.base_url + path, data=data) as resp:
        assert resp.status == 200
        return await resp.read()


async def served_snapshot(
    session: aiohttp.ClientSession, sim: RunningSimulator
) -> dict[str, dict[tuple[str, str], dict[str, Any]]]:
    """entity -> {(eventGUID, key): typed record}, exactly as a client would see the account."""
    events = parse_dump(catalog.EVENTS, await fetch(session, sim, "event.do"))
    records: dict[str, list[dict[str, Any]]] = {"event": events}
    for res in catalog.DATA_RESOURCES:
        if res.allows_event_all:
            records[res.entity] = parse_dump(res, await fetch(session, sim, res.path, "all"))
        else:
            records[res.entity] = [
                rec
                for ev in events
                for rec in parse_dump(res, await fetch(session, sim, res.path, ev["eventGUID"]))
            ]
    out: dict[str, dict[tuple[str, str], dict[str, Any]]] = {}
    for entity, recs in records.items():
        key = catalog.BY_ENTITY[entity].key
        keyed = {(r["eventGUID"], r[key]): r for r in recs}
        assert len(keyed) == len(recs), f"duplicate keys in the {entity} dump"
        out[entity] = keyed
    return out


def diff(
    entity: str,
    before: dict[tuple[str, str], dict[str, Any]],
    after: dict[tuple[str, str], dict[str, Any]],
) -> set[ExpectedChange]:
    """The change semantics of docs/design.md, written out independently of the simulator."""
    has_cid = catalog.BY_ENTITY[entity].has_client_id

    def fields(a: dict[str, Any], b: dict[str, Any]) -> frozenset[str]:
        out: set[str] = set()
        for name in a.keys() | b.keys():
            va, vb = a.get(name), b.get(name)
            if name in ("customFields", "extras"):
                prefix = "custom." if name == "customFields" else "extras."
                da, db = va or {}, vb or {}
                out |= {prefix + c for c in da.keys() | db.keys() if da.get(c) != db.get(c)}
            elif va != vb:
                out.add(name)
        return frozenset(out)

    gone = before.keys() - after.keys()
    new = after.keys() - before.keys()
    changes: set[ExpectedChange] = set()
    rekeyed_old: set[tuple[str, str]] = set()
    rekeyed_new: set[tuple[str, str]] = set()
    if has_cid:
        gone_by_cid = collections.defaultdict(list)
        new_by_cid = collections.defaultdict(list)
        for k in gone:
            if before[k]["clientID"]:
                gone_by_cid[(k[0], before[k]["clientID"])].append(k)
        for k in new:
            if after[k]["clientID"]:
                new_by_cid[(k[0], after[k]["clientID"])].append(k)
        for cid_key, olds in gone_by_cid.items():
            news = new_by_cid.get(cid_key, [])
            if len(olds) == 1 and len(news) == 1:
                old, nk = olds[0], news[0]
                rekeyed_old.add(old)
                rekeyed_new.add(nk)
                changes.add(
                    ExpectedChange(
                        entity,
                        nk[0],
                        nk[1],
                        "rekey",
                        fields(before[old], after[nk]),
                        cid_key[1],
                        old_key=old[1],
                    )
                )
    for k in gone - rekeyed_old:
        cid = before[k]["clientID"] if has_cid else None
        changes.add(ExpectedChange(entity, k[0], k[1], "delete", frozenset(), cid))
    for k in new - rekeyed_new:
        cid = after[k]["clientID"] if has_cid else None
        changes.add(ExpectedChange(entity, k[0], k[1], "insert", frozenset(), cid))
    for k in before.keys() & after.keys():
        changed = fields(before[k], after[k])
        if changed:
            cid = after[k]["clientID"] if has_cid else None
            changes.add(ExpectedChange(entity, k[0], k[1], "update", changed, cid))
    return changes


# --- the tests ---------------------------------------------------------------------------------


async def test_served_dumps_diff_to_exactly_the_ground_truths_expected_changes(
    simulator: Any,
) -> None:
    seen: list[ExpectedChange] = []
    deleted_at: dict[tuple[str, str, str], int] = {}
    restores = 0
    async with simulator(BUSY) as sim, aiohttp.ClientSession() as session:
        sim.set_day(0)
        prev = await served_snapshot(session, sim)
        assert prev == sim.universe.snapshot(0)
        for day in range(1, 7):
            sim.set_day(day)
            cur = await served_snapshot(session, sim)
            assert cur == sim.universe.snapshot(day), f"served day {day} != snapshot({day})"
            truth = sim.universe.expected_changes(day - 1, day)
            assert len(truth) == len(set(truth))
            for entity in ("event", "user", "session", "exhibitor"):
                got = diff(entity, prev[entity], cur[entity])
                want = {c for c in truth if c.entity == entity}
                assert got == want, f"{entity} {day - 1}->{day}: {got ^ want}"
            for c in truth:
                ident = (c.entity, c.event_guid, c.key)
                if c.op == "delete":
                    deleted_at[ident] = day
                elif c.op == "insert" and ident in deleted_at:
                    restores += 1
            seen.extend(truth)
            prev = cur

    ops = collections.Counter((c.entity, c.op) for c in seen)
    for entity, op in [
        ("user", "insert"),
        ("user", "update"),
        ("user", "delete"),
        ("user", "rekey"),
        ("session", "insert"),
        ("session", "update"),
        ("session", "delete"),
        ("exhibitor", "update"),
        ("exhibitor", "rekey"),
        ("event", "insert"),
        ("event", "update"),
    ]:
        assert ops[(entity, op)] > 0, f"no {entity} {op} in six busy days: {ops}"
    assert restores > 0, "no record was deleted and later restored"
    updates = [c for c in seen if c.op == "update" and c.entity == "user"]
    assert any(all(f.startswith("custom.") for f in c.changed_fields) for c in updates)
    assert any("lastModified" not in c.changed_fields for c in updates), "no silent update"
    assert any("clientID" in c.changed_fields for c in updates), "no clientID assigned later"
    rekeys = [c for c in seen if c.op == "rekey"]
    assert all(c.old_key and c.old_key != c.key and c.client_id for c in rekeys)
    assert all("userRef" in c.changed_fields for c in rekeys if c.entity == "user")
    ended = [c for c in seen if c.entity == "event" and c.op == "update"]
    assert all(c.changed_fields == {"status"} for c in ended)


async def test_same_seed_serves_byte_identical_dumps_and_another_seed_does_not(
    simulator: Any,
) -> None:
    cfg = SimConfig(seed=11, events=3, users_per_event=30, day=2)
    other = SimConfig(seed=12, events=3, users_per_event=30, day=2)
    bodies: list[list[bytes]] = []
    async with aiohttp.ClientSession() as session:
        for config in (cfg, cfg, other):
            async with simulator(config) as sim:
                guid = sim.universe.home_event().guid
                bodies.append(
                    [
                        await fetch(session, sim, "event.do"),
                        await fetch(session, sim, "userData.do", "all"),
                        await fetch(session, sim, "sessionData.do", "all"),
                        await fetch(session, sim, "exhibitorData.do", guid),
                    ]
                )
    assert bodies[0] == bodies[1]
    assert all(len(b) > 200 for b in bodies[0])
    assert bodies[0][1] != bodies[2][1]


@pytest.mark.parametrize("day", [0, 1, 2])
async def test_formatting_varies_by_day_while_the_values_do_not(simulator: Any, day: int) -> None:
    quiet = SimConfig(
        seed=3,
        events=2,
        users_per_event=20,
        update_rate=0,
        delete_rate=0,
        insert_rate=0,
        recreate_rate=0,
        client_id_later_share=0,
        new_event_every=0,
    )
    async with simulator(quiet) as sim, aiohttp.ClientSession() as session:
        sim.set_day(day)
        body = await fetch(session, sim, "userData.do", "all")
        sim.set_day(day + 1)
        next_body = await fetch(session, sim, "userData.do", "all")
    assert body != next_body
    assert parse_dump(catalog.USERS, body) == parse_dump(catalog.USERS, next_body)
