"""A small real Conference API on loopback for client tests: the contract's codes, crafted bytes.

A raw asyncio HTTP/1.1 server (not aiohttp.web) so a test controls every byte: framing
(Content-Length, chunked, close-delimited), cuts at any offset, gzip, Retry-After. It implements
the contract's codes from the request itself (token, allow-list, `event`), a per-token limiter on
starts per second and requests in flight with stats, and a queue of scripted replies that take
precedence for the next matching requests.
"""

from __future__ import annotations

import asyncio
import gzip as gzip_mod
import ipaddress
import ssl
import time
from collections import Counter, deque
from collections.abc import AsyncIterator, Iterable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs
from xml.sax.saxutils import escape

from syncsvc import catalog
from syncsvc.catalog import Resource
from syncsvc.cvent.client import CventClient, FetchResult
from syncsvc.cvent.retry import RetryPolicy
from syncsvc.parse.document import element_to_dict
from syncsvc.parse.segments import EncodedBatch
from syncsvc.parse.stream import ParseStage, collect_all
from syncsvc.settings import Settings

ACCOUNT_TOKEN = "test-account-token"
EVENT_TOKEN = "test-event-token"
EVENTS = ("E-0001", "E-0002", "E-0003")
REASONS = {200: "OK", 429: "Too Many Requests", 500: "Internal Server Error", 502: "Bad Gateway"}


def record_xml(resource: Resource, rec: Mapping[str, Any]) -> str:
    parts = [f"<{resource.record}>"]
    for name, value in rec.items():
        if value is None:
            parts.append(f"<{name}/>")
        elif isinstance(value, dict):
            inner = "".join(f"<{k}>{escape(v)}</{k}>" for k, v in value.items())
            parts.append(f"<{name}>{inner}</{name}>")
        elif isinstance(value, list):
            inner = "".join(f"<userRef>{escape(v)}</userRef>" for v in value)
            parts.append(f"<{name}>{inner}</{name}>")
        else:
            parts.append(f"<{name}>{escape(str(value))}</{name}>")
    parts.append(f"</{resource.record}>")
    return "".join(parts)


def render(
    resource: Resource,
    records: Iterable[Mapping[str, Any]] = (),
    *,
    code: int = 0,
    message: str | None = None,
    code_after_payload: bool = False,
) -> bytes:
    """A whole response document; error codes carry no payload container."""
    msg = message if message is not None else catalog.RESPONSE_CODES.get(code, None)
    text = msg if isinstance(msg, str) else (msg.meaning if msg else "Unknown")
    envelope = (
        f"<responseCode>{code}</responseCode><responseMessage>{escape(text)}</responseMessage>"
    )
    payload = ""
    if code == 0:
        payload = (
            f"<{resource.container}>\n"
            + "\n".join(record_xml(resource, r) for r in records)
            + f"\n</{resource.container}>"
        )
    body = payload + envelope if code_after_payload else envelope + payload
    return f'<?xml version="1.0" encoding="UTF-8"?>\n<response>{body}</response>\n'.encode()


def make_records(resource: Resource, event: str, n: int) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for i in range(n):
        if resource is catalog.EVENTS:
            out.append({"eventGUID": EVENTS[i], "eventCode": f"EV{i}", "eventName": f"Event {i}"})
            continue
        rec: dict[str, Any] = {resource.key: f"{event}-{resource.entity[0].upper()}{i:04d}"}
        rec["eventGUID"] = event
        if resource is catalog.USERS:
            rec |= {"firstName": f"First & {i}", "lastName": "Last", "email": f"u{i}@example.com"}
        if resource is catalog.SESSIONS:
            rec |= {"title": f"Session {i}", "speakers": [f"U{i}", f"U{i + 1}"]}
        if resource is catalog.EXHIBITORS:
            rec |= {"name": f"Exhibitor {i}", "contacts": [f"U{i}"]}
        rec["customFields"] = {"type_business": "govt", "diet": f"d{i % 3}"}
        out.append(rec)
    return out


