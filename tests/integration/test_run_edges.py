"""Whole runs at the client's edges: a real PostgreSQL, real `syncsvc` processes and a hostile
Conference API on loopback. An echoed token reaches no sink; a run ends by its deadline; an event
whose GUID is `all` fails clearly; errors are one line on stderr; debug logging logs."""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import subprocess
import sys
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any
from urllib.parse import quote, quote_plus

import asyncpg
import pytest
from sqlalchemy.engine import URL
from sqlalchemy.ext.asyncio import AsyncEngine

from syncsvc import catalog, scheduler
from syncsvc.errors import AmbiguousEventError
from syncsvc.settings import Settings
from syncsvc.store import db
from tests.apiserver import ApiServer, Reply, make_records, render
from tests.processes import cli_env

pytestmark = pytest.mark.db

TOKEN = "s3cr3t+tok/en=&42 x"  # URL-encodes, XML-escapes and has a space


class Account(ApiServer):
    """The test API server with an account of `events` (a GUID may be anything, `all` too),
    answers replaceable per resource, and resources whose dump trickles for ever."""

    def __init__(self, events: tuple[str, ...], **kw: Any) -> None:
        super().__init__(**kw)
        self.events = events
        self.answers: dict[str, Callable[[dict[str, list[str]]], Reply]] = {}
        self.trickle: set[str] = set()
        self.trickled = asyncio.Event()
        self._stopping = asyncio.Event()

    def _default(self, peer: str, target: str, form: dict[str, list[str]]) -> Reply:
        path = target.rsplit("/", 1)[-1]
        if path in self.answers:
            return self.answers[path](form)
        resource = catalog.BY_PATH.get(path)
        if resource is None:
            return Reply(status=404, body=b"not found")
        if form.get(catalog.PARAM_TOKEN, [""])[0] not in self.tokens:
            return Reply(code=catalog.INVALID_TOKEN)
        if resource is catalog.EVENTS:
            events = [{"eventGUID": g, "eventCode": g, "eventName": g} for g in self.events]
            return Reply(body=render(resource, events))
        event = form.get(catalog.PARAM_EVENT, [None])[0]
        if event == catalog.EVENT_ALL:  # what the API does: the word, not a GUID
            if not resource.allows_event_all:
                return Reply(code=catalog.EVENT_ALL_UNSUPPORTED)
            scope = list(self.events)
        elif event is None:
            scope = [self.events[0]]
        elif event not in self.events:
            return Reply(code=catalog.UNKNOWN_EVENT)
        else:
            scope = [event]
        records = [r for e in scope for r in make_records(resource, e, self.records_per_event)]
        return Reply(body=render(resource, records))

    async def _respond(
        self,
        peer: str,
        target: str,
        form: dict[str, list[str]],
        req_headers: dict[str, str],
        writer: asyncio.StreamWriter,
    ) -> bool:
        path = target.rsplit("/", 1)[-1]
        if path not in self.trickle:
            return await super()._respond(peer, target, form, req_headers, writer)
        writer.write(
            b"HTTP/1.1 200 OK\r\nContent-Length: 100000000\r\n\r\n"
            b"<?xml version='1.0'?><response><responseCode>0</responseCode><users>"
        )
        await writer.drain()
        self.trickled.set()
        while not self._stopping.is_set():  # one byte a second, until the client goes
            writer.write(b" ")
            await writer.drain()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), 1.0)
        return False

    async def stop(self) -> None:
        self._stopping.set()
        await super().stop()


@asynccontextmanager
async def account(events: tuple[str, ...] = ("E-0001", "E-0002")) -> AsyncIterator[Account]:
    server = Account(events)
    server.tokens[TOKEN] = True
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


def _env(url: URL | str, base_url: str, **over: str) -> dict[str, str]:
    quick_retries = {
        "SYNCSVC_LOG_FORMAT": "json",
        "SYNCSVC_RETRY_ATTEMPTS": "2",
        "SYNCSVC_RETRY_BASE_DELAY": "0.01",
        "SYNCSVC_RETRY_MAX_DELAY": "0.02",
    }
    return cli_env(url, base_url, TOKEN, **(quick_retries | over))


def _syncsvc(env: dict[str, str], *args: str) -> tuple[int, str, str]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "syncsvc", *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return proc.returncode, out, err


