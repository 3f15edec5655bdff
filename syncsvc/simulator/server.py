"""The simulator over HTTP: the four dump resources, access rules, rate limits, faults and stats.

Checks run in the order a real gateway would apply them: the peer address (102), the token (101),
the rate limit (301 or HTTP 429), the parameters (202), then the scope (104, 103, 201). Faults
apply only to requests that passed every check, so "fail twice, then succeed" counts real
attempts. The control and stats endpoints answer on loopback only.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import hashlib
import ipaddress
import os
import re
import tempfile
import time
from collections.abc import AsyncIterator, Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl

import aiohttp
from aiohttp import web
from aiohttp.abc import AbstractStreamWriter

from syncsvc import catalog
from syncsvc.catalog import Resource
from syncsvc.simulator import render
from syncsvc.simulator.data import Event, SimConfig, Universe

API_PREFIX = "/api/"
CONTROL_PATH = "/_sim/control"
STATS_PATH = "/_sim/stats"
GUID_RE = re.compile(
    r"^[0-9A-Fa-f]{8}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{12}$"
)
FAULT_KINDS = frozenset(
    {
        "latency",
        "bandwidth",
        "http_status",
        "api_code",
        "truncate",
        "invalid_xml",
        "code_after_payload",
        "duplicates",
        "unknown_elements",
        "hold",  # extension: wait until `{"release": true}` (deterministic in-flight tests)
    }
)
TRUNCATE_MODES = frozenset({"content_length", "chunked", "close_delimited"})


@dataclass(frozen=True, slots=True)
class TokenSpec:
    """What a token may do: account-level access, and the event its endpoint belongs to."""

    account_access: bool
    home_event: int = 0  # index of the token's own event (0: the account's first event)


DEFAULT_TOKENS: Mapping[str, TokenSpec] = {
    "sim-account-token": TokenSpec(account_access=True),
    "sim-event-token": TokenSpec(account_access=False),
}
DEFAULT_ALLOW_LIST = ("127.0.0.0/8", "::1/128")


@dataclass(frozen=True, slots=True)
class RateLimit:
    """Per-token limits: request starts per `period` seconds and requests in flight."""

    starts_per_second: float | None = None
    max_concurrent: int | None = None
    mode: str = "code"  # "code": HTTP 200 with responseCode 301; "http429": 429 + Retry-After
    period: float = 1.0  # the window of starts_per_second (tests widen it to stay timing-free)
    retry_after: int = 1  # seconds, sent as Retry-After in http429 mode

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> RateLimit:
        unknown = set(data) - {f for f in cls.__dataclass_fields__}
        if unknown:
            raise ValueError(f"unknown rate_limit keys: {sorted(unknown)}")
        rl = cls(**data)
        if rl.mode not in ("code", "http429"):
            raise ValueError(f"rate_limit mode must be 'code' or 'http429', not {rl.mode!r}")
        return rl


@dataclass(slots=True)
class Fault:
    """One fault: which requests it matches, what it does, how many more times."""

    kind: str
    resource: str = "*"  # a resource path such as "userData.do", or "*"
    event: str = "*"  # an event GUID, "all" (event=all calls), or "*"
    value: Any = None
    times: int | None = None  # the next N matching requests, then it expires (None: until cleared)

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Fault:
        unknown = set(data) - {"kind", "resource", "event", "value", "times"}
        if unknown:
            raise ValueError(f"unknown fault keys: {sorted(unknown)}")
        fault = cls(
            kind=str(data["kind"]),
            resource=str(data.get("resource", "*")),
            event=str(data.get("event", "*")),
            value=data.get("value"),
            times=data.get("times"),
        )
        if fault.kind not in FAULT_KINDS:
            raise ValueError(f"unknown fault kind {fault.kind!r}")
        if fault.resource != "*" and fault.resource not in catalog.BY_PATH:
            raise ValueError(f"unknown resource {fault.resource!r}")
        if fault.kind == "truncate":
            spec = fault.value or {}
            if spec.get("mode") not in TRUNCATE_MODES:
                raise ValueError(f"truncate mode must be one of {sorted(TRUNCATE_MODES)}")
        if fault.times is not None and (not isinstance(fault.times, int) or fault.times < 1):
            raise ValueError("times must be a positive integer or null")
        return fault

    def matches(self, path: str, scope: str | None) -> bool:
        if self.resource not in ("*", path):
            return False
        if self.event == "*":
            return True
        return scope is not None and self.event.upper() == scope.upper()


class Stats:
    """What the simulator saw: requests per resource, peaks, rejections by code."""

    def __init__(self) -> None:
        self.changed = asyncio.Event()  # set whenever in_flight moves (tests wait on it)
        self.reset()

    def reset(self) -> None:
        self.requests: collections.Counter[str] = collections.Counter()
        self.rejections: collections.Counter[str] = collections.Counter()
        self.limited: collections.Counter[str] = collections.Counter()  # by rate limit
        # Requests still being served stay counted, so finishing them never goes negative.
        self.in_flight: int = getattr(self, "in_flight", 0)
        self.peak_concurrency = self.in_flight
        self.peak_starts = 0
        self.total = 0
        self.bytes_sent = 0
        self._starts: collections.deque[float] = collections.deque()

    def started(self, path: str, now: float) -> None:
        self.total += 1
        self.requests[path] += 1
        self.in_flight += 1
        self.changed.set()
        self.peak_concurrency = max(self.peak_concurrency, self.in_flight)
        starts = self._starts
        starts.append(now)
        while starts and now - starts[0] >= 1.0:
            starts.popleft()
        self.peak_starts = max(self.peak_starts, len(starts))

    def finished(self) -> None:
        self.in_flight -= 1
        self.changed.set()

    async def wait_in_flight(self, n: int) -> None:
        """Return once at least n requests are being served (no polling, no sleeping)."""
        while self.in_flight < n:
            self.changed.clear()
            await self.changed.wait()

    async def wait_idle(self) -> None:
        """Return once no request is being served."""
        while self.in_flight > 0:
            self.changed.clear()
            await self.changed.wait()

    def as_json(self) -> dict[str, Any]:
        return {
            "requests": dict(self.requests),
            "total_requests": self.total,
            "in_flight": self.in_flight,
            "peak_concurrency": self.peak_concurrency,
            "peak_starts_per_second": self.peak_starts,
            "rejections": dict(self.rejections),
            "rate_limited_by": dict(self.limited),
            "bytes_sent": self.bytes_sent,
        }


class _TokenUse:
    __slots__ = ("in_flight", "starts")

    def __init__(self) -> None:
        self.in_flight = 0
        self.starts: collections.deque[float] = collections.deque()


@dataclass(slots=True)
class ServerOptions:
    """Everything about the server that is not the data: access, limits, faults, cache."""

    tokens: Mapping[str, TokenSpec] = field(default_factory=lambda: dict(DEFAULT_TOKENS))
    allow_list: Sequence[str] = DEFAULT_ALLOW_LIST
    rate_limit: RateLimit | None = None
    faults: Sequence[Fault] = ()
    cache_dir: Path | None = None
    batch_records: int = render.BATCH_RECORDS


def build_options(**options: Any) -> ServerOptions:
    """ServerOptions from keyword options given as plain data (JSON-like) or as the types."""
    opts = ServerOptions()
    for name, value in options.items():
        if name == "tokens":
            value = {
                tok: spec
                if isinstance(spec, TokenSpec)
                else TokenSpec(**spec)
                if isinstance(spec, Mapping)
                else TokenSpec(account_access=bool(spec))
                for tok, spec in value.items()
            }
        elif name == "rate_limit" and isinstance(value, Mapping):
            value = RateLimit.from_json(value)
        elif name == "faults":
            value = [f if isinstance(f, Fault) else Fault.from_json(f) for f in value]
        elif name == "cache_dir" and value is not None:
            value = Path(value)
        elif name == "allow_list":
            value = tuple(str(ipaddress.ip_network(n, strict=False)) for n in value)
        elif name not in ServerOptions.__dataclass_fields__:
            raise TypeError(f"unknown simulator option {name!r}")
        setattr(opts, name, value)
    return opts


class _Reject(Exception):
    def __init__(self, code: int) -> None:
        self.code = code


class Simulator:
    """The HTTP face of a Universe; mutable at run time through `control`."""

    def __init__(self, config: SimConfig, options: ServerOptions | None = None) -> None:
        opts = options or ServerOptions()
        self.config = config
        self.universe = Universe(config)
        self.day = config.day
        self.tokens: dict[str, TokenSpec] = dict(opts.tokens)
        self.allow_list = [ipaddress.ip_network(n, strict=False) for n in opts.allow_list]
        self.rate_limit = opts.rate_limit
        self.faults: list[Fault] = list(opts.faults)
        self.cache_dir = opts.cache_dir
        self.batch_records = opts.batch_records
        self.stats = Stats()
        self._token_use: dict[str, _TokenUse] = collections.defaultdict(_TokenUse)
        self._release = asyncio.Event()
        self._cache_locks: dict[Path, asyncio.Lock] = {}
        digest = hashlib.blake2b(repr(replace(config, day=0)).encode(), digest_size=6).hexdigest()
        self._cache_tag = digest

    # --- the app -------------------------------------------------------------------------------

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post(API_PREFIX + "{resource}", self.handle_api)
        app.router.add_post(CONTROL_PATH, self.handle_control)
        app.router.add_get(STATS_PATH, self.handle_stats)
        app.router.add_post(STATS_PATH + "/reset", self.handle_stats_reset)
        return app

    def set_day(self, day: int) -> None:
        self.day = day

    # --- control -------------------------------------------------------------------------------

    def control(self, body: Mapping[str, Any]) -> dict[str, Any]:
        """Apply one control document (README: the simulator); returns the resulting state."""
        unknown = set(body) - {
            "day",
            "rate_limit",
            "faults",
            "clear_faults",
            "allow_list",
            "tokens",
            "release",
        }
        if unknown:
            raise ValueError(f"unknown control keys: {sorted(unknown)}")
        if body.get("clear_faults"):
            self.faults.clear()
        if "day" in body:
            self.set_day(int(body["day"]))
        if "rate_limit" in body:
            rl = body["rate_limit"]
            self.rate_limit = None if rl is None else RateLimit.from_json(rl)
        if "faults" in body:
            self.faults.extend(Fault.from_json(f) for f in body["faults"])
        if "allow_list" in body:
            self.allow_list = [ipaddress.ip_network(n, strict=False) for n in body["allow_list"]]
        if "tokens" in body:
            self.tokens = build_options(tokens=body["tokens"]).tokens  # type: ignore[assignment]
        if body.get("release"):
            self._release.set()
            self._release = asyncio.Event()
        return self.state()

    def state(self) -> dict[str, Any]:
        return {
            "day": self.day,
            "faults": [asdict(f) for f in self.faults],
            "rate_limit": asdict(self.rate_limit) if self.rate_limit else None,
            "allow_list": [str(n) for n in self.allow_list],
        }

    @staticmethod
    def _loopback(request: web.Request) -> bool:
        try:
            return ipaddress.ip_address(request.remote or "").is_loopback
        except ValueError:
            return False

    async def handle_control(self, request: web.Request) -> web.Response:
        if not self._loopback(request):
            return web.Response(status=403, text="control answers on loopback only\n")
        try:
            body = await request.json()
            if not isinstance(body, dict):
                raise ValueError("the control body must be a JSON object")
            return web.json_response(self.control(body))
        except (ValueError, TypeError, KeyError) as exc:
            return web.json_response({"error": str(exc)}, status=400)

    async def handle_stats(self, request: web.Request) -> web.Response:
        if not self._loopback(request):
            return web.Response(status=403, text="stats answer on loopback only\n")
        return web.json_response(self.stats.as_json())

    async def handle_stats_reset(self, request: web.Request) -> web.Response:
        if not self._loopback(request):
            return web.Response(status=403, text="stats answer on loopback only\n")
        self.stats.reset()
        return web.json_response(self.stats.as_json())

    # --- the API -------------------------------------------------------------------------------

    async def handle_api(self, request: web.Request) -> web.StreamResponse:
        resource = catalog.BY_PATH.get(request.match_info["resource"])
        if resource is None:
            raise web.HTTPNotFound(text="no such resource\n")
        self.stats.started(resource.path, time.monotonic())
        try:
            return await self._serve(request, resource)
        finally:
            self.stats.finished()

    def _error(
        self, code: int, status: int = 200, headers: Mapping[str, str] | None = None
    ) -> web.Response:
        self.stats.rejections[str(code) if status == 200 else f"http_{status}"] += 1
        body = render.envelope_error(code)
        return web.Response(
            status=status,
            body=body,
            headers={"Content-Type": render.CONTENT_TYPE, **(headers or {})},
        )

    def _peer_allowed(self, request: web.Request) -> bool:
        try:
            peer = ipaddress.ip_address(request.remote or "")
        except ValueError:
            return False
        if isinstance(peer, ipaddress.IPv6Address) and peer.ipv4_mapped:
            peer = peer.ipv4_mapped
        return any(peer.version == n.version and peer in n for n in self.allow_list)

    async def _serve(self, request: web.Request, resource: Resource) -> web.StreamResponse:
        if not self._peer_allowed(request):
            return self._error(catalog.IP_NOT_ALLOWED)
        body = await request.text()
        try:
            pairs = parse_qsl(body, keep_blank_values=True, strict_parsing=bool(body))
        except ValueError:
            # Malformed form: still find the token (101 comes first), then the nameless pair
            # makes _resolve answer 202.
            pairs = [*parse_qsl(body, keep_blank_values=True), ("", "")]
        tokens = [v for k, v in pairs if k == catalog.PARAM_TOKEN]
        spec = self.tokens.get(tokens[0]) if len(tokens) == 1 else None
        if spec is None:
            return self._error(catalog.INVALID_TOKEN)
        token = tokens[0]
        use = self._token_use[token]
        limited = self._rate_check(use)
        if limited is not None:
            return limited
        use.in_flight += 1
        try:
            return await self._serve_accepted(request, resource, pairs, spec)
        finally:
            use.in_flight -= 1

    def _rate_check(self, use: _TokenUse) -> web.Response | None:
        rl = self.rate_limit
        if rl is None:
            return None
        now = time.monotonic()
        starts = use.starts
        while starts and now - starts[0] >= rl.period:
            starts.popleft()
        over = (rl.starts_per_second is not None and len(starts) >= rl.starts_per_second) or (
            rl.max_concurrent is not None and use.in_flight >= rl.max_concurrent
        )
        if not over:
            starts.append(now)
            return None
        # Which limit refused it: a client over its start rate or over its requests in flight.
        self.stats.limited[
            "in_flight"
            if rl.max_concurrent is not None and use.in_flight >= rl.max_concurrent
            else "starts"
        ] += 1
        if rl.mode == "http429":
            return self._error(
                catalog.RATE_LIMITED, status=429, headers={"Retry-After": str(rl.retry_after)}
            )
        return self._error(catalog.RATE_LIMITED)

    def _resolve(
        self, resource: Resource, pairs: list[tuple[str, str]], spec: TokenSpec
    ) -> tuple[list[Event] | None, str | None]:
        """(the events in scope, the scope name for fault matching). Raises _Reject."""
        names = [k for k, _ in pairs]
        allowed = {catalog.PARAM_TOKEN, catalog.PARAM_EVENT}
        if any(n not in allowed for n in names) or len(names) != len(set(names)):
            raise _Reject(catalog.BAD_PARAMETER)
        params = dict(pairs)
        home = self.universe.event_at(spec.home_event)
        if catalog.PARAM_EVENT not in params:
            if not resource.per_event:
                return (None if spec.account_access else [home]), None
            return [home], home.guid
        value = params[catalog.PARAM_EVENT].strip()
        if value.lower() == catalog.EVENT_ALL:
            if not resource.allows_event_all:
                raise _Reject(catalog.EVENT_ALL_UNSUPPORTED)
            if not spec.account_access:
                raise _Reject(catalog.NO_ACCOUNT_ACCESS)
            return None, catalog.EVENT_ALL
        if not GUID_RE.match(value):
            raise _Reject(catalog.BAD_PARAMETER)
        event = self.universe.find_event(value, self.day)
        if event is None:
            raise _Reject(catalog.UNKNOWN_EVENT)
        if event.index != home.index and not spec.account_access:
            raise _Reject(catalog.NO_ACCOUNT_ACCESS)
        return [event], event.guid

    def _take_faults(self, path: str, scope: str | None) -> dict[str, Fault]:
        """The first matching fault of each kind, each counted down by one use.

        Faults of one kind queue up in the order they were set, so `[500 once, 503 once]`
        answers 500, then 503, then succeeds.
        """
        hit: dict[str, Fault] = {}
        for fault in list(self.faults):
            if fault.kind in hit or not fault.matches(path, scope):
                continue
            hit[fault.kind] = fault
            if fault.times is not None:
                fault.times -= 1
                if fault.times <= 0:
                    self.faults.remove(fault)
        return hit

    async def _serve_accepted(
        self,
        request: web.Request,
        resource: Resource,
        pairs: list[tuple[str, str]],
        spec: TokenSpec,
    ) -> web.StreamResponse:
        try:
            if request.query:
                raise _Reject(catalog.BAD_PARAMETER)  # parameters belong in the body, never the URL
            events, scope = self._resolve(resource, pairs, spec)
        except _Reject as rej:
            return self._error(rej.code)
        day = self.day
        by_kind = self._take_faults(resource.path, scope)
        if "hold" in by_kind:
            await self._release.wait()
        if "latency" in by_kind:
            await asyncio.sleep(float(by_kind["latency"].value or 0))
        if "http_status" in by_kind:
            status = int(by_kind["http_status"].value or 500)
            self.stats.rejections[f"http_{status}"] += 1
            return web.Response(status=status, text=f"simulated HTTP {status}\n")
        if "api_code" in by_kind:
            return self._error(int(by_kind["api_code"].value or catalog.INTERNAL_ERROR))
        doc_faults = render.DocFaults(
            code_after_payload=(
                int(by_kind["code_after_payload"].value or 0)
                if "code_after_payload" in by_kind
                else None
            ),
            duplicates=int(by_kind["duplicates"].value or 1) if "duplicates" in by_kind else 0,
            unknown_element=(
                str(by_kind["unknown_elements"].value or "vendorNewField")
                if "unknown_elements" in by_kind
                else None
            ),
            invalid_xml="invalid_xml" in by_kind,
        )
        style = render.style_for(self.config.seed, day)

        def make_chunks() -> Iterator[bytes]:
            raws = self.universe.raw_records(resource.entity, day, events)
            return render.iter_document(resource, raws, style, doc_faults, self.batch_records)

        if "truncate" in by_kind:
            return await self._truncated(request, make_chunks, by_kind["truncate"].value)
        chunks = make_chunks()
        bandwidth = float(by_kind["bandwidth"].value) if "bandwidth" in by_kind else None
        if self.cache_dir is not None and bandwidth is None and doc_faults == render.DocFaults():
            return await self._cached(request, resource, events, day, chunks)
        return await self._stream(request, chunks, bandwidth)

    async def _stream(
        self, request: web.Request, chunks: Iterable[bytes], bandwidth: float | None
    ) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": render.CONTENT_TYPE})
        resp.enable_chunked_encoding()
        await resp.prepare(request)
        start = time.monotonic()
        sent = 0
        try:
            for chunk in chunks:
                if bandwidth is None:
                    await resp.write(chunk)
                    sent += len(chunk)
                    continue
                piece = max(1, int(bandwidth / 20))
                for i in range(0, len(chunk), piece):
                    part = chunk[i : i + piece]
                    await resp.write(part)
                    sent += len(part)
                    ahead = start + sent / bandwidth - time.monotonic()
                    if ahead > 0:
                        await asyncio.sleep(ahead)
            await resp.write_eof()
        except ConnectionError:
            # The client hung up mid-dump (a client test cancelling, a timeout): not our error.
            self.stats.rejections["client_disconnected"] += 1
        finally:
            self.stats.bytes_sent += sent
        return resp

    async def _truncated(
        self,
        request: web.Request,
        make_chunks: Callable[[], Iterable[bytes]],
        spec: Mapping[str, Any],
    ) -> web.StreamResponse:
        """Write a cut-off response straight to the socket, then close it (no terminal chunk).

        The document is rendered twice (once to learn its length, once to send the cut), so
        memory stays flat however large the dump.
        """
        total = sum(len(c) for c in make_chunks())
        at = spec.get("at", 0.5)
        cut = int(total * at) if isinstance(at, float) and at < 1 else int(at)
        cut = max(0, min(cut, total - 1))
        mode = spec["mode"]
        head = ["HTTP/1.1 200 OK", f"Content-Type: {render.CONTENT_TYPE}", "Connection: close"]
        if mode == "content_length":
            head.append(f"Content-Length: {total}")
        elif mode == "chunked":
            head.append("Transfer-Encoding: chunked")
        # close_delimited: no length at all, so nothing in HTTP says the body is short.
        self.stats.rejections[f"truncated_{mode}"] += 1
        transport = request.transport
        if transport is None or transport.is_closing():
            return web.Response()
        transport.write(("\r\n".join(head) + "\r\n\r\n").encode())
        remaining = cut
        for chunk in make_chunks():
            if remaining <= 0:
                break
            part = chunk[:remaining]
            remaining -= len(part)
            if mode == "chunked":
                transport.write(b"%x\r\n%s\r\n" % (len(part), part))
            else:
                transport.write(part)
            self.stats.bytes_sent += len(part)
            # A raw transport has no public drain(): poll its buffer so memory stays flat.
            while transport.get_write_buffer_size() > (1 << 20) and not transport.is_closing():  # noqa: ASYNC110
                await asyncio.sleep(0.005)
        transport.close()  # flushes what was written, then closes
        # aiohttp finds the transport closing and drops this response: the client saw only the cut.
        return web.Response()

    async def _cached(
        self,
        request: web.Request,
        resource: Resource,
        events: Sequence[Event] | None,
        day: int,
        chunks: Iterable[bytes],
    ) -> web.StreamResponse:
        assert self.cache_dir is not None
        # Name the file by what is in it (not by the request): event.do without `event` is the
        # whole account for one token and a single event for another.
        name = "all" if events is None else "+".join(e.guid.lower() for e in events)
        path = self.cache_dir / f"{self._cache_tag}-{resource.entity}-{name}-d{day}.xml"
        lock = self._cache_locks.setdefault(path, asyncio.Lock())
        async with lock:
            if not path.exists():
                await asyncio.to_thread(_write_atomic, path, chunks)
        resp = _SentFile(path, headers={"Content-Type": render.CONTENT_TYPE})
        await resp.prepare(request)
        self.stats.bytes_sent += path.stat().st_size
        return resp


class _SentFile(web.FileResponse):
    """A FileResponse sent inside the handler (so in-flight stats cover the transfer)."""

    async def prepare(self, request: web.BaseRequest) -> AbstractStreamWriter | None:
        if self.prepared:
            return None  # aiohttp prepares returned responses again: the file went already
        return await super().prepare(request)


def _write_atomic(path: Path, chunks: Iterable[bytes]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".render-")
    try:
        with os.fdopen(fd, "wb") as fh:
            for chunk in chunks:
                fh.write(chunk)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


class RunningSimulator:
    """A simulator serving on a real socket: its URL, its truth, and its knobs."""

    def __init__(self, sim: Simulator, host: str, port: int) -> None:
        self.simulator = sim
        self.host = host
        self.port = port
        url_host = f"[{host}]" if ":" in host else host
        self.root_url = f"http://{url_host}:{port}"
        self.base_url = f"{self.root_url}{API_PREFIX}"

    @property
    def universe(self) -> Universe:
        return self.simulator.universe

    @property
    def day(self) -> int:
        return self.simulator.day

    def set_day(self, day: int) -> None:
        self.simulator.set_day(day)

    async def wait_in_flight(self, n: int) -> None:
        """Return once at least n API requests are in flight (e.g. parked by a `hold` fault)."""
        await self.simulator.stats.wait_in_flight(n)

    async def wait_idle(self) -> None:
        """Return once no API request is in flight."""
        await self.simulator.stats.wait_idle()

    async def control(self, body: Mapping[str, Any]) -> dict[str, Any]:
        """POST a control document to the running server (over HTTP, like any other client)."""
        url = self.root_url + CONTROL_PATH
        async with aiohttp.ClientSession() as session, session.post(url, json=body) as resp:
            data: dict[str, Any] = await resp.json()
            if resp.status != 200:
                raise ValueError(data.get("error", f"control failed: HTTP {resp.status}"))
            return data

    async def stats(self) -> dict[str, Any]:
        url = self.root_url + STATS_PATH
        async with aiohttp.ClientSession() as session, session.get(url) as resp:
            data: dict[str, Any] = await resp.json()
            return data

    async def reset_stats(self) -> dict[str, Any]:
        url = self.root_url + STATS_PATH + "/reset"
        async with aiohttp.ClientSession() as session, session.post(url) as resp:
            data: dict[str, Any] = await resp.json()
            return data


@contextlib.asynccontextmanager
async def run_simulator(
    config: SimConfig | None = None, host: str = "127.0.0.1", port: int = 0, **options: Any
) -> AsyncIterator[RunningSimulator]:
    """Serve a simulator on host:port (0: a free port) for the duration of the block."""
    sim = Simulator(config or SimConfig(), build_options(**options))
    runner = web.AppRunner(sim.app(), access_log=None, handle_signals=False, shutdown_timeout=1.0)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    await site.start()
    try:
        server = site._server  # the bound port when port=0
        sockets = getattr(server, "sockets", None) or []
        bound = sockets[0].getsockname()[1] if sockets else port
        yield RunningSimulator(sim, host, bound)
    finally:
        sim._release.set()  # never leave a held request hanging at shutdown
        await runner.cleanup()


async def serve_forever(
    config: SimConfig, host: str, port: int, announce: Any = print, **options: Any
) -> None:
    """Serve until cancelled (the `syncsvc simulate` command)."""
    async with run_simulator(config, host, port, **options) as sim:
        tokens = ", ".join(sorted(sim.simulator.tokens))
        announce(f"simulator serving {sim.base_url} (day {sim.day}; tokens: {tokens})")
        await asyncio.Event().wait()