@dataclass
class Reply:
    """One scripted answer. `body` None: the server renders `code` (and data if 0)."""

    status: int = 200
    code: int = 0
    body: bytes | None = None
    headers: list[tuple[str, str]] = field(default_factory=list)
    framing: str = "length"  # "length" | "chunked" | "close" (close-delimited)
    cut: int | None = None  # send only this many body bytes, then close the connection
    gzip: bool = False  # compress the body (Content-Encoding: gzip)
    code_after_payload: bool = False
    delay: float = 0.0  # seconds before the status line
    chunk: int = 4096  # bytes per write (and per chunk in chunked framing)
    drop: bool = False  # close the connection without answering (a reset)


@dataclass
class Seen:
    """A request as the server received it (the test inspects where the token travelled)."""

    method: str
    target: str
    headers: dict[str, str]
    body: bytes
    form: dict[str, list[str]]


class ApiServer:
    def __init__(
        self,
        *,
        records_per_event: int = 5,
        allow: Iterable[str] = ("127.0.0.0/8", "::1/128"),
        starts_per_second: float | None = None,
        max_concurrent: int | None = None,
        limit_mode: str = "code",
        service_time: float = 0.0,
        tls: ssl.SSLContext | None = None,
    ) -> None:
        self.tls = tls
        self.tokens = {ACCOUNT_TOKEN: True, EVENT_TOKEN: False}  # token -> account-level access
        self.allow = [ipaddress.ip_network(a) for a in allow]
        self.records_per_event = records_per_event
        self.starts_per_second = starts_per_second
        self.max_concurrent = max_concurrent
        self.limit_mode = limit_mode
        self.service_time = service_time
        self.script: deque[tuple[str, Reply]] = deque()
        self.seen: list[Seen] = []
        self.starts: dict[str, list[float]] = {}
        self.inflight: Counter[str] = Counter()
        self.peak_concurrency = 0
        self.rejections: Counter[int] = Counter()
        self.connections = 0
        self._server: asyncio.Server | None = None
        self.port = 0

    @property
    def base_url(self) -> str:
        scheme = "https" if self.tls else "http"
        return f"{scheme}://127.0.0.1:{self.port}/api/"

    def push(self, *replies: Reply, resource: str = "*") -> None:
        """Answer the next matching requests with these replies, in order."""
        for r in replies:
            self.script.append((resource, r))

    def peak_starts_per_second(self, token: str = ACCOUNT_TOKEN) -> int:
        times = sorted(self.starts.get(token, []))
        best, lo = 0, 0
        for hi, t in enumerate(times):
            while t - times[lo] >= 1.0:
                lo += 1
            best = max(best, hi - lo + 1)
        return best

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0, ssl=self.tls)
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        peer = writer.get_extra_info("peername")[0]
        try:
            while True:
                try:
                    head = await reader.readuntil(b"\r\n\r\n")
                except (asyncio.IncompleteReadError, ConnectionError):
                    return
                lines = head.decode("latin-1").split("\r\n")
                method, target, _ = lines[0].split(" ", 2)
                headers = {}
                for line in lines[1:]:
                    if ":" in line:
                        k, v = line.split(":", 1)
                        headers[k.strip().lower()] = v.strip()
                body = await reader.readexactly(int(headers.get("content-length", "0")))
                form = parse_qs(body.decode("latin-1"), keep_blank_values=True)
                self.seen.append(Seen(method, target, headers, body, form))
                keep = await self._respond(peer, target, form, headers, writer)
                if not keep:
                    return
        except (ConnectionError, asyncio.IncompleteReadError, ssl.SSLError):
            return
        finally:
            writer.close()

    def _default(self, peer: str, target: str, form: dict[str, list[str]]) -> Reply:
        path = target.rsplit("/", 1)[-1]
        resource = catalog.BY_PATH.get(path)
        if resource is None:
            return Reply(status=404, body=b"not found")
        tokens = form.get(catalog.PARAM_TOKEN, [])
        if len(tokens) != 1 or tokens[0] not in self.tokens:
            return Reply(code=catalog.INVALID_TOKEN)
        if not any(ipaddress.ip_address(peer) in net for net in self.allow):
            return Reply(code=catalog.IP_NOT_ALLOWED)
        account = self.tokens[tokens[0]]
        if set(form) - {catalog.PARAM_TOKEN, catalog.PARAM_EVENT}:
            return Reply(code=catalog.BAD_PARAMETER)
        events = form.get(catalog.PARAM_EVENT)
        if events is not None and (len(events) != 1 or not events[0].strip()):
            return Reply(code=catalog.BAD_PARAMETER)
        event = events[0] if events else None
        if event == catalog.EVENT_ALL:
            if not account:
                return Reply(code=catalog.NO_ACCOUNT_ACCESS)
            if not resource.allows_event_all:
                return Reply(code=catalog.EVENT_ALL_UNSUPPORTED)
            scope = list(EVENTS)
        elif event is None:
            scope = [EVENTS[0]]
        elif event not in EVENTS:
            return Reply(code=catalog.UNKNOWN_EVENT)
        elif not account and event != EVENTS[0]:
            return Reply(code=catalog.NO_ACCOUNT_ACCESS)
        else:
            scope = [event]
        if resource is catalog.EVENTS:
            records = make_records(resource, "", len(EVENTS))
        else:
            records = [r for e in scope for r in make_records(resource, e, self.records_per_event)]
        return Reply(body=render(resource, records))

    def _limited(self, token: str) -> Reply | None:
        now = time.monotonic()
        starts = self.starts.setdefault(token, [])
        starts.append(now)
        recent = sum(1 for t in starts[-1000:] if now - t < 1.0)
        over_rate = self.starts_per_second is not None and recent > self.starts_per_second
        over_conc = self.max_concurrent is not None and self.inflight[token] > self.max_concurrent
        if not (over_rate or over_conc):
            return None
        if self.limit_mode == "http429":
            self.rejections[429] += 1
            return Reply(status=429, body=b"slow down", headers=[("Retry-After", "1")])
        self.rejections[catalog.RATE_LIMITED] += 1
        return Reply(code=catalog.RATE_LIMITED)

    async def _respond(
        self,
        peer: str,
        target: str,
        form: dict[str, list[str]],
        req_headers: dict[str, str],
        writer: asyncio.StreamWriter,
    ) -> bool:
        token = (form.get(catalog.PARAM_TOKEN) or [""])[0]
        released = [False]
        self.inflight[token] += 1
        self.peak_concurrency = max(self.peak_concurrency, self.inflight[token])
        try:
            reply = self._limited(token)
            if reply is None:
                path = target.rsplit("/", 1)[-1]
                for i, (res, scripted) in enumerate(self.script):
                    if res in ("*", path):
                        del self.script[i]
                        reply = scripted
                        break
                else:
                    reply = self._default(peer, target, form)
            if self.service_time:
                await asyncio.sleep(self.service_time)
            return await self._write(reply, target, req_headers, writer, token, released)
        finally:
            if not released[0]:  # the write failed before its last byte
                self.inflight[token] -= 1

    async def _write(
        self,
        reply: Reply,
        target: str,
        req_headers: dict[str, str],
        writer: asyncio.StreamWriter,
        token: str,
        released: list[bool],
    ) -> bool:
        if reply.delay:
            await asyncio.sleep(reply.delay)
        if reply.drop:
            return False
        body = reply.body
        if body is None:
            resource = catalog.BY_PATH.get(target.rsplit("/", 1)[-1], catalog.USERS)
            body = render(resource, code=reply.code, code_after_payload=reply.code_after_payload)
        if reply.gzip:
            body = gzip_mod.compress(body)
        headers = [("Content-Type", "application/xml; charset=UTF-8"), *reply.headers]
        if reply.gzip:
            headers.append(("Content-Encoding", "gzip"))
        close = reply.framing == "close" or reply.cut is not None
        close = close or req_headers.get("connection", "").lower() == "close"
        if reply.framing == "length":
            headers.append(("Content-Length", str(len(body))))
        elif reply.framing == "chunked":
            headers.append(("Transfer-Encoding", "chunked"))
        headers.append(("Connection", "close" if close else "keep-alive"))
        reason = REASONS.get(reply.status, "Status")
        head = f"HTTP/1.1 {reply.status} {reason}\r\n" + "".join(
            f"{k}: {v}\r\n" for k, v in headers
        )
        writer.write(head.encode("latin-1") + b"\r\n")
        view = memoryview(body)[: reply.cut]  # slices of a view: a big body is never copied
        starts = range(0, len(view), reply.chunk) if len(view) else range(1)
        for start in starts:
            piece = bytes(view[start : start + reply.chunk])
            last = start + reply.chunk >= len(view)
            if reply.framing == "chunked":
                data = f"{len(piece):x}\r\n".encode() + piece + b"\r\n" if piece else b""
                if last and reply.cut is None:
                    data += b"0\r\n\r\n"
            else:
                data = piece
            writer.write(data)
            if last:
                # In flight ends with the last byte handed to the kernel: synchronously here, so
                # the client cannot have read it (and started another request) before.
                self.inflight[token] -= 1
                released[0] = True
            await writer.drain()
        return not close


