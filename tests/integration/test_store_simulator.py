"""Exact against ground truth: the simulator's days 0..7, rendered as the API would serve them,
parsed with lxml, normalized, staged and applied; every step's change log equals the simulator's
expected changes and the current tables equal its snapshot."""

from __future__ import annotations

from collections import Counter
from collections.abc import AsyncIterator, Iterable, Iterator
from typing import Any

import pytest
from lxml import etree
from sqlalchemy.ext.asyncio import AsyncEngine

from syncsvc.catalog import (
    BY_ENTITY,
    ENVELOPE_CODE,
    EVENTS,
    EXHIBITORS,
    SESSIONS,
    USERS,
    Resource,
)
from syncsvc.records import Record
from syncsvc.simulator import SimConfig, Universe
from syncsvc.simulator.data import ExpectedChange
from syncsvc.simulator.render import iter_document, style_for
from syncsvc.store.read import ChangeRow, live_records, read_changes
from syncsvc.store.runs import create_run
from syncsvc.store.unit import HoldPolicy, UnitWriter
from tests.integration.test_store_replay import replay

pytestmark = pytest.mark.db

CONFIG = SimConfig(
    seed=3, events=8, users_per_event=500, sessions_per_event=250, exhibitors_per_event=150
)
DAYS = 8  # days 0..7: a new event appears on day 7


async def parse(
    resource: Resource, chunks: Iterable[bytes], normalize: Any
) -> AsyncIterator[list[Record]]:
    """A minimal streaming client loop: lxml pull parser, normalize, clear, batches; the dump is
    accepted only when the whole document parsed and responseCode is 0."""
    parser = etree.XMLPullParser(
        events=("end",), tag=(resource.record, ENVELOPE_CODE), resolve_entities=False
    )
    code = None
    batch: list[Record] = []
    for chunk in chunks:
        parser.feed(chunk)
        for _, elem in parser.read_events():
            if elem.tag == ENVELOPE_CODE:
                code = int(elem.text)
                continue
            batch.append(normalize(elem))
            elem.clear()
            while elem.getprevious() is not None:
                del elem.getparent()[0]
        if len(batch) >= 1000:
            yield batch
            batch = []
    parser.close()
    assert code == 0
    if batch:
        yield batch


async def sync_day(engine: AsyncEngine, universe: Universe, day: int) -> None:
    """One run: event.do, users and sessions with event=all, exhibitors per event."""
    run_id = await create_run(engine)
    style = style_for(CONFIG.seed, day)
    events = universe.events(day)
    guids = [ev.guid for ev in events]

    async def unit(resource: Resource, scope: str, raws: Iterator[tuple[Any, ...]]) -> None:
        async with UnitWriter(engine, run_id=run_id, resource=resource, scope=scope) as u:
            await u.stage(parse(resource, iter_document(resource, raws, style), u.normalize))
            result = await u.apply(complete=True, covered_events=guids, hold=HoldPolicy())
        assert result.held == ()
        assert result.rejected == result.duplicates == 0

    await unit(EVENTS, "all", universe.raw_records("event", day))
    for resource in (USERS, SESSIONS):
        await unit(resource, "all", universe.raw_records(resource.entity, day))
    for ev in events:
        await unit(EXHIBITORS, ev.guid, universe.raw_records("exhibitor", day, [ev]))


def observed(changes: list[ChangeRow]) -> Counter[tuple[Any, ...]]:
    out: Counter[tuple[Any, ...]] = Counter()
    for c in changes:
        old_key = c.before[BY_ENTITY[c.entity].key] if c.op == "rekey" and c.before else None
        out[
            (c.entity, c.event_guid, c.record_key, c.op, c.changed_fields, c.client_id, old_key)
        ] += 1
    return out


def expected(changes: list[ExpectedChange]) -> Counter[tuple[Any, ...]]:
    return Counter(
        (e.entity, e.event_guid, e.key, e.op, e.changed_fields, e.client_id, e.old_key)
        for e in changes
    )


