"""Cache mode (render once, then sendfile) and the `syncsvc simulate` command."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path
from typing import Any

from syncsvc.simulator import SimConfig, Universe
from tests.simulator_fixtures import post

SMALL = SimConfig(
    seed=2, events=3, users_per_event=15, sessions_per_event=3, exhibitors_per_event=2
)


def cached(directory: Path) -> dict[Path, bytes]:
    return {f: f.read_bytes() for f in directory.glob("*.xml")}


def tamper(path: Path) -> None:
    path.write_bytes(path.read_bytes().replace(b"<users>", b"<users >", 1))


async def test_cache_mode_renders_once_and_serves_the_same_bytes_from_the_file(
    simulator: Any, tmp_path: Path
) -> None:
    async with simulator(SMALL) as fresh_sim:
        fresh = await post(fresh_sim.base_url, "userData.do", event="all")
    async with simulator(SMALL, cache_dir=tmp_path) as sim:
        first = await post(sim.base_url, "userData.do", event="all")
        files = list(cached(tmp_path))
        assert len(files) == 1
        # Prove the next answer comes from the file: change the file, not the universe.
        tamper(files[0])
        second = await post(sim.base_url, "userData.do", event="all")
        sim.set_day(1)
        next_day = await post(sim.base_url, "userData.do", event="all")
        await sim.control({"faults": [{"kind": "unknown_elements", "times": 1}]})
        faulted = await post(sim.base_url, "userData.do", event="all")
    assert first.body == fresh.body
    assert first.headers["Content-Length"] == str(len(fresh.body))  # a file, not chunks
    assert second.body == fresh.body.replace(b"<users>", b"<users >", 1)
    assert next_day.body != fresh.body
    assert len(cached(tmp_path)) == 2  # one file per (resource, scope, day)
    assert b"vendorNewField" in faulted.body  # faults bypass the cache and never reach it
    assert all(b"vendorNewField" not in body for body in cached(tmp_path).values())


async def test_simulate_command_serves_the_configured_account(tmp_path: Path) -> None:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "syncsvc",
        "simulate",
        "--port",
        "0",
        "--events",
        "2",
        "--users-per-event",
        "6",
        "--seed",
        "3",
        "--day",
        "1",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={"SYNCSVC_DATA_DIR": str(tmp_path), "PATH": "/usr/bin:/bin"},
    )
    try:
        assert proc.stdout is not None
        line = (await asyncio.wait_for(proc.stdout.readline(), 60)).decode()
        assert line.startswith("simulator serving http://127.0.0.1:"), line
        base_url = line.split()[2]
        answer = await post(base_url, "userData.do", event="all")
    finally:
        proc.terminate()
        await proc.wait()
    truth = Universe(SimConfig(seed=3, events=2, users_per_event=6))
    assert answer.code == 0
    assert [r.findtext("userRef") for r in answer.records("user")] == [
        r["userRef"] for r in truth.records("user", 1)
    ]


async def _traced_fetch(simulator: Any, cfg: SimConfig) -> tuple[int, int, int]:
    """(bytes, chunks, peak traced bytes) of one event=all user dump; server and client here."""
    import tracemalloc

    import aiohttp

    size = chunks = 0
    tracemalloc.start()
    try:
        async with simulator(cfg) as sim, aiohttp.ClientSession() as session:
            tracemalloc.reset_peak()
            form = {"apiToken": "sim-account-token", "event": "all"}
            async with session.post(sim.base_url + "userData.do", data=form) as resp:
                async for chunk in resp.content.iter_chunked(1 << 16):
                    size += len(chunk)
                    chunks += 1
            _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return size, chunks, peak


async def test_a_large_dump_streams_in_chunks_with_flat_memory(simulator: Any) -> None:
    small = await _traced_fetch(simulator, SimConfig(seed=1, events=1, users_per_event=1000))
    large = await _traced_fetch(simulator, SimConfig(seed=1, events=4, users_per_event=2500))
    assert large[0] > 10 * small[0]
    assert large[1] > 100
    # Ten times the document, about the same memory: nothing grows with the dump's size.
    assert large[2] < 2 * small[2] + 1_000_000, (small, large)


async def test_cache_files_are_per_scope_so_tokens_never_see_each_others_answers(
    simulator: Any, tmp_path: Path
) -> None:
    async with simulator(SMALL, cache_dir=tmp_path) as sim:
        account = await post(sim.base_url, "event.do")
        own = await post(sim.base_url, "event.do", token="sim-event-token")
        account_again = await post(sim.base_url, "event.do")
    assert len(account.records("event")) == SMALL.events
    assert len(own.records("event")) == 1
    assert account_again.body == account.body


def test_simulate_refuses_bad_options_with_one_line_and_exit_code_2(tmp_path: Path) -> None:
    import subprocess

    out = subprocess.run(
        [sys.executable, "-m", "syncsvc", "simulate", "--fault", '{"kind": "boom"}'],
        capture_output=True,
        text=True,
        env={"SYNCSVC_DATA_DIR": str(tmp_path), "PATH": "/usr/bin:/bin"},
        check=False,
    )
    assert out.returncode == 2
    assert out.stderr.strip() == "syncsvc: bad simulator option: unknown fault kind 'boom'"
