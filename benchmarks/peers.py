"""The peers: dlt on the same dump files, keys and PostgreSQL, each mode in its own subprocess.

Modes: `merge` and `scd2` with dlt's defaults (dicts, insert_values), and `arrow-merge` /
`arrow-scd2`, dlt at its fastest: the same streaming parse into pyarrow Tables of 10,000 rows,
parquet files loaded through ADBC; scd2 there versions rows by dlt's `add_row_hash_to_table`.
Needs the `bench` extra (`pip install -e '.[bench]'`); without it the table says "not installed".

    python benchmarks/peers.py MODE SERVER_URL DATABASE WORKDIR FILE...   (prints one JSON line)
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import os
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import asyncpg

sys.path.insert(0, str(Path(__file__).resolve().parent))

from floor import database_url, resource_of

MODES = ("merge", "scd2", "arrow-merge", "arrow-scd2")
ARROW_ROWS = 10_000


def installed() -> bool:
    return all(importlib.util.find_spec(m) for m in ("dlt", "pyarrow", "adbc_driver_postgresql"))


def dicts(path: Path, record: str) -> Iterator[dict[str, Any]]:
    from lxml import etree

    for _, elem in etree.iterparse(str(path), tag=record, resolve_entities=False):
        row: dict[str, Any] = {}
        for child in elem:
            if len(child):
                row[child.tag] = {c.tag: c.text for c in child}
            else:
                row[child.tag] = child.text
        row.pop("userKey", None)
        elem.clear(keep_tail=False)
        while elem.getprevious() is not None:
            del elem.getparent()[0]
        yield row


def tables(path: Path, record: str) -> Iterator[Any]:
    import pyarrow as pa

    # Flat string columns (nested values as their text), as a user would build them for speed.
    cols: dict[str, list[str | None]] = {}
    n = 0
    from lxml import etree

    for _, elem in etree.iterparse(str(path), tag=record, resolve_entities=False):
        for child in elem:
            if child.tag == "userKey":
                continue
            text = "|".join(child.itertext()) if len(child) else child.text
            cols.setdefault(child.tag, [None] * n).append(text)
        n += 1
        for v in cols.values():
            if len(v) < n:
                v.append(None)
        elem.clear(keep_tail=False)
        while elem.getprevious() is not None:
            del elem.getparent()[0]
        if n >= ARROW_ROWS:
            yield pa.table(cols)
            cols, n = {}, 0
    if n:
        yield pa.table(cols)


def run_mode(mode: str, db_url: str, workdir: str, files: list[Path]) -> dict[str, Any]:
    import dlt
    from dlt.sources.helpers.transform import add_row_hash_to_table

    arrow = mode.startswith("arrow")
    scd2 = mode.endswith("scd2")
    resources = []
    for path in files:
        res = resource_of(path)
        if res is None:
            continue
        disposition: dict[str, Any] = {"disposition": "merge"}
        if scd2:
            disposition["strategy"] = "scd2"
            if arrow:
                disposition["row_version_column_name"] = "row_hash"
        rows = tables(path, res.record) if arrow else dicts(path, res.record)
        r = dlt.resource(
            rows,
            name=res.table,
            primary_key=None if scd2 else ["eventGUID", res.key],
            write_disposition=disposition,
        )
        if arrow and scd2:
            r.add_map(add_row_hash_to_table("row_hash"))
        resources.append(r)
    # dlt refuses a URL without a password even where the server trusts loopback.
    head, _, tail = db_url.partition("://")
    userinfo, at, rest = tail.rpartition("@")
    if at and ":" not in userinfo:
        db_url = f"{head}://{userinfo}:unused@{rest}"
    pipeline = dlt.pipeline(
        pipeline_name=f"bench_{mode.replace('-', '_')}",
        pipelines_dir=workdir,
        destination=dlt.destinations.postgres(credentials=db_url),
        dataset_name=mode.replace("-", "_"),
    )
    started = time.perf_counter()
    pipeline.run(resources, loader_file_format="parquet" if arrow else None)
    return {"seconds": time.perf_counter() - started}


async def count_rows(db_url: str, mode: str) -> int:
    conn = await asyncpg.connect(db_url)
    try:
        schema = mode.replace("-", "_")
        tabs = await conn.fetch(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = $1"
            " AND table_name IN ('users', 'sessions', 'exhibitors')",
            schema,
        )
        total = 0
        for t in tabs:
            where = " WHERE _dlt_valid_to IS NULL" if mode.endswith("scd2") else ""
            total += await conn.fetchval(f'SELECT count(*) FROM {schema}."{t[0]}"{where}')
        return total
    finally:
        await conn.close()


# A peer still running after this many seconds is stopped and reported as such (dlt scd2's
# retiring UPDATE ... NOT IN (...) ran for over nine minutes on a million rows, one statement).
PEER_CAP_SECONDS = 600.0


def measured(cmd: list[str], cap: float = PEER_CAP_SECONDS) -> tuple[int | None, float, str, str]:
    """Run cmd; (exit code or None if stopped at the cap, peak RSS MB from its VmHWM sampled
    in /proc, stdout, stderr)."""
    import subprocess

    from run import vm_hwm_mb

    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        proc = subprocess.Popen(cmd, stdout=out, stderr=err)
        peak = 0.0
        started = time.perf_counter()
        while proc.poll() is None:
            peak = max(peak, vm_hwm_mb(proc.pid) or 0.0)
            if time.perf_counter() - started > cap:
                proc.kill()
                proc.wait()
                return None, peak, "", ""
            time.sleep(0.05)
        out.seek(0)
        err.seek(0)
        return (
            proc.returncode,
            peak,
            out.read().decode(),
            err.read()[-1500:].decode(errors="replace"),
        )


async def peers_day(server_url: str, files: list[Path], state: dict[str, Any]) -> dict[str, Any]:
    """Run every peer mode on one day's files; {mode: {seconds, rows, rss_mb}} or a reason."""
    if not installed():
        return {"dlt": "not installed"}
    if "db" not in state:
        name = f"syncsvc_peers_{uuid.uuid4().hex[:8]}"
        admin = await asyncpg.connect(server_url)
        await admin.execute(f'CREATE DATABASE "{name}"')
        work = tempfile.TemporaryDirectory(prefix="syncsvc-bench-dlt-")

        async def close() -> None:
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            await admin.close()
            work.cleanup()

        state.update(
            db=database_url(server_url, name),
            work=work.name,
            _close=[*state.get("_close", []), close],
        )
    out: dict[str, Any] = {}
    for mode in state.get("modes", MODES):
        if mode in state.get("stopped", ()):
            out[mode] = "skipped (stopped on an earlier day)"
            continue
        cmd = [sys.executable, __file__, mode, state["db"], state["work"], *map(str, files)]
        started = time.perf_counter()
        code, rss, stdout, err = await asyncio.to_thread(measured, cmd)
        wall = time.perf_counter() - started
        if code is None:
            # Its statement goes on in the server after the client is gone: end it too.
            admin = await asyncpg.connect(state["db"])
            await admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                " WHERE datname = current_database() AND pid <> pg_backend_pid()"
            )
            await admin.close()
            state.setdefault("stopped", set()).add(mode)
            out[mode] = f"stopped after > {PEER_CAP_SECONDS:.0f} s"
            continue
        if code:
            lines = err.strip().splitlines()
            out[mode] = f"failed ({lines[-1] if lines else code})"
            continue
        json.loads(stdout.strip().splitlines()[-1])  # it finished and said so
        # The process's wall, imports included, as syncsvc's is measured.
        out[mode] = {
            "seconds": wall,
            "rss_mb": rss,
            "rows": await count_rows(state["db"], mode),
        }
    return out


if __name__ == "__main__":
    mode_, db_, work_, *files_ = sys.argv[1:]
    if mode_ not in MODES:
        raise SystemExit(f"mode must be one of {MODES}")
    os.environ.setdefault("RUNTIME__LOG_LEVEL", "WARNING")
    print(json.dumps(run_mode(mode_, db_, work_, [Path(f) for f in files_])))
