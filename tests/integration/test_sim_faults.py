"""Every fault the simulator can inject, seen from a real client on loopback."""

from __future__ import annotations

import asyncio
import time
import xml.etree.ElementTree as ET
from typing import Any

import aiohttp
import pytest

from syncsvc.simulator import RunningSimulator, SimConfig
from tests.simulator_fixtures import ACCOUNT, post

SMALL = SimConfig(
    seed=9, events=3, users_per_event=10, sessions_per_event=3, exhibitors_per_event=2
)


def parse(body: bytes) -> ET.Element:
    return ET.fromstring(body)  # noqa: S314 (our own loopback server)


async def raw_post(sim: RunningSimulator, path: str) -> tuple[dict[str, str], bytes]:
    """POST over a bare socket and read until the server closes: (headers, body bytes)."""
    reader, writer = await asyncio.open_connection(sim.host, sim.port)
    form = f"apiToken={ACCOUNT}".encode()
    writer.write(
        f"POST /api/{path} HTTP/1.1\r\nHost: {sim.host}\r\n"
        "Content-Type: application/x-www-form-urlencoded\r\n"
        f"Content-Length: {len(form)}\r\n\r\n".encode()
        + form
    )
    await writer.drain()
    data = await asyncio.wait_for(reader.read(), 60)  # returns only at EOF: the server closed
    writer.close()
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    assert lines[0] == "HTTP/1.1 200 OK"
    headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    return headers, body


async def test_http_status_fault_fails_twice_then_succeeds(simulator: Any) -> None:
    fault = {"resource": "userData.do", "kind": "http_status", "value": 503, "times": 2}
    async with simulator(SMALL) as sim:
        await sim.control({"faults": [fault]})
        statuses = [(await post(sim.base_url, "userData.do")).status for _ in range(3)]
        stats = await sim.stats()
    assert statuses == [503, 503, 200]
    assert stats["rejections"]["http_503"] == 2


@pytest.mark.parametrize("status", [500, 503])
async def test_http_5xx_faults(simulator: Any, status: int) -> None:
    async with simulator(SMALL) as sim:
        await sim.control({"faults": [{"kind": "http_status", "value": status, "times": 1}]})
        answer = await post(sim.base_url, "sessionData.do")
    assert answer.status == status


@pytest.mark.parametrize("code", [500, 503, 301, 999])
async def test_api_code_fault_answers_any_code_in_the_envelope(simulator: Any, code: int) -> None:
    async with simulator(SMALL) as sim:
        await sim.control({"faults": [{"kind": "api_code", "value": code, "times": 1}]})
        failed = await post(sim.base_url, "userData.do")
        then = await post(sim.base_url, "userData.do")
    assert (failed.status, failed.code) == (200, code)
    assert parse(failed.body).find("users") is None
    assert then.code == 0


async def test_faults_of_one_kind_apply_in_the_order_they_were_set(simulator: Any) -> None:
    faults = [
        {"kind": "api_code", "value": 500, "times": 1},
        {"kind": "api_code", "value": 503, "times": 2},
        {"kind": "latency", "value": 0, "times": 1},
    ]
    async with simulator(SMALL, faults=faults) as sim:
        codes = [(await post(sim.base_url, "userData.do")).code for _ in range(4)]
        left = (await sim.control({}))["faults"]
    assert codes == [500, 503, 503, 0]
    assert left == []


async def test_a_fault_without_times_lasts_until_cleared(simulator: Any) -> None:
    async with simulator(SMALL, faults=[{"kind": "api_code", "value": 500}]) as sim:
        codes = [(await post(sim.base_url, "event.do")).code for _ in range(3)]
        await sim.control({"clear_faults": True})
        after = await post(sim.base_url, "event.do")
    assert codes == [500, 500, 500]
    assert after.code == 0