@asynccontextmanager
async def serve_api(**kw: Any) -> AsyncIterator[ApiServer]:
    server = ApiServer(**kw)
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


class Listener:
    """A TCP listener on loopback that counts connections (for the external-entity attacks)."""

    def __init__(self) -> None:
        self.connections = 0
        self.port = 0
        self._server: asyncio.Server | None = None

    async def _on(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        writer.close()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/evil.dtd"


@asynccontextmanager
async def listen() -> AsyncIterator[Listener]:
    listener = Listener()
    server = await asyncio.start_server(listener._on, "127.0.0.1", 0)
    listener.port = server.sockets[0].getsockname()[1]
    listener._server = server
    try:
        yield listener
    finally:
        server.close()
        await server.wait_closed()


FAST = RetryPolicy(max_attempts=4, base=0.01, cap=0.04, budget=5.0, random=lambda: 0.5)


def settings_for(server: ApiServer, token: str = ACCOUNT_TOKEN, **kw: Any) -> Settings:
    return Settings().replace(base_url=server.base_url, api_token=token, **kw)


class ParsedClient:
    """A client composed with a parse stage as the scheduler composes them: `fetch` takes a
    sink (and `on_record`, `encoded`) and hands the client the parse's consumer. Everything
    else is the client's."""

    def __init__(self, client: CventClient, parse: ParseStage) -> None:
        self.client = client
        self.parse = parse

    def __getattr__(self, name: str) -> Any:
        return getattr(self.client, name)

    def __repr__(self) -> str:
        return repr(self.client)

    async def fetch(
        self,
        resource: Resource,
        event: str | None,
        sink: Any,
        on_record: Any = None,
        *,
        encoded: bool = False,
        progress: Any = None,
        single_event: bool = False,
    ) -> FetchResult[Any]:
        consume = self.parse.consumer(resource, sink, on_record, encoded=encoded)
        return await self.client.fetch(
            resource, event, consume, progress=progress, single_event=single_event
        )

    async def list_events(self) -> list[dict[str, Any]]:
        """The account's events (event.do), as plain dicts."""
        result = await self.fetch(catalog.EVENTS, None, collect_all, element_to_dict)
        return list(result.value)


@asynccontextmanager
async def parsed(client: CventClient) -> AsyncIterator[ParsedClient]:
    """`client` with a parse stage whose workers stop on the way out."""
    parse = ParseStage(client.settings)
    try:
        yield ParsedClient(client, parse)
    finally:
        await asyncio.to_thread(parse.close)


@asynccontextmanager
async def client_for(
    server: ApiServer, *, policy: RetryPolicy = FAST, token: str = ACCOUNT_TOKEN, **kw: Any
) -> AsyncIterator[ParsedClient]:
    async with (
        CventClient.open(settings_for(server, token, **kw), policy=policy) as client,
        parsed(client) as composed,
    ):
        yield composed


async def collect(batches: AsyncIterator[Any]) -> list[Any]:
    """A sink that keeps every record (starting over on each attempt, as sinks must); an
    encoded fetch's EncodedBatch adds its staging rows (COPY text lines)."""
    out: list[Any] = []
    async for batch in batches:
        if isinstance(batch, EncodedBatch):
            out.extend(batch.data.decode().splitlines())
        else:
            out.extend(batch)
    return out
