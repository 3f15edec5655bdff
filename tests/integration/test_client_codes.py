"""Every response code and HTTP failure over real loopback HTTP: outcome, attempts and delays."""

from __future__ import annotations

import asyncio
import ssl
import subprocess
from pathlib import Path
from typing import Any

import pytest

from syncsvc import catalog
from syncsvc.cvent.client import CventClient
from syncsvc.errors import (
    ApiRetryableError,
    BadParameterError,
    ConfigError,
    EventAllUnsupportedError,
    HttpStatusError,
    IncompleteDumpError,
    InvalidTokenError,
    IpNotAllowedError,
    NoAccountAccessError,
    RateLimitedError,
    RetriesExhaustedError,
    TerminalError,
    TransportError,
    UnknownCodeError,
    UnknownEventError,
)
from syncsvc.settings import Settings
from tests.apiserver import (
    EVENT_TOKEN,
    EVENTS,
    FAST,
    Reply,
    client_for,
    collect,
    listen,
    make_records,
    render,
    serve_api,
)

# FAST: random() == 0.5, base 0.01, cap 0.04 -> delays 0.005, 0.01, 0.02 for attempts 1, 2, 3.
FAST_DELAYS = [0.005, 0.01, 0.02]
# A rate limit waits uniform(ceiling / 2, ceiling): at random() = 0.5, three quarters of it.
RATE_LIMIT_DELAYS = [0.0075, 0.015, 0.03]


def _delays(code: int) -> list[float]:
    return RATE_LIMIT_DELAYS if code == catalog.RATE_LIMITED else FAST_DELAYS


async def test_code_0_dump_is_accepted_with_its_records_in_one_attempt() -> None:
    async with serve_api(records_per_event=7) as server, client_for(server) as client:
        result = await client.fetch(catalog.USERS, EVENTS[1], collect)
    assert (result.attempts, result.delays, result.http_status) == (1, [], 200)
    assert result.records == len(result.value) == 7
    assert result.value[0]["userRef"] == f"{EVENTS[1]}-U0000"
    assert result.value[0]["firstName"] == "First & 0"
    assert result.value[0]["customFields"] == {"type_business": "govt", "diet": "d0"}
    assert result.bytes == len(render(catalog.USERS, make_records(catalog.USERS, EVENTS[1], 7)))


async def test_token_travels_in_a_form_body_never_in_the_url() -> None:
    async with serve_api() as server, client_for(server) as client:
        await client.fetch(catalog.SESSIONS, "all", collect)
    (seen,) = server.seen
    assert seen.method == "POST"
    assert seen.target == "/api/sessionData.do"
    assert seen.headers["content-type"].startswith("application/x-www-form-urlencoded")
    assert seen.form == {"apiToken": ["test-account-token"], "event": ["all"]}
    assert "test-account-token" not in seen.target


async def test_event_all_gives_every_events_records_and_none_gives_the_home_event() -> None:
    async with serve_api(records_per_event=2) as server, client_for(server) as client:
        every = await client.fetch(catalog.SESSIONS, "all", collect)
        home = await client.fetch(catalog.SESSIONS, None, collect)
    assert sorted({r["eventGUID"] for r in every.value}) == sorted(EVENTS)
    assert {r["eventGUID"] for r in home.value} == {EVENTS[0]}
    assert every.value[0]["speakers"] == ["U0", "U1"]
    assert "event" not in server.seen[1].form


async def test_list_events_returns_the_accounts_events() -> None:
    async with serve_api() as server, client_for(server) as client:
        events = await client.list_events()
    assert [e["eventGUID"] for e in events] == list(EVENTS)


async def _fails(server_kw: dict[str, Any], event: str | None, **client_kw: Any) -> Any:
    async with serve_api(**server_kw) as server, client_for(server, **client_kw) as client:
        with pytest.raises(TerminalError) as info:
            await client.fetch(client_kw.pop("resource", catalog.USERS), event, collect)
        return info.value, server


async def test_101_invalid_token_stops_at_once_without_retry() -> None:
    err, server = await _fails({}, EVENTS[0], token="wrong-token")
    assert type(err) is InvalidTokenError
    assert err.code == 101
    assert len(server.seen) == 1
    assert err.context["attempts"] == 1
    assert err.context["delays"] == []


async def test_102_names_the_egress_address_to_allow_list_and_never_retries() -> None:
    err, server = await _fails({"allow": ["10.0.0.0/8"]}, EVENTS[0])
    assert type(err) is IpNotAllowedError
    assert err.code == 102
    assert len(server.seen) == 1
    text = str(err)
    assert "egress IP address must be allow-listed with Cvent" in text
    assert "127.0.0.1" in text
    assert "\n" not in text


async def test_103_no_account_access_is_signalled_for_fallback() -> None:
    err, server = await _fails({}, "all", token=EVENT_TOKEN)
    assert type(err) is NoAccountAccessError
    assert err.code == 103
    assert len(server.seen) == 1


