"""Hostile documents over real HTTP: each refused in under a second, with flat memory, no egress."""

from __future__ import annotations

import gc
import re
import time
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from syncsvc import catalog
from syncsvc.cvent.client import DECODED_PIECE
from syncsvc.errors import UnsafeXmlError
from tests.apiserver import EVENTS, Reply, client_for, collect, listen, serve_api


@pytest.fixture(params=["never", "always"], ids=["in-process", "in-worker"])
def parse_mode(request: pytest.FixtureRequest) -> str:
    """Every case runs against the one-document parse and the split parse in workers alike."""
    return str(request.param)


HEAD = b'<?xml version="1.0" encoding="UTF-8"?>\n'
OPEN = b"<response><responseCode>0</responseCode><users>"
CLOSE = b"</users></response>"
MB = 1024 * 1024
BOMB_CAP = 8 * MB


def _doctype(subset: str, body: bytes) -> bytes:
    return HEAD + f"<!DOCTYPE response [{subset}]>".encode() + OPEN + body + CLOSE


def billion_laughs(_: str) -> bytes:
    ents = ['<!ENTITY lol "lol">'] + [
        f'<!ENTITY lol{i} "{f"&lol{i - 1};" * 10 if i > 1 else "&lol;" * 10}">'
        for i in range(1, 10)
    ]
    return _doctype("".join(ents), b"<user><userRef>&lol9;</userRef></user>")


def quadratic_blowup(_: str) -> bytes:
    return _doctype(
        f'<!ENTITY a "{"x" * 100_000}">',
        b"<user><userRef>" + b"&a;" * 20_000 + b"</userRef></user>",
    )


def external_entity_file(_: str) -> bytes:
    return _doctype(
        '<!ENTITY xxe SYSTEM "file:///etc/passwd">', b"<user><userRef>&xxe;</userRef></user>"
    )


def external_entity_loopback(url: str) -> bytes:
    return _doctype(f'<!ENTITY xxe SYSTEM "{url}">', b"<user><userRef>&xxe;</userRef></user>")


def parameter_entity_loopback(url: str) -> bytes:
    return _doctype(f'<!ENTITY % p SYSTEM "{url}"> %p;', b"<user><userRef>1</userRef></user>")


def external_dtd(url: str) -> bytes:
    return HEAD + f'<!DOCTYPE response SYSTEM "{url}">'.encode() + OPEN + b"<user/>" + CLOSE


def text_node_11mb(_: str) -> bytes:
    return HEAD + OPEN + b"<user><abstract>" + b"x" * (11 * MB) + b"</abstract></user>" + CLOSE


def nesting_depth_300(_: str) -> bytes:
    return HEAD + OPEN + b"<user>" + b"<x>" * 300 + b"</x>" * 300 + b"</user>" + CLOSE


def _gzip(prefix: bytes, unit: bytes, total: int) -> bytes:
    z = zlib.compressobj(9, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    block = unit * max(1, MB // len(unit))
    out = [z.compress(prefix)] + [z.compress(block) for _ in range(total // len(block))]
    return b"".join([*out, z.compress(CLOSE), z.flush()])


def gzip_bomb(_: str) -> bytes:
    """256 MB of whitespace inside the container, about 250 kB on the wire."""
    return _gzip(HEAD + OPEN, b" ", 256 * MB)


def gzip_bomb_of_records(_: str) -> bytes:
    """256 MB of well-formed 64 kB records: only the decoded-size cap can stop it."""
    record = (
        b"<user><userRef>U</userRef><abstract>" + b"x" * (64 * 1024 - 50) + b"</abstract></user>"
    )
    return _gzip(HEAD + OPEN, record, 256 * MB)


def gzip_bomb_of_elements(_: str) -> bytes:
    """256 MB of tiny non-record elements, each of which would be a node in the tree."""
    return _gzip(HEAD + OPEN, b"<a/>", 256 * MB)


# name -> (body builder, client settings, whether the body is gzip-encoded)
ATTACKS: dict[str, tuple[Callable[[str], bytes], dict[str, Any], bool]] = {
    "billion_laughs": (billion_laughs, {}, False),
    "quadratic_blowup": (quadratic_blowup, {}, False),
    "external_entity_file": (external_entity_file, {}, False),
    "external_entity_loopback": (external_entity_loopback, {}, False),
    "parameter_entity_loopback": (parameter_entity_loopback, {}, False),
    "external_dtd": (external_dtd, {}, False),
    "text_node_11mb": (text_node_11mb, {}, False),
    "nesting_depth_300": (nesting_depth_300, {}, False),
    "gzip_bomb_at_the_cap": (gzip_bomb_of_records, {"max_dump_bytes": BOMB_CAP}, True),
    "gzip_bomb_default_cap": (gzip_bomb, {}, True),
    "gzip_bomb_of_elements": (gzip_bomb_of_elements, {}, True),
}


def _status(field: str) -> int:
    text = Path("/proc/self/status").read_text()
    match = re.search(rf"^{field}:\s+(\d+) kB", text, re.M)
    assert match is not None
    return int(match.group(1)) * 1024


def _reset_peak_rss() -> None:
    # Linux: writing 5 to clear_refs resets VmHWM (the peak RSS) to the current RSS.
    Path("/proc/self/clear_refs").write_text("5")


@pytest.mark.parametrize("name", list(ATTACKS))
async def test_attack_is_refused_fast_with_flat_memory_and_no_connection(
    parse_mode: str, name: str
) -> None:
    build, settings, gzipped = ATTACKS[name]
    async with listen() as listener, serve_api() as server:
        body = build(listener.url)
        headers = [("Content-Encoding", "gzip")] if gzipped else []
        server.push(Reply(body=body, headers=headers, chunk=64 * 1024))
        async with client_for(server, parse_in_worker=parse_mode, **settings) as client:
            gc.collect()
            _reset_peak_rss()
            base = _status("VmRSS")
            t0 = time.perf_counter()
            with pytest.raises(UnsafeXmlError) as info:
                await client.fetch(catalog.USERS, EVENTS[0], collect, encoded=True)
            elapsed = time.perf_counter() - t0
            growth = _status("VmHWM") - base
            decoded = client.stats.decoded_bytes
    print(f"{name}: refused in {elapsed * 1000:.0f} ms, peak RSS +{growth / 1e6:.1f} MB")
    assert growth < 50 * 1024 * 1024, f"{name} grew the process by {growth / 1e6:.0f} MB"
    assert listener.connections == 0
    assert len(server.seen) == 1  # terminal: never retried
    assert "root:" not in str(info.value)  # nothing of /etc/passwd came back
    if name == "gzip_bomb_at_the_cap":
        assert "max_dump_bytes" in str(info.value)
        assert decoded <= BOMB_CAP + DECODED_PIECE  # stopped at the cap, not after


async def test_xinclude_is_never_processed(parse_mode: str) -> None:
    async with (
        listen() as listener,
        serve_api() as server,
        client_for(server, parse_in_worker=parse_mode) as client,
    ):
        xi = f'<xi:include xmlns:xi="http://www.w3.org/2001/XInclude" href="{listener.url}"/>'
        body = HEAD + OPEN + b"<user><userRef>U1</userRef>" + xi.encode() + b"</user>" + CLOSE
        server.push(Reply(body=body))
        result = await client.fetch(catalog.USERS, EVENTS[0], collect, encoded=True)
    assert result.records == 1
    assert listener.connections == 0
