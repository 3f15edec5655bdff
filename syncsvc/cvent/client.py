"""The Conference API client: authenticated POSTs, one shared rate budget, retries, the answer.

One `CventClient` per run (`async with CventClient.open(settings) as client`): one aiohttp session
whose connector is bounded by the run's `Budget` (syncsvc/budget.py: request starts per period,
requests in flight, the pause after a refusal), which every fetch's requests go through. `fetch`
hands each attempt's decoded body to the caller's consumer (the parse stage,
syncsvc/parse/stream.py, which the scheduler composes with the client), retrying per the
RetryPolicy; library errors become syncsvc errors here, chained.

The API token lives in one private attribute and goes into request bodies only: never into a URL,
a message, a repr, a log line or a stat. The client registers it with `syncsvc.logs` when it is
made, so whatever a server echoes of it is redacted where the server's text enters (see
syncsvc/errors.py).

Time bounds, each for a different way a server can hold a run (docs/operations.md): connect_timeout
to open a connection; read_timeout of silence, before the answer or while it streams; the stall
rule (under stall_min_rate bytes/s over stall_window seconds of reading) for a body that trickles;
fetch_deadline for an attempt in all. A 429 or code 301 pauses every request start of the budget,
not only the retry of the call that got it, and lowers its start rate until calls succeed again.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import functools
import os
import ssl
import time
import zlib
from collections.abc import AsyncGenerator, AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar
from urllib.parse import urlsplit

import aiohttp

from syncsvc import catalog, logs
from syncsvc.budget import Budget, RateBudget
from syncsvc.catalog import Resource
from syncsvc.cvent.body import BodyConsumer, Consumed, FetchProgress, Response
from syncsvc.cvent.responses import classify
from syncsvc.cvent.retry import RetryPolicy
from syncsvc.errors import (
    AmbiguousEventError,
    ConfigError,
    IncompleteDumpError,
    RateLimitedError,
    RetriesExhaustedError,
    SyncError,
    TransportError,
    UnsafeXmlError,
)
from syncsvc.settings import Settings, is_loopback_host

R = TypeVar("R")

__all__ = ["CventClient", "FetchProgress", "FetchResult"]

log = logs.get_logger(__name__)

READ_CHUNK = 256 * 1024  # bytes asked of the socket per read
DECODED_PIECE = 256 * 1024  # most bytes one gzip step may produce: a bomb is checked as it grows
USER_AGENT = "syncsvc/0.1"
STALL_BUCKETS = 64  # reads are summed in this many time slices of the stall window


@dataclass(slots=True)
class FetchResult(Generic[R]):
    """What one fetch produced: the sink's value and the facts the run record keeps."""

    value: R  # the consumer's
    bytes: int  # decoded XML bytes of the accepted attempt
    attempts: int
    http_status: int | None
    records: int
    elapsed: float  # seconds, first attempt start to the end, waits included
    delays: list[float] = field(default_factory=list)  # the backoff delays the policy chose


@dataclass(slots=True)
class ClientStats:
    """Counters over a client's life, for metrics (no labels, no token)."""

    requests: int = 0  # HTTP requests started
    retries: int = 0  # attempts after a retryable failure
    rate_limit_waits: int = 0  # request starts that had to wait for the budget's start rule
    rate_limit_wait_seconds: float = 0.0
    bytes: int = 0  # body bytes received on the wire (before gzip decoding)
    decoded_bytes: int = 0  # XML bytes parsed