async def syncsvc(env: dict[str, str], *args: str) -> tuple[int, str, str]:
    """`syncsvc ARGS` in its own process, while this loop serves the API."""
    return await asyncio.to_thread(_syncsvc, env, *args)


async def _every_row_as_text(url: URL) -> str:
    conn = await asyncpg.connect(db.libpq_url(url))
    try:
        tables = await conn.fetch("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")
        out = []
        for t in tables:
            rows = await conn.fetch(f'SELECT t::text AS row FROM "{t["tablename"]}" t')
            out += [r["row"] for r in rows]
        return "\n".join(out)
    finally:
        await conn.close()


def _spellings(secret: str) -> list[str]:
    return [
        secret,
        quote(secret, safe=""),
        quote(secret, safe="").lower(),
        quote(secret),
        quote_plus(secret),
        secret.replace("&", "&amp;"),
    ]


def _echo(code: str, message: str) -> bytes:
    return (
        f'<?xml version="1.0"?><response><responseCode>{code}</responseCode>'
        f"<responseMessage>{message}</responseMessage></response>"
    ).encode()


XML_TOKEN = TOKEN.replace("&", "&amp;")


async def test_a_token_the_server_echoes_reaches_no_row_output_or_log(db_url: URL) -> None:
    async with account() as api:
        # Each data resource echoes the token its own way; event.do is healthy for run 1.
        api.answers["userData.do"] = lambda form: Reply(
            body=_echo("999", f"bad token {XML_TOKEN} rejected")
        )
        api.answers["sessionData.do"] = lambda form: Reply(
            body=_echo("998", "apiToken=" + quote_plus(TOKEN).replace("&", "&amp;"))
        )
        api.answers["exhibitorData.do"] = lambda form: (
            Reply(status=403, body=f"forbidden {TOKEN}".encode())
            if form.get(catalog.PARAM_EVENT) == ["E-0001"]
            else Reply(
                status=500,
                body=f"oops {TOKEN}".encode(),
                headers=[("X-Echo", quote(TOKEN, safe="")), ("Retry-After", TOKEN)],
            )
        )
        env = _env(db_url, api.base_url, SYNCSVC_LOG_LEVEL="debug")
        run1 = await syncsvc(env, "run")
        # Run 2: event.do itself answers with the token, so the run's own record carries it.
        api.answers["event.do"] = lambda form: Reply(
            body=_echo("999", f"bad token {XML_TOKEN} rejected")
        )
        run2 = await syncsvc(env, "run")
        api.answers["event.do"] = lambda form: Reply(body=_echo(XML_TOKEN, "x"))
        run3 = await syncsvc(env, "run")
        status = await syncsvc(env, "status", "--last", "5")
        assert all(len(seen.form[catalog.PARAM_TOKEN]) == 1 for seen in api.seen)
    rows = await _every_row_as_text(db_url)
    sinks = {
        "database rows": rows,
        "run stdout": run1[1] + run2[1] + run3[1],
        "run stderr (logs, errors)": run1[2] + run2[2] + run3[2],
        "status": status[1] + status[2],
    }
    for sink, text in sinks.items():
        for spelling in _spellings(TOKEN):
            assert spelling not in text, f"the token ({spelling!r}) reached {sink}"
    # What the server said is kept, with the token redacted: the sinks were really written.
    assert (run1[0], run2[0], run3[0], status[0]) == (3, 1, 1, 0)  # partial, failed, failed
    assert "bad token *** rejected" in rows
    assert "apiToken=***" in rows
    assert "bad token *** rejected" in run2[2]
    assert "bad token *** rejected" in status[1]
    assert "not a number: '***'" in status[1]
    assert "Traceback" not in run1[2] + run2[2] + run3[2]


async def test_debug_log_level_writes_debug_lines(db_url: URL) -> None:
    async with account() as api:
        rc, _, err = await syncsvc(_env(db_url, api.base_url, SYNCSVC_LOG_LEVEL="debug"), "run")
    assert rc == 0, err
    lines = [json.loads(line) for line in err.splitlines() if line.startswith("{")]
    debug = [line for line in lines if line["level"] == "debug"]
    assert {"request_started", "response_started"} <= {line["event"] for line in debug}
    assert TOKEN not in err


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_an_unreachable_api_is_one_line_on_stderr_naming_host_port_and_reason(
    db_url: URL,
) -> None:
    port = _closed_port()
    env = _env(db_url, f"http://127.0.0.1:{port}/api/", SYNCSVC_LOG_LEVEL="error")
    rc, out, err = await syncsvc(env, "run")
    assert rc == 1
    said = [line for line in err.splitlines() if line.startswith("syncsvc:")]
    assert len(said) == 1, err
    assert f"cannot connect to 127.0.0.1:{port} (Connection refused)" in said[0]
    assert "Gave up after 2 attempts" in said[0]
    assert said[0].count("resource=event.do") == 1
    assert "cannot connect" not in out
    assert "entity" not in out  # no empty summary table above it


