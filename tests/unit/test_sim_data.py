"""The simulator's data model: deterministic, cheap for any day, realistic, honouring its rates."""

from __future__ import annotations

import collections
import hashlib
import statistics
import subprocess
import sys
from datetime import UTC, datetime
from typing import Any

import pytest

from syncsvc import catalog
from syncsvc.simulator import SimConfig, Universe
from syncsvc.simulator.data import Population
from syncsvc.simulator.server import Stats

SMALL = SimConfig(
    seed=21, events=5, users_per_event=30, sessions_per_event=6, exhibitors_per_event=4
)

DIGEST_SCRIPT = """
import hashlib
from syncsvc.simulator import SimConfig, Universe
u = Universe(SimConfig(seed=21, events=5, users_per_event=30, sessions_per_event=6,
                       exhibitors_per_event=4))
h = hashlib.sha256()
for entity in ("event", "user", "session", "exhibitor"):
    for rec in u.records(entity, 3):
        h.update(repr(sorted(rec.items())).encode())
print(h.hexdigest())
"""


def digest(universe: Universe, day: int) -> str:
    h = hashlib.sha256()
    for entity in ("event", "user", "session", "exhibitor"):
        for rec in universe.records(entity, day):
            h.update(repr(sorted(rec.items())).encode())
    return h.hexdigest()


def test_a_days_state_does_not_depend_on_the_order_days_are_asked_for() -> None:
    forward, backward = Universe(SMALL), Universe(SMALL)
    ahead = {d: forward.snapshot(d) for d in range(6)}
    behind = {d: backward.snapshot(d) for d in reversed(range(6))}
    assert ahead == behind
    assert ahead[0] != ahead[5]