class _StallWatch:
    """The stall rule: over any `window` seconds of reading, at least `floor` bytes/s arrive.

    Time counts only while the client waits on the socket (its `clock`), so a slow sink (a COPY
    behind a lock) never makes a healthy transfer look stalled. Reads are summed in slices of
    window / STALL_BUCKETS, each stamped with its last read: the rule errs by at most one slice,
    and towards patience.
    """

    def __init__(self, floor: float, window: float) -> None:
        self.need = floor * window  # bytes any window must hold
        self.window = window
        self.clock = 0.0
        self.total = 0  # bytes read
        self._slice = window / STALL_BUCKETS
        self._marks: collections.deque[list[float]] = collections.deque()  # [first, last, bytes]

    def add(self, nbytes: int) -> None:
        self.total += nbytes
        marks = self._marks
        if marks and self.clock - marks[-1][0] < self._slice:
            marks[-1][1] = self.clock
            marks[-1][2] += nbytes
        else:
            marks.append([self.clock, self.clock, float(nbytes)])
        while marks and marks[0][1] <= self.clock - self.window:
            marks.popleft()

    def left(self) -> float | None:
        """Reading time left before the transfer counts as stalled; None: the rule is off."""
        if self.need <= 0:
            return None
        # The newest reads that alone hold `need` bytes keep the transfer alive until the
        # oldest of them leaves the window; none such: the first window is the limit.
        until = self.window
        held = 0.0
        for _, last, nbytes in reversed(self._marks):
            held += nbytes
            if held >= self.need:
                until = max(until, last + self.window)
                break
        return max(0.0, until - self.clock)


class _Decoder:
    """Content-Encoding decoding in bounded pieces, so the size cap sees a gzip bomb grow."""

    def __init__(self, encoding: str, where: dict[str, Any]) -> None:
        encoding = encoding.strip().lower()
        self._where = where
        if encoding in ("", "identity"):
            self._zlib = None
        elif encoding in ("gzip", "x-gzip"):
            self._zlib = zlib.decompressobj(16 + zlib.MAX_WBITS)
        else:
            raise UnsafeXmlError(f"Unsupported Content-Encoding {encoding[:40]!r}", **where)

    def decode(self, data: bytes) -> Iterator[bytes]:
        z = self._zlib
        if z is None:
            yield data
            return
        if z.eof:
            if data:
                raise IncompleteDumpError(
                    "The response has bytes after its gzip stream", **self._where
                )
            return
        try:
            piece = z.decompress(data, DECODED_PIECE)
            yield piece
            while z.unconsumed_tail and not z.eof:
                piece = z.decompress(z.unconsumed_tail, DECODED_PIECE)
                yield piece
        except zlib.error as exc:
            raise UnsafeXmlError("The response's gzip stream is corrupt", **self._where) from exc
        if z.eof and z.unused_data:
            raise IncompleteDumpError("The response has bytes after its gzip stream", **self._where)

    def finish(self) -> None:
        if self._zlib is not None and not self._zlib.eof:
            raise IncompleteDumpError("The response's gzip stream was cut short", **self._where)


async def _body(
    client: CventClient,
    resp: aiohttp.ClientResponse,
    where: dict[str, Any],
    progress: FetchProgress | None,
) -> AsyncGenerator[bytes, None]:
    """The decoded body in pieces; transport failures become syncsvc errors."""
    stats = client.stats
    settings = client.settings
    decoder = _Decoder(resp.headers.get("Content-Encoding", ""), where)
    watch = _StallWatch(settings.stall_min_rate, settings.stall_window)
    chunks = resp.content.iter_chunked(READ_CHUNK)
    loop = asyncio.get_running_loop()
    try:
        while True:
            started = loop.time()
            stalled = asyncio.timeout(watch.left())
            try:
                async with stalled:
                    raw = await anext(chunks)
            except StopAsyncIteration:
                break
            except TimeoutError as exc:
                if not stalled.expired():
                    raise
                raise TransportError(
                    f"The transfer stalled: under {settings.stall_min_rate:g} bytes/s for"
                    f" {settings.stall_window:g} s (stall_min_rate, stall_window) after"
                    f" {watch.total} bytes",
                    **where,
                ) from exc
            finally:
                watch.clock += loop.time() - started
            watch.add(len(raw))
            stats.bytes += len(raw)
            decoded = 0
            for piece in decoder.decode(raw):
                stats.decoded_bytes += len(piece)
                decoded += len(piece)
                yield piece
            if progress is not None:
                progress.data(len(raw), decoded)
        decoder.finish()
    except aiohttp.ClientPayloadError as exc:
        raise IncompleteDumpError("The response body was cut short", **where) from exc
    except TimeoutError as exc:
        raise TransportError(
            f"The API sent nothing for read_timeout ({settings.read_timeout:g} s) while the"
            " dump streamed",
            **where,
        ) from exc
    except (aiohttp.ClientError, OSError) as exc:
        raise TransportError(f"Reading the response failed: {type(exc).__name__}", **where) from exc