async def test_faults_match_by_resource_and_event(simulator: Any) -> None:
    async with simulator(SMALL) as sim:
        ev1, ev2 = (e.guid for e in sim.universe.events(0)[1:3])
        home = sim.universe.home_event().guid
        await sim.control(
            {
                "faults": [
                    {"resource": "userData.do", "event": ev1, "kind": "api_code", "value": 500},
                    {"resource": "*", "event": "all", "kind": "api_code", "value": 503},
                    {
                        "resource": "exhibitorData.do",
                        "event": home,
                        "kind": "api_code",
                        "value": 201,
                    },
                ]
            }
        )
        users_ev1 = await post(sim.base_url, "userData.do", event=ev1)
        users_ev2 = await post(sim.base_url, "userData.do", event=ev2)
        sessions_ev1 = await post(sim.base_url, "sessionData.do", event=ev1)
        users_all = await post(sim.base_url, "userData.do", event="all")
        sessions_all = await post(sim.base_url, "sessionData.do", event="all")
        exhibitors_home = await post(sim.base_url, "exhibitorData.do")  # no event: the home one
    assert users_ev1.code == 500
    assert users_ev2.code == 0
    assert sessions_ev1.code == 0
    assert users_all.code == 503
    assert sessions_all.code == 503
    assert exhibitors_home.code == 201


async def test_latency_fault_delays_the_answer_by_at_least_its_value(simulator: Any) -> None:
    async with simulator(SMALL, faults=[{"kind": "latency", "value": 0.3, "times": 1}]) as sim:
        start = time.monotonic()
        answer = await post(sim.base_url, "event.do")
        elapsed = time.monotonic() - start
    assert answer.code == 0
    assert elapsed >= 0.3


async def test_bandwidth_fault_paces_the_body_without_changing_it(simulator: Any) -> None:
    async with simulator(SMALL) as sim:
        plain = await post(sim.base_url, "userData.do", event="all")
        bandwidth = len(plain.body) * 2  # about half a second
        await sim.control({"faults": [{"kind": "bandwidth", "value": bandwidth, "times": 1}]})
        start = time.monotonic()
        slow = await post(sim.base_url, "userData.do", event="all")
        elapsed = time.monotonic() - start
    assert slow.body == plain.body
    assert elapsed >= 0.9 * len(plain.body) / bandwidth


