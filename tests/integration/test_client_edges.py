"""The client's edges over real loopback HTTP: slow and silent servers, rate-limit storms, strict
response codes, network errors that say what failed, one parse rule for both parse paths, and a
server that repeats the token back."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
import traceback
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import quote, quote_plus

import pytest

from syncsvc import catalog, logs
from syncsvc.cvent.retry import RetryPolicy
from syncsvc.errors import (
    AmbiguousEventError,
    HttpStatusError,
    IncompleteDumpError,
    InvalidTokenError,
    RetriesExhaustedError,
    SyncError,
    TransportError,
    UnknownCodeError,
)
from syncsvc.parse.stream import SEGMENT_BYTES
from syncsvc.settings import Settings
from tests.apiserver import (
    ACCOUNT_TOKEN,
    EVENTS,
    Reply,
    client_for,
    collect,
    make_records,
    parsed,
    render,
    serve_api,
)

MiB = 1024 * 1024
TWO = RetryPolicy(max_attempts=2, base=0.01, cap=0.01, budget=5.0, random=lambda: 0.5)


@pytest.fixture(params=["never", "always"], ids=["one-document", "split"])
def parse_mode(request: pytest.FixtureRequest) -> str:
    """The one-document parse in process and the split parse in workers: one rule for both."""
    return str(request.param)


def _texts(exc: BaseException) -> str:
    """Everything an error can show: message, repr, context, the traceback with its causes
    (and the exceptions it was raised while handling, unless it suppressed them, as a
    traceback does)."""
    out = ["".join(traceback.format_exception(exc))]
    seen: BaseException | None = exc
    while seen is not None:
        out += [str(seen), repr(seen), repr(getattr(seen, "context", None))]
        seen = seen.__cause__ or (None if seen.__suppress_context__ else seen.__context__)
    return "\n".join(out)


# --- a server that accepts and then never answers, or answers one byte at a time -----------


class RawServer:
    """A loopback HTTP server written byte by byte: `answer(writer)` after reading a request."""

    def __init__(self, answer: Any) -> None:
        self.answer = answer
        self.requests = 0
        self.sent = 0  # body bytes written, over all connections
        self.port = 0

    async def _on(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            length = 0
            for line in head.decode("latin-1").split("\r\n"):
                if line.lower().startswith("content-length:"):
                    length = int(line.split(":", 1)[1])
            await reader.readexactly(length)
            self.requests += 1
            await self.answer(self, reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()


@contextlib.asynccontextmanager
async def raw_server(answer: Any) -> AsyncIterator[RawServer]:
    raw = RawServer(answer)
    server = await asyncio.start_server(raw._on, "127.0.0.1", 0)
    raw.port = server.sockets[0].getsockname()[1]
    try:
        yield raw
    finally:
        server.close()
        await server.wait_closed()


async def never_answer(raw: RawServer, reader: asyncio.StreamReader, _: Any) -> None:
    await reader.read()  # until the client gives up and closes


def trickle(prefix: bytes, every: float) -> Any:
    """Headers and `prefix` at once, then one byte every `every` seconds until the client goes."""

    async def answer(raw: RawServer, _: Any, writer: asyncio.StreamWriter) -> None:
        writer.write(
            b"HTTP/1.1 200 OK\r\nContent-Type: application/xml\r\n"
            b"Content-Length: 100000000\r\n\r\n" + prefix
        )
        raw.sent += len(prefix)
        await writer.drain()
        while not writer.is_closing():
            await asyncio.sleep(every)
            writer.write(b" ")
            raw.sent += 1
            await writer.drain()

    return answer


def raw_settings(raw: RawServer, **kw: Any) -> Settings:
    return Settings().replace(
        base_url=f"http://127.0.0.1:{raw.port}/api/", api_token=ACCOUNT_TOKEN, **kw
    )


# --- slow and silent servers ------------------------------------------------------------------


async def test_a_trickling_body_is_a_stalled_transfer_retried_then_given_up() -> None:
    from syncsvc.cvent.client import CventClient

    head = b'<?xml version="1.0"?><response><responseCode>0</responseCode><users>'
    async with raw_server(trickle(head, every=0.02)) as raw:
        # 50 bytes/s arrive; the floor is 400 bytes/s over 0.5 s. Nothing else would stop it
        # before fetch_deadline: a byte comes far inside read_timeout.
        settings = raw_settings(
            raw, stall_min_rate=400, stall_window=0.5, read_timeout=30, fetch_deadline=60
        )
        async with CventClient.open(settings, policy=TWO) as bare, parsed(bare) as client:
            with pytest.raises(RetriesExhaustedError) as info:
                await client.fetch(catalog.USERS, EVENTS[0], collect)
    err = info.value
    assert isinstance(err.__cause__, TransportError)
    assert "stalled" in str(err)
    assert "stall_min_rate" in str(err)
    assert raw.requests == 2  # retryable: tried again, then given up
    # The rule fired on the bytes, not on a clock: each attempt got its head and some trickle.
    assert raw.sent > 2 * len(head)


async def test_a_slow_sink_is_not_a_stalled_transfer() -> None:
    body = render(catalog.USERS, make_records(catalog.USERS, EVENTS[0], 400))
    async with (
        serve_api() as server,
        client_for(server, stall_min_rate=1_000_000, stall_window=0.2) as client,
    ):
        server.push(Reply(body=body, chunk=1024))

        async def slow(batches: Any) -> int:
            n = 0
            async for batch in batches:
                # Much longer than the stall window: only time spent reading counts.
                await asyncio.sleep(0.5)
                n += len(batch)
            return n

        result = await client.fetch(catalog.USERS, EVENTS[0], slow)
    assert result.value == 400
    assert result.attempts == 1


async def test_a_server_that_accepted_and_never_answered_is_a_read_timeout() -> None:
    from syncsvc.cvent.client import CventClient

    async with raw_server(never_answer) as raw:
        settings = raw_settings(raw, read_timeout=0.3, connect_timeout=30)
        async with CventClient.open(settings, policy=TWO) as bare, parsed(bare) as client:
            with pytest.raises(RetriesExhaustedError) as info:
                await client.fetch(catalog.EVENTS, None, collect)
    text = str(info.value)
    assert "Connecting" not in text
    assert f"127.0.0.1:{raw.port} accepted the request but sent no answer" in text
    assert "read_timeout (0.3 s)" in text
    assert raw.requests == 2


# --- network errors that say what failed -------------------------------------------------------


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_an_unreachable_api_names_host_port_and_the_os_reason_once() -> None:
    from syncsvc.cvent.client import CventClient

    port = _closed_port()
    settings = Settings().replace(base_url=f"http://127.0.0.1:{port}/api/", api_token=ACCOUNT_TOKEN)
    async with CventClient.open(settings, policy=TWO) as bare, parsed(bare) as client:
        with pytest.raises(RetriesExhaustedError) as info:
            await client.list_events()
    text = str(info.value)
    assert text == (
        f"Gave up after 2 attempts: cannot connect to 127.0.0.1:{port} (Connection refused)"
        " (resource=event.do)"
    )


async def test_a_404_on_event_do_suggests_checking_the_base_url_path() -> None:
    async with serve_api() as server, client_for(server) as client:
        server.push(Reply(status=404, body=b"<html>no such page</html>"))
        with pytest.raises(HttpStatusError) as info:
            await client.list_events()
    assert "HTTP 404" in str(info.value)
    assert "check the path of SYNCSVC_BASE_URL" in str(info.value)


# --- rate-limit storms --------------------------------------------------------------------------


async def test_retry_after_zero_still_backs_off_by_the_floor() -> None:
    policy = RetryPolicy(max_attempts=4, base=0.2, cap=1.0, budget=30.0, random=lambda: 0.0)
    async with serve_api() as server, client_for(server, policy=policy) as client:
        limited = Reply(status=429, body=b"", headers=[("Retry-After", "0")])
        server.push(limited, limited, limited)
        started = time.monotonic()
        result = await client.fetch(catalog.USERS, EVENTS[0], collect)
    assert result.attempts == 4
    # Half of each backoff ceiling (0.2, 0.4, 0.8), never the server's 0.
    assert result.delays == pytest.approx([0.1, 0.2, 0.4])
    assert time.monotonic() - started >= sum(result.delays)


async def test_a_rate_limit_pauses_every_call_of_the_client_not_only_the_refused_one() -> None:
    policy = RetryPolicy(max_attempts=3, base=0.01, cap=0.01, budget=30.0, random=lambda: 0.5)
    arrivals: list[float] = []
    async with serve_api() as server, client_for(server, policy=policy) as client:
        server.push(Reply(status=429, body=b"", headers=[("Retry-After", "1")]))
        first = asyncio.create_task(client.fetch(catalog.USERS, EVENTS[0], collect))
        # Synchronized on the client's state: the refusal arrived and the client backed off.
        while client.stats.retries == 0:  # noqa: ASYNC110
            await asyncio.sleep(0.01)
        refused_at = time.monotonic()
        # Another call, started after the refusal, must wait out the same Retry-After.
        other = await client.fetch(catalog.SESSIONS, EVENTS[0], collect)
        arrivals.append(time.monotonic())
        await first
    assert other.attempts == 1
    assert arrivals[0] - refused_at >= 0.9
    assert client.budget.rate < Settings().rate_limit  # and starts come slower


# --- strict response codes ----------------------------------------------------------------------


@pytest.mark.parametrize("text", ["1_01", "\u0661\u0660\u0661", "0x65", "101.0", ""])
async def test_a_malformed_response_code_fails_the_fetch_and_never_reads_as_a_known_one(
    parse_mode: str, text: str
) -> None:
    body = (
        b'<?xml version="1.0"?><response><responseCode>'
        + text.encode()
        + b"</responseCode><users></users></response>"
    )
    async with serve_api() as server, client_for(server, parse_in_worker=parse_mode) as client:
        server.push(Reply(body=body))
        with pytest.raises(UnknownCodeError) as info:
            await client.fetch(catalog.USERS, EVENTS[0], collect, encoded=True)
    assert not isinstance(info.value, InvalidTokenError)
    assert "not a number" in str(info.value)
    assert len(server.seen) == 1  # terminal: not retried


async def test_a_signed_or_padded_code_is_still_read() -> None:
    body = render(catalog.USERS, code=0).replace(b">0<", b"> +101 <", 1)
    async with serve_api() as server, client_for(server) as client:
        server.push(Reply(body=body))
        with pytest.raises(InvalidTokenError):
            await client.fetch(catalog.USERS, EVENTS[0], collect)


# --- one parse rule on both paths ----------------------------------------------------------------

DUMP = render(catalog.USERS, make_records(catalog.USERS, EVENTS[0], 300))


async def _fetch(mode: str, body: bytes) -> tuple[list[Any], int]:
    async with serve_api() as server, client_for(server, parse_in_worker=mode) as client:
        server.push(Reply(body=body, chunk=64 * 1024), Reply(body=body, chunk=64 * 1024))
        result = await client.fetch(catalog.USERS, EVENTS[0], collect, encoded=True)
        return result.value, len(server.seen)


async def test_whitespace_after_the_root_is_accepted_on_both_paths_however_long() -> None:
    tail = b" \n\t\r" * (3 * MiB // 4)  # 3 MiB: past the segment size and max_record_bytes
    assert len(tail) > 2 * SEGMENT_BYTES
    one, requests_one = await _fetch("never", DUMP + tail)
    split, requests_split = await _fetch("always", DUMP + tail)
    assert (requests_one, requests_split) == (1, 1)
    assert len(one) == 300
    assert len(split) == 300  # the split path's staging rows: the same records


@pytest.mark.parametrize(
    "body",
    [
        pytest.param(DUMP + b" " * (2 * MiB) + b"<x/>", id="a-byte-after-a-long-blank-tail"),
        pytest.param(
            DUMP.replace(
                b"</users>",
                b"</users><user><userRef>late</userRef><eventGUID>E-0001</eventGUID></user>",
            ),
            id="a-record-after-the-container",
        ),
        pytest.param(
            DUMP.replace(b"</users>", b"</users><user/>"), id="an-empty-record-after-the-container"
        ),
        pytest.param(
            DUMP.replace(b"</response>", b"</response><user><userRef>x</userRef></user>"),
            id="a-record-after-the-root",
        ),
    ],
)
async def test_bytes_or_records_after_the_container_make_the_dump_incomplete_on_both_paths(
    parse_mode: str, body: bytes
) -> None:
    async with (
        serve_api() as server,
        client_for(server, parse_in_worker=parse_mode, policy=TWO) as client,
    ):
        server.push(*[Reply(body=body, chunk=64 * 1024)] * 4)
        with pytest.raises(RetriesExhaustedError) as info:
            await client.fetch(catalog.USERS, EVENTS[0], collect, encoded=True)
    assert isinstance(info.value.__cause__, IncompleteDumpError)


# --- a GUID that is the API's own word -------------------------------------------------------


@pytest.mark.parametrize("guid", ["all", "ALL", " all "])
async def test_an_event_whose_guid_is_all_is_never_requested_as_event_all(guid: str) -> None:
    async with serve_api() as server, client_for(server) as client:
        with pytest.raises(AmbiguousEventError) as info:
            await client.fetch(catalog.EXHIBITORS, guid, collect, single_event=True)
        # The account-wide call itself is still what "all" means without single_event.
        users = await client.fetch(catalog.USERS, "all", collect)
    assert "cannot be requested on its own" in str(info.value)
    assert len(server.seen) == 1
    assert server.seen[0].form[catalog.PARAM_EVENT] == ["all"]
    assert server.seen[0].target.endswith("userData.do")
    assert users.records == len(EVENTS) * 5


# --- a server that repeats the token ----------------------------------------------------------

TOKEN = "s3cr3t+tok/en=&42 x"


def _spellings() -> list[str]:
    return [TOKEN, quote(TOKEN, safe=""), quote_plus(TOKEN), quote(TOKEN, safe="").lower()]


def _echo(code: str, message: str) -> bytes:
    return (
        f'<?xml version="1.0"?><response><responseCode>{code}</responseCode>'
        f"<responseMessage>{message}</responseMessage></response>"
    ).encode()


ECHOES = {
    "unknown-code-message": Reply(body=_echo("999", f"bad token {TOKEN.replace('&', '&amp;')}")),
    "url-encoded": Reply(body=_echo("999", f"apiToken={quote_plus(TOKEN).replace('&', '&amp;')}")),
    "lowercase-percent": Reply(body=_echo("999", quote(TOKEN, safe="").lower())),
    "code-element": Reply(body=_echo(TOKEN.replace("&", "&amp;"), "x")),
    "long-message": Reply(body=_echo("998", "x" * 190 + TOKEN.replace("&", "&amp;"))),
    "element-name": Reply(
        body=b'<?xml version="1.0"?><response><responseCode>0</responseCode><users>'
        + b"<s3cr3t_tok></other></users></response>"
    ),
    "http-error-body": Reply(status=403, body=f"forbidden: {TOKEN}".encode()),
    "http-5xx-body-and-header": Reply(
        status=500, body=f"oops {TOKEN}".encode(), headers=[("X-Echo", quote(TOKEN, safe=""))]
    ),
    "retry-after-header": Reply(
        status=429, body=TOKEN.encode(), headers=[("Retry-After", quote(TOKEN, safe=""))]
    ),
}


@pytest.mark.parametrize("reply", ECHOES.values(), ids=ECHOES.keys())
async def test_a_token_the_server_echoes_is_redacted_in_the_error_it_becomes(
    parse_mode: str, reply: Reply
) -> None:
    logs.register_secrets(["s3cr3t_tok"])  # a second secret, to echo as an element name
    async with (
        serve_api() as server,
        client_for(server, token=TOKEN, parse_in_worker=parse_mode, policy=TWO) as client,
    ):
        server.tokens[TOKEN] = True
        server.push(reply, reply)
        with pytest.raises(SyncError) as info:
            await client.fetch(catalog.USERS, EVENTS[0], collect, encoded=True)
    text = _texts(info.value)
    for spelling in [*_spellings(), "s3cr3t_tok"]:
        assert spelling not in text
    assert server.seen[0].form[catalog.PARAM_TOKEN] == [TOKEN]  # the token did go to the API