def _check_base_url(base_url: str) -> str:
    """The base URL, refused unless https or loopback http (settings checks it too)."""
    parts = urlsplit(base_url)
    secure = parts.scheme == "https" and bool(parts.hostname)
    if not secure and not (parts.scheme == "http" and is_loopback_host(parts.hostname)):
        raise ConfigError(
            "The API base URL must use https (plain http only to loopback)", setting="base_url"
        )
    if parts.username or parts.password or parts.query:
        raise ConfigError(
            "The API base URL must not carry credentials or a query string", setting="base_url"
        )
    return base_url if base_url.endswith("/") else base_url + "/"


@functools.cache
def _tls_context() -> ssl.SSLContext:
    """The process's one client TLS context (certificate and host name verification on).

    Loading the system's CA certificates takes ~25 ms of CPU on the event loop: a planner of
    20 accounts opening 20 clients at once spent half a second there before any request
    (benchmarks/scaleout.py, profiled)."""
    return ssl.create_default_context()


class CventClient:
    """The Conference API for one run; see the module docstring."""

    def __init__(
        self,
        session: aiohttp.ClientSession,
        settings: Settings,
        policy: RetryPolicy,
        budget: RateBudget | None = None,
    ) -> None:
        base_url, token = settings.require_api()
        self._base_url = _check_base_url(base_url)
        self.__token = token
        # However this client was made (the CLI, serve, a library caller), a server that echoes
        # the token finds it redacted in every error, row and line.
        logs.register_secrets([token])
        self._session = session
        self.settings = settings
        self.policy = policy
        self.stats = ClientStats()
        self.budget: RateBudget = budget or Budget.from_settings(settings)

    def __repr__(self) -> str:
        return f"CventClient(base_url={self._base_url!r})"

    @classmethod
    @asynccontextmanager
    async def open(
        cls,
        settings: Settings,
        *,
        policy: RetryPolicy | None = None,
        budget: RateBudget | None = None,
    ) -> AsyncIterator[CventClient]:
        """One client (one session) for the length of a run, under `budget` (by default one
        made from `settings`; a run hands the one its scheduler shares)."""
        base_url, _ = settings.require_api()
        _check_base_url(base_url)
        budget = budget or Budget.from_settings(settings)
        connector = aiohttp.TCPConnector(
            # A connection per budget place: the budget bounds requests in flight, never the pool.
            limit=budget.max_in_flight,
            limit_per_host=budget.max_in_flight,
            ssl=_tls_context(),  # verification always on
        )
        timeout = aiohttp.ClientTimeout(
            total=None,  # a huge dump streams for long; fetch_deadline bounds an attempt instead
            connect=settings.connect_timeout,
            sock_connect=settings.connect_timeout,
            sock_read=settings.read_timeout,
        )
        async with aiohttp.ClientSession(
            connector=connector,
            timeout=timeout,
            # Decoded here, in bounded pieces, so max_dump_bytes stops a gzip bomb at the cap.
            auto_decompress=False,
            # Proxies from the environment are not followed: the token must go where configured.
            trust_env=False,
            headers={
                "User-Agent": USER_AGENT,
                "Accept": "application/xml, text/xml",
                "Accept-Encoding": "gzip",
            },
        ) as session:
            yield cls(session, settings, policy or RetryPolicy.from_settings(settings), budget)

    def url(self, resource: Resource) -> str:
        return self._base_url + resource.path

    def _netloc(self) -> str:
        parts = urlsplit(self._base_url)
        return _host_port(
            parts.hostname or "?", parts.port or (443 if parts.scheme == "https" else 80)
        )

    @asynccontextmanager
    async def _slot(self) -> AsyncIterator[None]:
        async with self.budget.request() as waited:
            if waited > 0.001:
                self.stats.rate_limit_waits += 1
                self.stats.rate_limit_wait_seconds += waited
            yield

    async def fetch(
        self,
        resource: Resource,
        event: str | None,
        consume: BodyConsumer[R],
        *,
        progress: FetchProgress | None = None,
        single_event: bool = False,
    ) -> FetchResult[R]:
        """Fetch one dump into `consume`, retrying retryable failures (docs/conference-api.md).

        `event`: None (the endpoint's own event), "all", or an event GUID. Per attempt whose
        answer may carry a dump, `consume` is awaited with the decoded body (the parse stage's
        consumer, syncsvc/parse/stream.py); it returns only for a complete dump with code 0.
        Terminal errors propagate; when the policy gives up, RetriesExhaustedError is raised
        from the last error. Raised SyncErrors carry `context["attempts"]` and
        `context["delays"]`.

        `single_event=True`: `event` is one event's GUID, never the account-wide `all`. The
        API reads `event=all` as every event (case aside), so an event whose GUID is `all`
        cannot be asked for on its own: AmbiguousEventError, before any request.
        """
        where: dict[str, Any] = {"resource": resource.path, "event_guid": event}
        if single_event and event is not None and event.strip().lower() == catalog.EVENT_ALL:
            raise AmbiguousEventError(
                f"The event GUID {event!r} cannot be requested on its own: the API reads"
                f" event={event} as every event of the account, so this event's"
                f" {resource.entity} records are not synced",
                **where,
            )
        delays: list[float] = []
        started = time.monotonic()
        attempt = 0
        while True:
            attempt += 1
            status: list[int | None] = [None]
            try:
                consumed = await self._attempt(resource, event, consume, where, status, progress)
            except SyncError as exc:
                exc.context.setdefault("attempts", attempt)
                exc.context.setdefault("delays", list(delays))
                delay = self.policy.next_delay(attempt, exc, spent=sum(delays))
                if delay is None:
                    if not exc.retryable:
                        raise
                    raise RetriesExhaustedError(
                        # The message, not str(exc): the resource and event are added once.
                        f"Gave up after {attempt} attempts: {exc.message}",
                        code=exc.code,
                        attempts=attempt,
                        delays=list(delays),
                        **where,
                    ) from exc
                delays.append(delay)
                self.stats.retries += 1
                if isinstance(exc, RateLimitedError):
                    # The server's limit is evidently below ours (or shared with another
                    # client): pausing only this call would let the others keep hitting it.
                    self.budget.back_off(delay)
                log.warning(
                    "fetch_retrying",
                    resource=resource.path,
                    event_guid=event,
                    attempt=attempt,
                    delay=round(delay, 3),
                    error=str(exc),
                    error_type=type(exc).__name__,
                )
                await asyncio.sleep(delay)
                continue
            elapsed = time.monotonic() - started
            if progress is not None:
                progress.fetched()
            self.budget.succeeded()
            log.info(
                "dump_fetched",
                resource=resource.path,
                event_guid=event,
                records=consumed.records,
                bytes=consumed.bytes,
                attempts=attempt,
                elapsed=round(elapsed, 3),
            )
            return FetchResult(
                value=consumed.value,
                bytes=consumed.bytes,
                attempts=attempt,
                http_status=status[0],
                records=consumed.records,
                elapsed=elapsed,
                delays=delays,
            )

    async def _attempt(
        self,
        resource: Resource,
        event: str | None,
        consume: BodyConsumer[R],
        where: dict[str, Any],
        status: list[int | None],
        progress: FetchProgress | None = None,
    ) -> Consumed[R]:
        form = {catalog.PARAM_TOKEN: self.__token}
        if event is not None:
            form[catalog.PARAM_EVENT] = event
        try:
            # The deadline starts with the request: time queued for a slot is not the attempt's.
            async with self._slot(), asyncio.timeout(self.settings.fetch_deadline):
                self.stats.requests += 1
                log.debug("request_started", resource=resource.path, event_guid=event)
                try:
                    response = await self._session.post(
                        self.url(resource), data=form, allow_redirects=False
                    )
                except aiohttp.ConnectionTimeoutError as exc:
                    raise TransportError(
                        f"Connecting to {self._netloc()} timed out (connect_timeout"
                        f" {self.settings.connect_timeout:g} s)",
                        **where,
                    ) from exc
                except TimeoutError as exc:
                    # aiohttp's sock_read: the connection was open and the request sent.
                    raise TransportError(
                        f"{self._netloc()} accepted the request but sent no answer within"
                        f" read_timeout ({self.settings.read_timeout:g} s)",
                        **where,
                    ) from exc
                except aiohttp.ClientConnectorCertificateError as exc:
                    # Retrying will not fix a certificate (a wrong host, or someone in between).
                    raise ConfigError(
                        "TLS verification of the API host failed; check SYNCSVC_BASE_URL",
                        setting="base_url",
                        **where,
                    ) from exc
                except aiohttp.ClientConnectorDNSError as exc:
                    raise TransportError(
                        f"cannot resolve {exc.host} ({_os_reason(exc)})", **where
                    ) from exc
                except aiohttp.ClientConnectorError as exc:
                    raise TransportError(
                        f"cannot connect to {_host_port(exc.host, exc.port)} ({_os_reason(exc)})",
                        **where,
                    ) from exc
                except (aiohttp.ClientError, OSError) as exc:
                    raise TransportError(
                        f"The request to {self._netloc()} failed: {type(exc).__name__}", **where
                    ) from exc
                async with response as resp:
                    status[0] = resp.status
                    log.debug(
                        "response_started",
                        resource=resource.path,
                        event_guid=event,
                        http_status=resp.status,
                        content_length=resp.content_length,
                        content_encoding=resp.headers.get("Content-Encoding"),
                    )
                    error = classify(
                        resp.status, headers=resp.headers, resource=resource.path, event=event
                    )
                    if error is not None:
                        raise error
                    if progress is not None:
                        progress.response(resp.content_length)
                    answer = Response(
                        resource=resource,
                        event=event,
                        headers=resp.headers,
                        egress=_local_address(resp),
                        max_bytes=self.settings.max_dump_bytes,
                        where=where,
                        progress=progress,
                    )
                    async with contextlib.aclosing(_body(self, resp, where, progress)) as body:
                        return await consume(body, answer)
        except TimeoutError as exc:
            raise TransportError(
                f"The fetch exceeded its deadline ({self.settings.fetch_deadline:g} s)", **where
            ) from exc


def _host_port(host: str, port: int | None) -> str:
    host = f"[{host}]" if ":" in host else host
    return f"{host}:{port}" if port is not None else host


def _os_reason(exc: OSError) -> str:
    """The operating system's words for a failed connect ("Connection refused"), not
    asyncio's ("Connect call failed ('127.0.0.1', 9)")."""
    if isinstance(exc.errno, int) and exc.errno > 0:
        return os.strerror(exc.errno)
    return str(exc.strerror or type(exc).__name__)


def _local_address(resp: aiohttp.ClientResponse) -> str | None:
    """The local address the request left from (for the 102 message), best effort."""
    conn = resp.connection
    transport = conn.transport if conn is not None else None
    if transport is None:
        # A small body is read with the headers and the connection already released; its
        # protocol (private, hence getattr) still knows the socket while it is kept alive.
        protocol = getattr(resp, "_protocol", None)
        transport = getattr(protocol, "transport", None)
    sock = transport.get_extra_info("sockname") if transport is not None else None
    return str(sock[0]) if sock else None