@pytest.mark.parametrize("hash_seed", ["0", "12345"])
def test_the_data_is_the_same_in_another_process_whatever_pythonhashseed(hash_seed: str) -> None:
    out = subprocess.run(
        [sys.executable, "-c", DIGEST_SCRIPT],
        env={"PYTHONHASHSEED": hash_seed, "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        check=True,
    )
    assert out.stdout.strip() == digest(Universe(SMALL), 3)


def test_a_far_day_is_computed_without_replaying_the_days_before(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    calls = collections.Counter[int]()
    real = Population._raw

    def counting(self: Population, slot: int, birth: int, h: int, day: int) -> Any:
        calls[day] += 1
        return real(self, slot, birth, h, day)

    monkeypatch.setattr(Population, "_raw", counting)
    universe = Universe(SimConfig(seed=2, events=2, users_per_event=50, new_event_every=0))
    users = list(universe.records("user", 5000))
    assert users
    # Only day 5000 was ever built, once per live user (sessions would add speaker look-ups).
    assert set(calls) == {5000}
    assert calls[5000] == len(users)


def test_a_few_events_are_large_and_many_are_small() -> None:
    universe = Universe(SimConfig(seed=1, events=16, users_per_event=100))
    sizes = collections.Counter(r["eventGUID"] for r in universe.records("user", 0))
    assert len(sizes) == 16
    assert max(sizes.values()) >= 3 * statistics.median(sizes.values())
    assert 0.8 * 1600 <= sum(sizes.values()) <= 1.2 * 1600


def test_daily_change_rates_are_honoured() -> None:
    cfg = SimConfig(seed=5, events=4, users_per_event=2500, new_event_every=0, event_days=1000)
    universe = Universe(cfg)
    live = sum(1 for _ in universe.records("user", 10))
    ops = collections.Counter(c.op for c in universe.expected_changes(10, 11) if c.entity == "user")
    assert ops["delete"] == pytest.approx(cfg.delete_rate * live, rel=0.5)
    assert ops["insert"] == pytest.approx(cfg.insert_rate * live, rel=0.5)
    assert ops["update"] == pytest.approx(cfg.update_rate * live, rel=0.5)
    assert ops["rekey"] == pytest.approx(cfg.recreate_rate * cfg.client_id_share * live, rel=0.6)


def test_events_never_vanish_new_ones_appear_and_old_ones_end() -> None:
    cfg = SimConfig(seed=8, events=4, new_event_every=5, event_days=10)
    universe = Universe(cfg)
    previous: dict[str, dict[str, Any]] = {}
    for day in range(40):
        events = {e["eventGUID"]: e for e in universe.records("event", day)}
        assert previous.keys() <= events.keys()
        assert len(events) == cfg.events + day // cfg.new_event_every
        for guid, before in previous.items():
            if before["status"] == "Completed":
                assert events[guid]["status"] == "Completed"
        previous = events
    assert collections.Counter(e["status"] for e in previous.values())["Completed"] >= 2


def test_typed_records_follow_the_contract() -> None:
    universe = Universe(SMALL)
    for entity in ("event", "user", "session", "exhibitor"):
        resource = catalog.BY_ENTITY[entity]
        records = list(universe.records(entity, 2))
        assert records
        keys = [(r["eventGUID"], r[resource.key]) for r in records]
        assert len(keys) == len(set(keys))
        if resource.has_client_id:
            cids = [(r["eventGUID"], r["clientID"]) for r in records if r["clientID"]]
            assert len(cids) == len(set(cids)), "clientID is unique per event"
            assert len(cids) < len(records), "some records have no clientID"
        for rec in records:
            assert list(rec) == [*resource.field_names, "extras"]
            assert rec["extras"] is None
            assert "userKey" not in rec
            for f in resource.fields:
                value = rec[f.api]
                if value is None:
                    continue
                if f.kind is catalog.FieldKind.TEXT:
                    assert isinstance(value, str)
                    assert value
                    assert value == value.strip()
                elif f.kind is catalog.FieldKind.DATETIME:
                    assert isinstance(value, datetime)
                    assert value.utcoffset() == UTC.utcoffset(None)
                elif f.kind in (catalog.FieldKind.REFS, catalog.FieldKind.CUSTOM):
                    assert value
                elif f.kind is catalog.FieldKind.INT:
                    assert isinstance(value, int)


def test_custom_fields_carry_value_ids_for_constraint_fields_and_free_text_for_other() -> None:
    users = list(Universe(SMALL).records("user", 0))
    custom = [u["customFields"] for u in users]
    for code in catalog.CONSTRAINT_FIELDS:
        values = [c[code] for c in custom if code in c]
        assert values, f"no user carries {code}"
        assert all(v.isdigit() for v in values)
    others = [c["hearAbout_other"] for c in custom if "hearAbout_other" in c]
    assert others
    assert any(" " in o for o in others)


def test_speakers_and_contacts_are_users_of_the_same_event_alive_that_day() -> None:
    universe = Universe(SimConfig(seed=3, events=3, users_per_event=20, recreate_rate=0.2))
    for day in (0, 4, 9):
        users = {(u["eventGUID"], u["userRef"]) for u in universe.records("user", day)}
        refs = [
            (rec["eventGUID"], ref)
            for entity, field in (("session", "speakers"), ("exhibitor", "contacts"))
            for rec in universe.records(entity, day)
            for ref in rec[field] or ()
        ]
        assert refs
        assert set(refs) <= users


def test_stats_peak_starts_is_the_most_starts_in_any_one_second_window() -> None:
    stats = Stats()
    for t in (0.0, 0.5, 0.9, 1.2, 2.5, 2.6, 3.4, 3.45, 3.5):
        stats.started("userData.do", t)
        stats.finished()
    # (0.0, 0.5, 0.9) and (2.5, 2.6, 3.4, 3.45) -> 4 within [2.5, 3.5): 3.5 - 2.5 is not < 1.
    assert stats.peak_starts == 4
    assert stats.peak_concurrency == 1
    assert stats.requests == {"userData.do": 9}
