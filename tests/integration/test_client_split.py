"""The split parse in worker processes stages exactly what the one-document parse stages, over
real HTTP; a split it cannot trust falls back to the one-document parse."""

from __future__ import annotations

import contextlib
import os
import signal
from pathlib import Path
from typing import Any

import pytest

from syncsvc import catalog
from syncsvc.errors import UnsafeXmlError
from syncsvc.normalize import normalizer
from syncsvc.parse.segments import EncodedBatch, key_hash
from syncsvc.parse.stream import SEGMENT_BYTES
from syncsvc.records import codec
from tests.apiserver import EVENTS, Reply, client_for, make_records, render, serve_api

RESOURCE = catalog.USERS
RECORDS = make_records(RESOURCE, EVENTS[0], 5000)


async def rows(batches: Any) -> list[str]:
    """A sink: staging rows without their ordinal, from either kind of batch."""
    out: list[str] = []
    row = codec(RESOURCE)
    async for batch in batches:
        if isinstance(batch, EncodedBatch):
            for line in batch.data.decode().splitlines():
                *data, digest, _ordinal, kh = line.split("\t")
                out.append("\t".join([*data, digest, kh]))
            continue
        for rec in batch:
            assert isinstance(rec, tuple)
            guid, key = rec[2], rec[0]
            data = row.data_line(rec[:-1])
            out.append(f"{data}\t\\\\x{rec[-1].hex()}\t{key_hash(guid, key)}")
    return out


async def _fetch(mode: str, *replies: Reply) -> tuple[list[str], int, int, int, bool]:
    async with serve_api() as server, client_for(server, parse_in_worker=mode) as client:
        server.push(*replies)
        seen: list[bool] = []

        async def sink(batches: Any) -> list[str]:
            out = await rows(_spy(batches, seen))
            return out

        result = await client.fetch(
            RESOURCE, EVENTS[0], sink, on_record=normalizer(RESOURCE), encoded=True
        )
        requests = len(server.seen)
    return result.value, result.records, result.bytes, requests, any(seen)


async def _spy(batches: Any, seen: list[bool]) -> Any:
    async for batch in batches:
        seen.append(isinstance(batch, EncodedBatch))
        yield batch


# Write sizes that split tags, names, entity references and multi-byte characters anywhere.
@pytest.mark.parametrize("chunk", [1, 7, 4096, 65_537])
@pytest.mark.parametrize("gzip", [False, True], ids=["identity", "gzip"])
async def test_split_parse_stages_the_same_rows_in_the_same_order(chunk: int, gzip: bool) -> None:
    records = RECORDS[:300] if chunk < 100 else RECORDS
    body = render(RESOURCE, records, code_after_payload=True)
    reply = Reply(body=body, framing="chunked", chunk=chunk, gzip=gzip)
    whole = await _fetch("never", reply)
    split = await _fetch("always", reply)
    assert split[4]
    assert not whole[4]
    assert split[:3] == whole[:3]
    assert split[1] == len(records)
    assert len(split[0]) == len(records)
    assert split[3] == 1


async def test_a_dump_larger_than_many_segments_stages_every_row_once() -> None:
    records = make_records(RESOURCE, EVENTS[0], 30_000)
    body = render(RESOURCE, records)
    assert len(body) > 4 * SEGMENT_BYTES
    whole = await _fetch("never", Reply(body=body, chunk=65_536))
    split = await _fetch("always", Reply(body=body, chunk=65_536))
    assert split[4]
    assert split[:3] == whole[:3]
    assert len(set(split[0])) == 30_000


async def test_a_record_end_tag_in_a_comment_falls_back_to_one_document() -> None:
    # After the last record, so the last record end tag the split sees is the comment's.
    records = RECORDS[:50]
    body = render(RESOURCE, records)
    at = body.index(b"</users>")
    body = body[:at] + b"<!-- </user> -->" + body[at:]
    whole = await _fetch("never", Reply(body=body))
    split = await _fetch("always", Reply(body=body), Reply(body=body))
    assert split[0] == whole[0]
    assert split[1] == len(records)
    assert split[3] == 2  # fetched again, then parsed as one document


