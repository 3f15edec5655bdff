"""A body cut short in any framing is reported incomplete over real HTTP, never a short dump."""

from __future__ import annotations

import gzip as gzip_mod
from typing import Any

import pytest

from syncsvc import catalog
from syncsvc.cvent.retry import RetryPolicy
from syncsvc.errors import IncompleteDumpError, RetriesExhaustedError
from tests.apiserver import EVENTS, Reply, client_for, collect, make_records, render, serve_api


@pytest.fixture(params=["never", "always"], ids=["in-process", "in-worker"])
def parse_mode(request: pytest.FixtureRequest) -> str:
    """Every case runs against the one-document parse and the split parse in workers alike."""
    return str(request.param)


RECORDS = make_records(catalog.USERS, EVENTS[0], 400)
TWO_TRIES = RetryPolicy(max_attempts=2, base=0.001, cap=0.001, budget=1.0, random=lambda: 0.5)


class Sink:
    """Counts how each attempt ended, as a staging sink would see it."""

    def __init__(self) -> None:
        self.outcomes: list[str] = []

    async def __call__(self, batches: Any) -> int:
        n = 0
        try:
            async for batch in batches:
                n += len(batch)
        except IncompleteDumpError:
            self.outcomes.append(f"incomplete after {n}")
            raise
        self.outcomes.append(f"complete {n}")
        return n


def cut_points(body: bytes) -> list[int]:
    payload_mid = body.index(b"<user>") + (body.rindex(b"</user>") - body.index(b"<user>")) // 2
    return [0, 10, body.index(b"<response>") + 3, payload_mid, body.rindex(b"</response>") + 5]


@pytest.mark.parametrize("gzip", [False, True], ids=["identity", "gzip"])
@pytest.mark.parametrize("code_after", [False, True], ids=["code-first", "code-after-payload"])
@pytest.mark.parametrize("framing", ["length", "chunked", "close"])
async def test_cut_body_is_incomplete_in_every_framing(
    parse_mode: str, framing: str, code_after: bool, gzip: bool
) -> None:
    body = render(catalog.USERS, RECORDS, code_after_payload=code_after)
    points = cut_points(body)
    async with (
        serve_api() as server,
        client_for(server, parse_in_worker=parse_mode, policy=TWO_TRIES) as client,
    ):
        for cut in points:
            if gzip:  # cut the compressed stream at the same share of its length
                cut = len(gzip_mod.compress(body)) * cut // len(body)
            server.push(*[Reply(body=body, framing=framing, cut=cut, gzip=gzip)] * 2)
            sink = Sink()
            with pytest.raises(RetriesExhaustedError) as info:
                await client.fetch(catalog.USERS, EVENTS[0], sink, encoded=True)
            assert isinstance(info.value.__cause__, IncompleteDumpError), (cut, info.value)
            assert len(sink.outcomes) <= 2
            assert not any(o.startswith("complete") for o in sink.outcomes)
            assert info.value.context["attempts"] == 2


@pytest.mark.parametrize("gzip", [False, True], ids=["identity", "gzip"])
@pytest.mark.parametrize("framing", ["length", "chunked", "close"])
async def test_whole_body_in_every_framing_is_complete(
    parse_mode: str, framing: str, gzip: bool
) -> None:
    body = render(catalog.USERS, RECORDS, code_after_payload=True)
    async with serve_api() as server, client_for(server, parse_in_worker=parse_mode) as client:
        server.push(Reply(body=body, framing=framing, gzip=gzip))
        sink = Sink()
        result = await client.fetch(catalog.USERS, EVENTS[0], sink, encoded=True)
    assert sink.outcomes == [f"complete {len(RECORDS)}"]
    assert result.records == len(RECORDS)
    assert result.bytes == len(body)
    assert server.seen[0].headers["accept-encoding"] == "gzip"


async def test_cut_then_whole_retries_into_a_complete_dump(parse_mode: str) -> None:
    body = render(catalog.USERS, RECORDS, code_after_payload=True)
    async with serve_api() as server, client_for(server, parse_in_worker=parse_mode) as client:
        server.push(Reply(body=body, framing="close", cut=len(body) // 2), Reply(body=body))
        sink = Sink()
        result = await client.fetch(catalog.USERS, EVENTS[0], sink, encoded=True)
    assert sink.outcomes[0].startswith("incomplete after")
    assert sink.outcomes[1] == f"complete {len(RECORDS)}"
    assert result.attempts == 2


async def test_gzip_with_bytes_after_its_stream_is_incomplete(parse_mode: str) -> None:
    body = gzip_mod.compress(render(catalog.USERS, RECORDS)) + b"trailing"
    async with (
        serve_api() as server,
        client_for(server, parse_in_worker=parse_mode, policy=TWO_TRIES) as client,
    ):
        server.push(*[Reply(body=body, headers=[("Content-Encoding", "gzip")])] * 2)
        with pytest.raises(RetriesExhaustedError) as info:
            await client.fetch(catalog.USERS, EVENTS[0], collect, encoded=True)
    assert isinstance(info.value.__cause__, IncompleteDumpError)