@pytest.mark.parametrize("port", ["54x32", "99999", "1_0"])
async def test_a_malformed_database_url_port_is_one_line_and_exit_2(port: str) -> None:
    url = f"postgresql://syncsvc:hunter2-pw@127.0.0.1:{port}/syncsvc"
    for command in (["status"], ["db", "current"]):
        rc, out, err = await syncsvc(_env(url, "http://127.0.0.1:9/api/"), *command)
        assert rc == 2, err
        assert len(err.strip().splitlines()) == 1, err
        assert "SYNCSVC_DATABASE_URL" in err
        assert "port" in err
        assert "Traceback" not in err
        assert "hunter2" not in err + out


def _settings(api: ApiServer, **over: Any) -> Settings:
    return Settings.load({}).replace(
        base_url=api.base_url,
        api_token=TOKEN,
        retry_attempts=2,
        retry_base_delay=0.01,
        retry_max_delay=0.02,
        **over,
    )


async def test_an_event_whose_guid_is_all_fails_its_per_event_units_clearly(
    engine: AsyncEngine, db_url: URL
) -> None:
    async with account(("E-0001", "all")) as api:
        result = await scheduler.run_once(_settings(api), engine)
        per_event_all = [
            s
            for s in api.seen
            if s.target.endswith("exhibitorData.do")
            and s.form.get(catalog.PARAM_EVENT) == [catalog.EVENT_ALL]
        ]
    assert per_event_all == []  # never asked as event=all
    assert result.status == "partial"
    failed = [o for o in result.outcomes if o.status == "failed"]
    assert [(o.unit.resource.entity, o.unit.event) for o in failed] == [("exhibitor", "all")]
    assert isinstance(failed[0].error, AmbiguousEventError)
    conn = await asyncpg.connect(db.libpq_url(db_url))
    try:
        row = await conn.fetchrow(
            "SELECT status, error_message FROM fetches WHERE resource = 'exhibitorData.do'"
            " AND scope = 'all'"
        )
        # The event=all dumps do carry that event's users and sessions.
        users = await conn.fetchval("SELECT count(*) FROM users WHERE event_guid = 'all'")
        exhibitors = await conn.fetchval(
            "SELECT count(*) FROM exhibitors WHERE event_guid = 'E-0001'"
        )
    finally:
        await conn.close()
    assert row["status"] == "failed"
    assert "cannot be requested on its own" in row["error_message"]
    assert users == api.records_per_event
    assert exhibitors == api.records_per_event


async def test_a_run_past_its_deadline_ends_partial_with_its_units_in_flight_cancelled(
    engine: AsyncEngine, db_url: URL
) -> None:
    async with account() as api:
        api.trickle.add("userData.do")  # the users dump never ends, one byte a second
        settings = _settings(api, run_deadline=3.0, stall_min_rate=0.0, use_event_all=False)
        result = await asyncio.wait_for(scheduler.run_once(settings, engine), timeout=120)
        assert api.trickled.is_set()
    assert result.status == "partial"
    assert result.error is not None
    assert "the run passed its deadline (run_deadline 3 s)" in result.error
    conn = await asyncpg.connect(db.libpq_url(db_url))
    try:
        run = await conn.fetchrow("SELECT status, error_message FROM runs")
        units = await conn.fetch("SELECT resource, scope, status, error_message FROM fetches")
    finally:
        await conn.close()
    assert run["status"] == "partial"
    assert "deadline" in run["error_message"]
    by_resource: dict[str, set[str]] = {}
    for u in units:
        by_resource.setdefault(u["resource"], set()).add(u["status"])
    assert "running" not in {u["status"] for u in units}
    assert by_resource["event.do"] == {"applied"}
    assert by_resource["userData.do"] <= {"cancelled"}
    assert "cancelled" in by_resource["userData.do"]
    cancelled = [u for u in units if u["status"] == "cancelled"]
    assert all("run_deadline" in u["error_message"] for u in cancelled)
