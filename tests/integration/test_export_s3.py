"""Exports to `s3://` against a real S3-compatible server on loopback (moto in server mode, a
subprocess), read back through boto3 and DuckDB: no mocked client anywhere."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from typing import Any

import asyncpg
import boto3
import duckdb
import pytest
from sqlalchemy.engine import URL
from sqlalchemy.ext.asyncio import AsyncEngine

from syncsvc import scheduler
from syncsvc.settings import Settings
from syncsvc.store import db
from tests.integration.export_helpers import (
    add_consumer,
    consumer_cursor,
    db_state,
    duck_changes,
    replay,
    syncsvc,
)
from tests.integration.test_export import CONFIG

pytestmark = pytest.mark.db

SimFactory = Callable[..., AbstractAsyncContextManager[Any]]
KEY_ID, SECRET = "AKIAEXPORTTEST", "export-test-secret-do-not-log"
AWS_ENV = {
    "AWS_ACCESS_KEY_ID": KEY_ID,
    "AWS_SECRET_ACCESS_KEY": SECRET,
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_EC2_METADATA_DISABLED": "true",  # never ask a metadata endpoint off this machine
}


@pytest.fixture
def s3_endpoint() -> Iterator[str]:
    """moto's S3 server on a free loopback port; yields host:port once it listens."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", "0"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    ready = threading.Event()
    found: list[str] = []

    def drain() -> None:  # also keeps the request log from filling the pipe
        assert proc.stderr is not None
        for line in proc.stderr:
            if not found and "Running on http://" in line:
                found.append(line.split("http://", 1)[1].strip())
                ready.set()
        ready.set()

    reader = threading.Thread(target=drain, daemon=True)
    reader.start()
    try:
        assert ready.wait(timeout=60), "moto never said it was listening"
        assert found, "moto exited before listening"
        yield found[0]
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        reader.join(timeout=10)
        assert proc.stderr is not None
        proc.stderr.close()


def _client(endpoint: str) -> Any:
    return boto3.client(
        "s3",
        endpoint_url=f"http://{endpoint}",
        aws_access_key_id=KEY_ID,
        aws_secret_access_key=SECRET,
        region_name="us-east-1",
    )


def _fetch(s3: Any, bucket: str, prefix: str, into: Path) -> list[tuple[Path, dict[str, Any]]]:
    """Download each complete export (a manifest) under prefix, checking every file's checksum."""
    listing = s3.list_objects_v2(Bucket=bucket, Prefix=prefix).get("Contents", [])
    out = []
    for obj in sorted(o["Key"] for o in listing if o["Key"].endswith("/manifest.json")):
        manifest = json.loads(s3.get_object(Bucket=bucket, Key=obj)["Body"].read())
        directory = into / obj.split("/")[-2]
        directory.mkdir(parents=True)
        for f in manifest["files"]:
            data = s3.get_object(Bucket=bucket, Key=obj.rsplit("/", 1)[0] + "/" + f["path"])
            body = data["Body"].read()
            assert (len(body), hashlib.sha256(body).hexdigest()) == (f["bytes"], f["sha256"])
            (directory / f["path"]).write_bytes(body)
        out.append((directory, manifest))
    return out


async def test_changes_and_snapshot_export_to_a_real_s3_server(
    simulator: SimFactory, engine: AsyncEngine, db_url: URL, tmp_path: Path, s3_endpoint: str
) -> None:
    s3 = _client(s3_endpoint)
    s3.create_bucket(Bucket="lake")
    target = f"s3://lake/syncsvc?endpoint_override={s3_endpoint}&scheme=http&region=us-east-1"
    await add_consumer(db_url, "lake")
    async with simulator(CONFIG) as sim:
        settings = Settings.load({}).replace(
            base_url=sim.base_url, api_token="sim-account-token", rate_limit=200.0
        )
        for day in range(2):
            sim.set_day(day)
            assert (await scheduler.run_once(settings, engine)).status == "succeeded"
            proc = syncsvc(
                db_url, "export", "changes", "--consumer", "lake", "--to", target,
                "--max-file-rows", "150", **AWS_ENV,
            )  # fmt: skip
            assert proc.returncode == 0, proc.stderr
            assert SECRET not in proc.stdout + proc.stderr

    done = _fetch(s3, "lake", "syncsvc/changes_", tmp_path / "changes")
    assert len(done) == 2
    assert done[1][1]["after_seq"] == done[0][1]["through_seq"]
    assert done[1][1]["through_seq"] == await consumer_cursor(db_url, "lake")
    rows = duck_changes([d / f["path"] for d, m in done for f in m["files"]])
    assert [r["seq"] for r in rows] == list(range(1, done[1][1]["through_seq"] + 1))
    assert replay(rows) == await db_state(db_url)

    proc = syncsvc(db_url, "export", "snapshot", "--entity", "user", "--to", target, **AWS_ENV)
    assert proc.returncode == 0, proc.stderr
    ((d, m),) = _fetch(s3, "lake", "syncsvc/snapshot_user_", tmp_path / "snap")
    assert m["consistent_with_seq"] == done[1][1]["through_seq"]
    users = (await db_state(db_url))["user"]
    assert m["rows"] == len(users)
    listing = ", ".join(f"'{d / f['path']}'" for f in m["files"])
    keys = duckdb.sql(f"SELECT event_guid, user_ref FROM read_parquet([{listing}])").fetchall()
    assert set(keys) == set(users)


async def test_a_missing_bucket_fails_with_one_line_and_keeps_the_cursor(
    db_url: URL, s3_endpoint: str
) -> None:
    conn = await asyncpg.connect(db.libpq_url(db_url))
    try:
        run = await conn.fetchval("INSERT INTO runs (environment) VALUES ('uat') RETURNING id")
        await conn.execute(
            "INSERT INTO changes (seq, run_id, entity, event_guid, record_key, op, after) "
            "SELECT g, $1, 'user', 'E1', 'U' || g, 'insert', "
            "jsonb_build_object('userRef', 'U' || g) FROM generate_series(1, 10) AS g",
            run,
        )
    finally:
        await conn.close()
    await add_consumer(db_url, "lake")
    target = f"s3://no-such-bucket/x?endpoint_override={s3_endpoint}&scheme=http&region=us-east-1"
    proc = syncsvc(db_url, "export", "changes", "--consumer", "lake", "--to", target, **AWS_ENV)
    assert proc.returncode == 1, proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert "s3://no-such-bucket/x" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert SECRET not in proc.stderr
    assert await consumer_cursor(db_url, "lake") == 0
