"""The simulator speaks the contract: envelope, scopes, tokens, the allow-list, every error code."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from typing import Any

import aiohttp
import pytest

from syncsvc import catalog
from syncsvc.simulator import SimConfig, TokenSpec
from tests.simulator_fixtures import ACCOUNT, EVENT_ONLY, non_loopback_address, post

SMALL = SimConfig(
    seed=5, events=4, users_per_event=12, sessions_per_event=4, exhibitors_per_event=3
)


@pytest.mark.parametrize("resource", catalog.RESOURCES, ids=lambda r: r.path)
async def test_success_envelope_carries_code_zero_and_catalog_records(
    simulator: Any, resource: catalog.Resource
) -> None:
    async with simulator(SMALL) as sim:
        answer = await post(sim.base_url, resource.path)
    assert answer.status == 200
    assert answer.headers["Content-Type"].startswith("application/xml")
    assert answer.body.startswith(b'<?xml version="1.0" encoding="UTF-8"?>')
    root = ET.fromstring(answer.body)  # noqa: S314 (our own loopback server)
    assert root.tag == "response"
    assert [c.tag for c in root] == ["responseCode", "responseMessage", resource.container]
    assert answer.code == 0
    records = answer.records(resource.record)
    assert records
    names = set(resource.field_names)
    for rec in records:
        assert {c.tag for c in rec} <= names
        assert rec.find("userKey") is None
        assert rec.findtext(resource.key)


async def test_data_dumps_stream_chunked(simulator: Any) -> None:
    async with simulator(SMALL) as sim:
        answer = await post(sim.base_url, "userData.do", event="all")
    assert answer.headers.get("Transfer-Encoding") == "chunked"
    assert "Content-Length" not in answer.headers


async def test_without_event_the_answer_is_the_home_events(simulator: Any) -> None:
    async with simulator(SMALL) as sim:
        home = sim.universe.home_event().guid
        answer = await post(sim.base_url, "userData.do")
        truth = list(sim.universe.records("user", 0, home))
    refs = [r.findtext("userRef") for r in answer.records("user")]
    assert refs == [r["userRef"] for r in truth]
    assert {r.findtext("eventGUID") for r in answer.records("user")} == {home}


async def test_event_all_covers_every_event_and_a_guid_selects_one(simulator: Any) -> None:
    async with simulator(SMALL) as sim:
        everything = await post(sim.base_url, "sessionData.do", event="all")
        second = sim.universe.events(0)[1].guid
        one = await post(sim.base_url, "sessionData.do", event=second.lower())
        all_truth = list(sim.universe.records("session", 0))
        one_truth = list(sim.universe.records("session", 0, second))
    assert [r.findtext("sessionID") for r in everything.records("session")] == [
        r["sessionID"] for r in all_truth
    ]
    assert len({r["eventGUID"] for r in all_truth}) == SMALL.events
    assert [r.findtext("sessionID") for r in one.records("session")] == [
        r["sessionID"] for r in one_truth
    ]


async def test_event_do_lists_every_event_for_the_account_and_only_its_own_without_access(
    simulator: Any,
) -> None:
    async with simulator(SMALL) as sim:
        account = await post(sim.base_url, "event.do")
        own = await post(sim.base_url, "event.do", token=EVENT_ONLY)
        home = sim.universe.home_event().guid
    assert len(account.records("event")) == SMALL.events
    assert [e.findtext("eventGUID") for e in own.records("event")] == [home]


@pytest.mark.parametrize("token", [None, "", "not-a-token"])
async def test_missing_or_unknown_token_is_code_101(simulator: Any, token: str | None) -> None:
    async with simulator(SMALL) as sim:
        answer = await post(sim.base_url, "userData.do", token=token)
    assert (answer.status, answer.code) == (200, 101)
    # Errors carry no payload container.
    assert ET.fromstring(answer.body).find("users") is None  # noqa: S314 (our own loopback server)


async def test_a_peer_outside_the_allow_list_gets_102_even_with_a_good_token(
    simulator: Any,
) -> None:
    async with simulator(SMALL, allow_list=["10.0.0.0/8"]) as sim:
        refused = await post(sim.base_url, "userData.do")
        await sim.control({"allow_list": ["127.0.0.1/32"]})
        allowed = await post(sim.base_url, "userData.do")
    assert refused.code == 102
    assert allowed.code == 0


async def test_event_token_without_account_access_gets_103_for_all_or_another_event(
    simulator: Any,
) -> None:
    async with simulator(SMALL) as sim:
        other = sim.universe.events(0)[2].guid
        home = sim.universe.home_event().guid
        for_all = await post(sim.base_url, "userData.do", token=EVENT_ONLY, event="all")
        for_other = await post(sim.base_url, "userData.do", token=EVENT_ONLY, event=other)
        for_home = await post(sim.base_url, "userData.do", token=EVENT_ONLY, event=home)
    assert for_all.code == 103
    assert for_other.code == 103
    assert for_home.code == 0
    assert for_home.records("user")


async def test_more_tokens_each_with_its_own_home_event_and_access(simulator: Any) -> None:
    tokens = {
        "acct-2": TokenSpec(account_access=True, home_event=1),
        "ev-3": {"account_access": False, "home_event": 3},
    }
    async with simulator(SMALL, tokens=tokens) as sim:
        ev1, ev3 = sim.universe.events(0)[1].guid, sim.universe.events(0)[3].guid
        a = await post(sim.base_url, "exhibitorData.do", token="acct-2")
        b = await post(sim.base_url, "exhibitorData.do", token="ev-3")
        c = await post(sim.base_url, "userData.do", token="ev-3", event="all")
        gone = await post(sim.base_url, "userData.do", token=ACCOUNT)
    assert {r.findtext("eventGUID") for r in a.records("exhibitor")} == {ev1}
    assert {r.findtext("eventGUID") for r in b.records("exhibitor")} == {ev3}
    assert c.code == 103
    assert gone.code == 101  # the default tokens are replaced, not merged


async def test_event_all_on_exhibitors_is_code_104(simulator: Any) -> None:
    async with simulator(SMALL) as sim:
        answer = await post(sim.base_url, "exhibitorData.do", event="all")
        events_all = await post(sim.base_url, "event.do", event="all")
    assert answer.code == 104
    assert events_all.code == 104  # the catalog: event.do does not take event=all either


async def test_unknown_guid_and_an_event_not_yet_added_are_code_201(simulator: Any) -> None:
    cfg = SimConfig(seed=5, events=2, users_per_event=5, new_event_every=3)
    async with simulator(cfg) as sim:
        future = sim.universe.event_at(2)  # added on day 3
        unknown = await post(
            sim.base_url, "userData.do", event="01234567-89AB-CDEF-0123-456789ABCDEF"
        )
        early = await post(sim.base_url, "userData.do", event=future.guid)
        sim.set_day(3)
        born = await post(sim.base_url, "userData.do", event=future.guid)
        listed = await post(sim.base_url, "event.do")
    assert unknown.code == 201
    assert early.code == 201
    assert born.code == 0
    assert born.records("user")
    assert future.guid in [e.findtext("eventGUID") for e in listed.records("event")]


@pytest.mark.parametrize(
    ("data", "suffix"),
    [
        ("apiToken=sim-account-token&event=", ""),
        ("apiToken=sim-account-token&event=not-a-guid", ""),
        ("apiToken=sim-account-token&event=all&page=2", ""),
        ("apiToken=sim-account-token&event=all&event=all", ""),
        ("apiToken=sim-account-token", "?event=all"),
        ("apiToken=sim-account-token&event=all&garbage", ""),
        ("apiToken=sim-account-token&&event=all", ""),
    ],
    ids=[
        "empty-event",
        "malformed-event",
        "unknown-param",
        "duplicate-param",
        "query-string",
        "field-without-value",
        "empty-field",
    ],
)
async def test_missing_malformed_or_extra_parameters_are_code_202(
    simulator: Any, data: str, suffix: str
) -> None:
    async with simulator(SMALL) as sim:
        answer = await post(sim.base_url, "userData.do", data, url_suffix=suffix)
    assert answer.code == 202


async def test_unknown_resource_is_404_and_get_is_405(simulator: Any) -> None:
    async with simulator(SMALL) as sim, aiohttp.ClientSession() as session:
        missing = await post(sim.base_url, "speakerData.do")
        async with session.get(sim.base_url + "userData.do") as resp:
            get_status = resp.status
    assert missing.status == 404
    assert get_status == 405


async def test_control_and_stats_refuse_a_peer_that_is_not_loopback(simulator: Any) -> None:
    address = non_loopback_address()
    if address is None:
        pytest.skip("this machine has no non-loopback address to call from")
    from syncsvc.simulator import run_simulator

    async with (
        run_simulator(SMALL, host=address, port=0) as sim,
        aiohttp.ClientSession() as session,
    ):
        async with session.post(sim.root_url + "/_sim/control", json={"day": 4}) as resp:
            control_status = resp.status
        async with session.get(sim.root_url + "/_sim/stats") as resp:
            stats_status = resp.status
        api = await post(sim.base_url, "userData.do")
        assert sim.day == 0
    assert control_status == 403
    assert stats_status == 403
    assert api.code == 102  # and the default allow-list is loopback only


async def test_control_rejects_unknown_keys_and_bad_faults(simulator: Any) -> None:
    async with simulator(SMALL) as sim:
        with pytest.raises(ValueError, match="unknown control keys"):
            await sim.control({"dya": 3})
        with pytest.raises(ValueError, match="unknown fault kind"):
            await sim.control({"faults": [{"kind": "explode"}]})
        state = await sim.control({"day": 2})
    assert state["day"] == 2