async def test_every_day_matches_the_simulators_ground_truth_exactly(engine: AsyncEngine) -> None:
    universe = Universe(CONFIG)
    seq = 0
    previous: dict[str, dict[Any, Any]] = {entity: {} for entity in BY_ENTITY}
    for day in range(DAYS):
        await sync_day(engine, universe, day)
        step = await read_changes(engine, after_seq=seq)
        assert [c.seq for c in step] == list(range(seq + 1, seq + 1 + len(step)))
        seq += len(step)

        truth = expected(universe.expected_changes(day - 1, day))
        got = observed(step)
        assert got == truth, (
            f"day {day}: missing {list((truth - got).items())[:5]}, "
            f"unexpected {list((got - truth).items())[:5]}"
        )
        snapshot = universe.snapshot(day)
        for entity in BY_ENTITY:
            assert await live_records(engine, entity) == snapshot[entity], (day, entity)
        for c in step:  # images are the whole typed records of either side
            if c.after is not None:
                assert c.after == snapshot[c.entity][(c.event_guid, c.record_key)]
            if c.before is not None:
                old = c.before[BY_ENTITY[c.entity].key]
                assert c.before == previous[c.entity][(c.event_guid, old)]
        previous = snapshot
        if day == 0:
            assert len(snapshot["user"]) > 2000
            assert len(snapshot["session"]) > 1000
            assert len(snapshot["exhibitor"]) > 1000
        else:
            ops = Counter(c.op for c in step)
            assert all(ops[op] for op in ("insert", "update", "delete", "rekey")), ops

    everything = await read_changes(engine)
    for entity in BY_ENTITY:
        assert replay([c for c in everything if c.entity == entity]) == previous[entity]


async def test_the_same_day_in_another_formatting_emits_nothing(engine: AsyncEngine) -> None:
    universe = Universe(CONFIG)
    await sync_day(engine, universe, 3)
    seq = (await read_changes(engine))[-1].seq
    # Day 4's formatting (another element order, whitespace, offsets) of day 3's values.
    run_id = await create_run(engine)
    style = style_for(CONFIG.seed, 4)
    for resource in (USERS, SESSIONS):
        async with UnitWriter(engine, run_id=run_id, resource=resource, scope="all") as u:
            raws = universe.raw_records(resource.entity, 3)
            await u.stage(parse(resource, iter_document(resource, raws, style), u.normalize))
            result = await u.apply(complete=True)
        assert result.records > 1000
        assert result.changes == 0
    assert await read_changes(engine, after_seq=seq) == []


async def test_simulator_faults_duplicates_and_unknown_elements(engine: AsyncEngine) -> None:
    """Duplicated records are counted and change nothing; an unknown element the vendor adds
    becomes `extras` and an update naming extras.<name> on every record."""
    from syncsvc.simulator.render import DocFaults

    universe = Universe(CONFIG)
    await sync_day(engine, universe, 2)
    seq = (await read_changes(engine))[-1].seq
    run_id = await create_run(engine)
    style = style_for(CONFIG.seed, 2)

    async def unit(faults: DocFaults) -> Any:
        async with UnitWriter(engine, run_id=run_id, resource=SESSIONS, scope="all") as u:
            raws = universe.raw_records("session", 2)
            doc = iter_document(SESSIONS, raws, style, faults)
            await u.stage(parse(SESSIONS, doc, u.normalize))
            return await u.apply(complete=True)

    result = await unit(DocFaults(duplicates=7))
    assert (result.duplicates, result.changes) == (7, 0)
    assert await read_changes(engine, after_seq=seq) == []

    result = await unit(DocFaults(unknown_element="roomCapacity"))
    sessions = len(universe.snapshot(2)["session"])
    assert result.updated == sessions
    step = await read_changes(engine, after_seq=seq)
    assert {c.changed_fields for c in step} == {frozenset({"extras.roomCapacity"})}
    assert all(
        c.after and c.after["extras"] == {"roomCapacity": f"new-{c.record_key}"} for c in step
    )