async def test_a_head_with_a_comment_is_parsed_as_one_document_without_refetching() -> None:
    body = render(RESOURCE, RECORDS[:100]).replace(b"<response>", b"<response><!-- hi -->")
    whole = await _fetch("never", Reply(body=body))
    split = await _fetch("always", Reply(body=body))
    assert split[4] is False  # one-document records, not encoded batches
    assert split[:4] == whole[:4]


async def test_a_malformed_record_is_refused_as_the_one_document_parse_refuses_it() -> None:
    body = render(RESOURCE, RECORDS[:100])
    at = body.index(b"<user>", len(body) // 2)
    body = body[:at] + b"<user><userRef>X</userRef><broken>A & B</user>" + body[at:]
    for mode in ("never", "always"):
        with pytest.raises(UnsafeXmlError, match="not well-formed") as info:
            await _fetch(mode, Reply(body=body), Reply(body=body))
        assert info.value.code is None


async def test_split_parse_reports_the_api_error_code_as_the_one_document_parse() -> None:
    errors = []
    for mode in ("never", "always"):
        async with serve_api() as server, client_for(server, parse_in_worker=mode) as client:
            server.push(Reply(code=201))  # unknown event: terminal, never retried
            with pytest.raises(Exception) as info:  # noqa: PT011 (compared below)
                await client.fetch(RESOURCE, EVENTS[0], rows, encoded=True)
            errors.append((type(info.value), info.value.code, str(info.value)))
    assert errors[0] == errors[1]
    assert errors[0][1] == 201


async def test_code_after_the_payload_is_the_verdict() -> None:
    body = (
        render(RESOURCE, RECORDS[:500])
        .replace(b"<responseCode>0</responseCode>", b"")
        .replace(b"</users>", b"</users><responseCode>201</responseCode>")
    )
    for mode in ("never", "always"):
        async with serve_api() as server, client_for(server, parse_in_worker=mode) as client:
            server.push(Reply(body=body))
            with pytest.raises(Exception) as info:  # noqa: PT011 (the code is what matters)
                await client.fetch(RESOURCE, EVENTS[0], rows, encoded=True)
            assert getattr(info.value, "code", None) == 201


def _parse_workers() -> list[int]:
    """The parse workers: this process's descendants that run syncsvc.parse.worker."""
    found, todo = [], [os.getpid()]
    while todo:
        for child in Path(f"/proc/{todo.pop()}/task").glob("*/children"):
            for pid in child.read_text().split():
                todo.append(int(pid))
                with contextlib.suppress(OSError):  # gone meanwhile
                    cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
                    if b"syncsvc.parse.worker" in cmdline:
                        found.append(int(pid))
    return found


async def test_a_killed_parse_worker_fails_the_attempt_and_the_retry_completes() -> None:
    records = make_records(RESOURCE, EVENTS[0], 20_000)
    body = render(RESOURCE, records)
    killed: list[int] = []

    async def sink(batches: Any) -> list[str]:
        out = []
        async for batch in batches:
            if not killed:
                killed.extend(_parse_workers())
                for pid in killed:
                    os.kill(pid, signal.SIGKILL)
            out.append(batch)
        return await rows(_replay(out))

    expected = await _fetch("never", Reply(body=body))
    async with serve_api() as server, client_for(server, parse_in_worker="always") as client:
        server.push(Reply(body=body), Reply(body=body))
        result = await client.fetch(RESOURCE, EVENTS[0], sink, encoded=True)
    assert killed  # the workers really were there, and were killed
    assert result.attempts == 2
    assert result.value == expected[0]


async def _replay(batches: list[Any]) -> Any:
    for batch in batches:
        yield batch