async def test_104_event_all_unsupported_is_signalled_for_fallback() -> None:
    async with serve_api() as server, client_for(server) as client:
        with pytest.raises(EventAllUnsupportedError) as info:
            await client.fetch(catalog.EXHIBITORS, "all", collect)
    assert info.value.code == 104
    assert info.value.resource == "exhibitorData.do"
    assert info.value.event_guid == "all"
    assert len(server.seen) == 1


async def test_201_unknown_event_fails_the_fetch_once() -> None:
    err, server = await _fails({}, "E-NOPE")
    assert type(err) is UnknownEventError
    assert err.code == 201
    assert err.event_guid == "E-NOPE"
    assert len(server.seen) == 1


async def test_202_bad_parameter_fails_the_fetch_once() -> None:
    err, server = await _fails({}, "")
    assert type(err) is BadParameterError
    assert err.code == 202
    assert len(server.seen) == 1


async def test_unknown_code_fails_with_code_and_message_kept() -> None:
    body = render(catalog.USERS, code=777, message="Quota of the moon exceeded")
    async with serve_api() as server, client_for(server) as client:
        server.push(Reply(body=body))
        with pytest.raises(UnknownCodeError) as info:
            await client.fetch(catalog.USERS, EVENTS[0], collect)
    assert info.value.code == 777
    assert info.value.context["server_message"] == "Quota of the moon exceeded"
    assert "Quota of the moon exceeded" in str(info.value)
    assert len(server.seen) == 1


@pytest.mark.parametrize("code", [301, 500, 503])
async def test_retryable_codes_retry_with_the_policys_delays_then_succeed(code: int) -> None:
    async with serve_api() as server, client_for(server) as client:
        server.push(Reply(code=code), Reply(code=code))
        result = await client.fetch(catalog.USERS, EVENTS[0], collect)
    assert result.attempts == 3
    assert len(server.seen) == 3
    assert result.delays == pytest.approx(_delays(code)[:2])
    assert result.records == 5
    assert client.stats.retries == 2


@pytest.mark.parametrize("code", [301, 500, 503])
async def test_retryable_codes_exhaust_the_policy_and_chain_the_last_error(code: int) -> None:
    async with serve_api() as server, client_for(server) as client:
        server.push(*[Reply(code=code)] * 6)
        with pytest.raises(RetriesExhaustedError) as info:
            await client.fetch(catalog.USERS, EVENTS[0], collect)
    err = info.value
    assert len(server.seen) == FAST.max_attempts == err.context["attempts"]
    assert err.context["delays"] == pytest.approx(_delays(code))
    assert isinstance(err.__cause__, ApiRetryableError)
    assert err.__cause__.code == code
    assert err.code == code
    assert f"{FAST.max_attempts} attempts" in str(err)
    if code == 301:
        assert isinstance(err.__cause__, RateLimitedError)


async def test_code_301_honours_retry_after() -> None:
    async with serve_api() as server, client_for(server) as client:
        server.push(Reply(code=301, headers=[("Retry-After", "1")]))
        result = await client.fetch(catalog.USERS, EVENTS[0], collect)
    assert result.attempts == 2
    assert result.delays == [1.0]


@pytest.mark.parametrize("status", [500, 502, 503])
async def test_http_5xx_is_retried(status: int) -> None:
    async with serve_api() as server, client_for(server) as client:
        server.push(Reply(status=status, body=b"<html>oops</html>"))
        result = await client.fetch(catalog.USERS, EVENTS[0], collect)
    assert result.attempts == 2
    assert result.delays == pytest.approx(FAST_DELAYS[:1])


async def test_http_429_is_rate_limited_and_honours_retry_after() -> None:
    async with serve_api() as server, client_for(server) as client:
        server.push(Reply(status=429, body=b"", headers=[("Retry-After", "1")]))
        result = await client.fetch(catalog.USERS, EVENTS[0], collect)
    assert result.attempts == 2
    assert result.delays == [1.0]


async def test_http_404_is_terminal_and_not_retried() -> None:
    async with serve_api() as server, client_for(server) as client:
        server.push(Reply(status=404, body=b"nope"))
        with pytest.raises(HttpStatusError) as info:
            await client.fetch(catalog.USERS, EVENTS[0], collect)
    assert info.value.http_status == 404
    assert len(server.seen) == 1


async def test_a_redirect_is_never_followed_so_the_token_goes_nowhere_else() -> None:
    async with listen() as elsewhere, serve_api() as server, client_for(server) as client:
        server.push(Reply(status=307, body=b"", headers=[("Location", elsewhere.url)]))
        with pytest.raises(HttpStatusError):
            await client.fetch(catalog.USERS, EVENTS[0], collect)
    assert elsewhere.connections == 0


