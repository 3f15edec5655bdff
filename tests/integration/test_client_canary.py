"""A canary token never shows in logs or exception text, across every client path over HTTP.

The canary is NOT registered with the log redaction: this proves the client keeps the token out
in the first place, not that the last line of defence scrubs it.
"""

from __future__ import annotations

import io
import traceback
from typing import Any

from syncsvc import catalog, logs
from syncsvc.cvent.retry import RetryPolicy
from tests.apiserver import EVENTS, Reply, client_for, collect, listen, render, serve_api
from tests.integration.test_client_attacks import ATTACKS

CANARY = "CANARY-tok-4e1d9b7a2c"
POLICY = RetryPolicy(max_attempts=2, base=0.001, cap=0.001, budget=1.0, random=lambda: 0.5)
BODY = render(catalog.USERS, [{"userRef": f"U{i}"} for i in range(50)], code_after_payload=True)

# name -> (replies for the next requests, client settings)
SCENARIOS: dict[str, tuple[list[Reply], dict[str, Any]]] = {
    "success": ([], {}),
    **{f"code_{c}": ([Reply(code=c)] * 2, {}) for c in (*catalog.RESPONSE_CODES, 777) if c},
    "http_429": ([Reply(status=429, body=b"", headers=[("Retry-After", "0")])] * 2, {}),
    "http_500": ([Reply(status=500, body=b"oops")] * 2, {}),
    "http_404": ([Reply(status=404, body=b"nope")], {}),
    "redirect": ([Reply(status=307, body=b"", headers=[("Location", "http://127.0.0.1:9/")])], {}),
    "reset": ([Reply(drop=True)] * 2, {}),
    "read_timeout": ([Reply(delay=0.5)] * 2, {"read_timeout": 0.1}),
    "deadline": ([Reply(delay=0.5)] * 2, {"fetch_deadline": 0.1}),
    **{
        f"cut_{framing}": ([Reply(body=BODY, framing=framing, cut=len(BODY) // 2)] * 2, {})
        for framing in ("length", "chunked", "close")
    },
    "cut_gzip": ([Reply(body=BODY, gzip=True, cut=100)] * 2, {}),
    "malformed": ([Reply(body=BODY.replace(b"</userRef>", b"</x>", 1))], {}),
}


def _texts(exc: BaseException) -> list[str]:
    out = ["".join(traceback.format_exception(exc))]
    seen: BaseException | None = exc
    while seen is not None:
        out += [str(seen), repr(seen), repr(getattr(seen, "context", None))]
        seen = seen.__cause__ or seen.__context__
    return out


async def test_canary_token_never_reaches_logs_or_exception_text() -> None:
    stream = io.StringIO()
    logs.configure("debug", "json", stream=stream)
    log = logs.get_logger("test")
    texts: list[str] = []
    outcomes: dict[str, str] = {}
    async with listen() as listener, serve_api() as server:
        server.tokens[CANARY] = True
        cases = dict(SCENARIOS)
        for name, (build, kw, gzipped) in ATTACKS.items():
            if name.startswith("gzip"):
                continue  # slow to build; the gzip path is covered by cut_gzip
            headers = [("Content-Encoding", "gzip")] if gzipped else []
            cases[f"attack_{name}"] = ([Reply(body=build(listener.url), headers=headers)], kw)
        for name, (replies, kw) in cases.items():
            server.push(*replies)
            async with client_for(server, policy=POLICY, token=CANARY, **kw) as client:
                try:
                    result = await client.fetch(catalog.USERS, EVENTS[0], collect)
                    texts += [repr(result), str(result)]
                    outcomes[name] = "ok"
                except Exception as exc:
                    texts += _texts(exc)
                    log.exception("fetch_failed", case=name)
                    outcomes[name] = type(exc).__name__
                texts += [repr(client), str(client.stats), repr(client.settings)]
            server.script.clear()
    assert outcomes["success"] == "ok"
    assert outcomes["code_101"] == "InvalidTokenError"
    assert outcomes["cut_close"] == "RetriesExhaustedError"
    assert all(f.form.get("apiToken") == [CANARY] for f in server.seen)  # it was really used
    captured = stream.getvalue()
    assert "fetch_failed" in captured
    assert "fetch_retrying" in captured
    assert CANARY not in captured
    leaks = [t for t in texts if CANARY in t]
    assert leaks == []