async def test_truncate_content_length_declares_more_than_it_sends_then_closes(
    simulator: Any,
) -> None:
    async with simulator(SMALL) as sim:
        full = (await post(sim.base_url, "userData.do")).body
        fault = {"kind": "truncate", "value": {"mode": "content_length", "at": 0.5}, "times": 1}
        await sim.control({"faults": [fault]})
        headers, body = await raw_post(sim, "userData.do")
        await sim.control({"faults": [fault]})
        with pytest.raises(aiohttp.ClientPayloadError):
            await post(sim.base_url, "userData.do")
    assert int(headers["content-length"]) == len(full)
    assert body == full[: len(full) // 2]


async def test_truncate_chunked_ends_without_the_terminal_chunk(simulator: Any) -> None:
    async with simulator(SMALL) as sim:
        full = (await post(sim.base_url, "userData.do")).body
        fault = {"kind": "truncate", "value": {"mode": "chunked", "at": 700}, "times": 1}
        await sim.control({"faults": [fault]})
        headers, body = await raw_post(sim, "userData.do")
        await sim.control({"faults": [fault]})
        with pytest.raises(aiohttp.ClientPayloadError):
            await post(sim.base_url, "userData.do")
    assert headers["transfer-encoding"] == "chunked"
    decoded, rest = b"", body
    while rest:
        size_line, _, rest = rest.partition(b"\r\n")
        size = int(size_line, 16)
        assert size > 0, "a terminal chunk was sent"
        decoded, rest = decoded + rest[:size], rest[size + 2 :]
    assert decoded == full[:700]


async def test_truncate_close_delimited_looks_complete_to_http_and_only_xml_can_tell(
    simulator: Any,
) -> None:
    async with simulator(SMALL) as sim:
        full = (await post(sim.base_url, "userData.do")).body
        fault = {"kind": "truncate", "value": {"mode": "close_delimited", "at": 0.6}, "times": 2}
        await sim.control({"faults": [fault]})
        headers, body = await raw_post(sim, "userData.do")
        via_client = await post(sim.base_url, "userData.do")  # no exception: HTTP saw a clean EOF
    assert "content-length" not in headers
    assert "transfer-encoding" not in headers
    assert body == full[: int(len(full) * 0.6)]
    assert via_client.status == 200
    assert via_client.body == body
    with pytest.raises(ET.ParseError):
        parse(via_client.body)


async def test_invalid_xml_fault_serves_a_document_no_parser_accepts(simulator: Any) -> None:
    async with simulator(SMALL, faults=[{"kind": "invalid_xml", "times": 1}]) as sim:
        bad = await post(sim.base_url, "sessionData.do")
    assert bad.status == 200
    assert b"<responseCode>0</responseCode>" in bad.body
    with pytest.raises(ET.ParseError):
        parse(bad.body)


@pytest.mark.parametrize("code", [0, 503])
async def test_code_after_payload_puts_the_code_behind_the_records(
    simulator: Any, code: int
) -> None:
    fault = {"kind": "code_after_payload", "value": code, "times": 1}
    async with simulator(SMALL) as sim:
        normal = await post(sim.base_url, "userData.do")
        await sim.control({"faults": [fault]})
        late = await post(sim.base_url, "userData.do")
    root = parse(late.body)
    assert [c.tag for c in root] == ["users", "responseCode", "responseMessage"]
    assert late.code == code
    assert [ET.tostring(r) for r in late.records("user")] == [
        ET.tostring(r) for r in normal.records("user")
    ]


async def test_duplicates_fault_repeats_records_in_the_same_dump(simulator: Any) -> None:
    async with simulator(SMALL, faults=[{"kind": "duplicates", "value": 2, "times": 1}]) as sim:
        normal_refs = [
            r["userRef"] for r in sim.universe.records("user", 0, sim.universe.home_event().guid)
        ]
        dup = await post(sim.base_url, "userData.do")
    refs = [r.findtext("userRef") for r in dup.records("user")]
    assert refs == normal_refs + normal_refs[:2]


async def test_unknown_elements_fault_adds_a_new_element_to_every_record(simulator: Any) -> None:
    fault = {"kind": "unknown_elements", "value": "loyaltyTier", "times": 1}
    async with simulator(SMALL) as sim:
        normal = await post(sim.base_url, "exhibitorData.do")
        await sim.control({"faults": [fault]})
        extended = await post(sim.base_url, "exhibitorData.do")
    assert normal.records("exhibitor")
    for plain, new in zip(normal.records("exhibitor"), extended.records("exhibitor"), strict=True):
        assert new.findtext("loyaltyTier") == f"new-{plain.findtext('exhibitorID')}"
        new.remove(new.find("loyaltyTier"))  # type: ignore[arg-type]
        assert ET.tostring(new) == ET.tostring(plain)


async def test_a_client_hanging_up_mid_dump_leaves_the_simulator_serving(simulator: Any) -> None:
    cfg = SimConfig(seed=1, events=2, users_per_event=15000)  # ~28 MB: more than socket buffers
    async with simulator(cfg) as sim:
        reader, writer = await asyncio.open_connection(sim.host, sim.port)
        form = b"apiToken=sim-account-token&event=all"
        writer.write(
            b"POST /api/userData.do HTTP/1.1\r\nHost: x\r\n"
            b"Content-Type: application/x-www-form-urlencoded\r\n"
            b"Content-Length: %d\r\n\r\n%s" % (len(form), form)
        )
        await reader.readexactly(4096)  # the dump has started streaming
        writer.transport.abort()  # hang up without reading the rest
        await sim.wait_idle()  # the aborted request winds down
        answer = await post(sim.base_url, "event.do")
        stats = await sim.stats()
    assert answer.code == 0
    assert stats["rejections"] == {"client_disconnected": 1}