async def test_connection_reset_is_retried() -> None:
    async with serve_api() as server, client_for(server) as client:
        server.push(Reply(drop=True), Reply(drop=True))
        result = await client.fetch(catalog.USERS, EVENTS[0], collect)
    assert result.attempts == 3
    assert result.records == 5


async def test_read_timeout_is_retried() -> None:
    async with serve_api() as server, client_for(server, read_timeout=0.2) as client:
        server.push(Reply(delay=1.0))
        result = await client.fetch(catalog.USERS, EVENTS[0], collect)
    assert result.attempts == 2
    assert result.records == 5


async def test_fetch_deadline_bounds_an_attempt_and_is_retried() -> None:
    async with serve_api() as server, client_for(server, fetch_deadline=0.3) as client:
        server.push(*[Reply(delay=1.0)] * 4)
        with pytest.raises(RetriesExhaustedError) as info:
            await client.fetch(catalog.USERS, EVENTS[0], collect)
    assert isinstance(info.value.__cause__, TransportError)
    assert "deadline" in str(info.value.__cause__)


async def test_sink_starts_over_with_a_fresh_iterator_on_each_attempt() -> None:
    calls: list[str] = []

    async def sink(batches: Any) -> list[Any]:
        out: list[Any] = []
        try:
            async for batch in batches:
                out.extend(batch)
        except IncompleteDumpError:
            calls.append(f"incomplete after {len(out)}")
            raise
        calls.append(f"complete with {len(out)}")
        return out

    body = render(catalog.USERS, [{"userRef": f"U{i}"} for i in range(3000)])
    async with serve_api() as server, client_for(server) as client:
        server.push(Reply(body=body, cut=len(body) * 3 // 4), Reply(body=body))
        result = await client.fetch(catalog.USERS, EVENTS[0], sink)
    first = int(calls[0].removeprefix("incomplete after "))
    assert 0 < first < 3000  # a first batch was consumed, then the body was cut
    assert calls[1] == "complete with 3000"
    assert len(calls) == 2
    assert result.value == [{"userRef": f"U{i}"} for i in range(3000)]
    assert result.attempts == 2


async def test_a_sink_that_wraps_the_iterators_error_still_gets_it_retried() -> None:
    async def sink(batches: Any) -> int:
        try:
            async for _ in batches:
                pass
        except Exception as exc:
            raise RuntimeError("staging aborted") from exc
        return 1

    async with serve_api() as server, client_for(server) as client:
        server.push(Reply(code=500))
        result = await client.fetch(catalog.USERS, EVENTS[0], sink)
    assert result.attempts == 2
    assert result.value == 1


async def test_a_sink_that_stops_early_never_accepts_a_partial_dump() -> None:
    async def first_batch_only(batches: Any) -> Any:
        async for batch in batches:
            return batch
        return None

    async with serve_api(records_per_event=5000) as server, client_for(server) as client:
        with pytest.raises(TerminalError, match="sink returned before the dump ended"):
            await client.fetch(catalog.USERS, EVENTS[0], first_batch_only)


async def test_plain_http_to_a_non_loopback_host_is_refused_at_the_client() -> None:
    # Built without Settings' own validation, as a caller bypassing it could.
    settings = Settings(base_url="http://example.com/api/", api_token="x-token-123")
    with pytest.raises(ConfigError, match="https"):
        async with CventClient.open(settings):
            pass


def _self_signed(tmp: Path) -> ssl.SSLContext:
    key, cert = tmp / "key.pem", tmp / "cert.pem"
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=127.0.0.1",
            "-addext",
            "subjectAltName=IP:127.0.0.1",
            "-keyout",
            str(key),
            "-out",
            str(cert),
        ],
        check=True,
        capture_output=True,
    )
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(cert, key)
    return ctx


async def test_tls_verification_is_always_on_and_a_bad_certificate_is_terminal(
    tmp_path: Path,
) -> None:
    async with serve_api(tls=_self_signed(tmp_path)) as server, client_for(server) as client:
        assert client.url(catalog.USERS).startswith("https://")
        with pytest.raises(ConfigError, match="TLS verification"):
            await client.fetch(catalog.USERS, EVENTS[0], collect)
    assert server.seen == []  # the handshake failed: no request, no token, went out


async def test_fetch_deadline_does_not_count_the_wait_for_a_slot() -> None:
    async with (
        serve_api() as server,
        client_for(server, fetch_deadline=1.0, max_concurrency=1) as client,
    ):
        server.push(Reply(delay=0.6), Reply(delay=0.6))
        results = await asyncio.gather(
            client.fetch(catalog.USERS, EVENTS[0], collect),
            client.fetch(catalog.USERS, EVENTS[1], collect),
        )
    # The second waited >= 0.6 s for the single slot, then took >= 0.6 s itself: past 1.0 s.
    assert [r.attempts for r in results] == [1, 1]
    assert max(r.elapsed for r in results) > 1.0
