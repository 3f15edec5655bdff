"""The worker-process parse yields exactly what the in-process parse yields, over real HTTP."""

from __future__ import annotations

import pytest

from syncsvc.cvent import catalog
from syncsvc.normalize import normalizer
from syncsvc.records import Record
from tests.apiserver import EVENTS, Reply, client_for, collect, make_records, render, serve_api

RECORDS = make_records(catalog.USERS, EVENTS[0], 5000)


async def _fetch(mode: str, reply: Reply) -> tuple[list[Record], int, int]:
    async with serve_api() as server, client_for(server, parse_in_worker=mode) as client:
        server.push(reply)
        result = await client.fetch(
            catalog.USERS, EVENTS[0], collect, on_record=normalizer(catalog.USERS)
        )
    return result.value, result.records, result.bytes


# Write sizes that split tags, names, entity references and multi-byte characters anywhere.
@pytest.mark.parametrize("chunk", [1, 7, 4096, 65_537])
@pytest.mark.parametrize("gzip", [False, True], ids=["identity", "gzip"])
async def test_worker_parse_yields_the_same_records_in_the_same_order(
    chunk: int, gzip: bool
) -> None:
    records = RECORDS[:300] if chunk < 100 else RECORDS
    body = render(catalog.USERS, records, code_after_payload=True)
    reply = Reply(body=body, framing="chunked", chunk=chunk, gzip=gzip)
    in_process = await _fetch("never", reply)
    in_worker = await _fetch("always", reply)
    assert in_worker == in_process
    assert in_worker[1] == len(records)
    assert len(in_worker[0]) == len(records)  # batches of 2000 and the last partial one


async def test_worker_parse_reports_the_api_error_code_as_the_in_process_parse_does() -> None:
    errors = []
    for mode in ("never", "always"):
        async with serve_api() as server, client_for(server, parse_in_worker=mode) as client:
            server.push(Reply(code=201))  # unknown event: terminal, never retried
            with pytest.raises(Exception) as info:  # noqa: PT011 (compared below)
                await client.fetch(catalog.USERS, EVENTS[0], collect)
            errors.append((type(info.value), info.value.code, str(info.value)))
    assert errors[0] == errors[1]
    assert errors[0][1] == 201
