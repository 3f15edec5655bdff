"""Pure pieces of the exports: the frozen history SQL, destinations shown without secrets,
the range query's parameters, part-file limits, and the dbt sources document."""

from __future__ import annotations

import datetime as dt
import hashlib
import importlib
import io
import os
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import yaml

from syncsvc.export import dbt, history
from syncsvc.export.changes import arrow_schema, changes_query, directory_name
from syncsvc.export.dest import Destination, HashingStream, display
from syncsvc.export.parquet import Limits, PartWriter, conform

NOW = dt.datetime(2026, 5, 1, tzinfo=dt.UTC)


def test_the_migration_holds_the_history_sql_this_code_generates() -> None:
    migration = importlib.import_module("syncsvc.migrations.versions.0007_accounts")
    assert history.all_views() == {k: v.strip() for k, v in migration.VIEWS.items()}


def test_a_destination_is_shown_without_credentials_or_options() -> None:
    url = "s3://KEY:SECRET@bucket/path?endpoint_override=h:1&secret_key=S2"
    assert display(url) == "s3://bucket/path"
    assert display("/data/exports") == "/data/exports"


def test_the_range_query_takes_integer_bounds_and_server_quoted_literals() -> None:
    query = changes_query(10, 20, {"entity": ["'user'"], "event": ["'E''1'", "'E2'"]})
    assert "c.seq > 10 AND c.seq <= 20" in query
    assert "c.entity IN ('user')" in query
    assert "c.event_guid IN ('E''1', 'E2')" in query
    assert "c.op IN" not in query


def test_directory_names_sort_in_seq_order() -> None:
    names = [directory_name(a, b) for a, b in ((0, 9), (9, 10), (10, 1_000_000))]
    assert sorted(names) == names


def test_parts_hold_at_most_max_rows_and_record_their_checksums(tmp_path: Path) -> None:
    dest = Destination.open(str(tmp_path))
    dest.makedirs("d")
    schema = arrow_schema()
    writer = PartWriter(dest, "d", schema, Limits(max_rows=5), "seq")
    plain = pa.schema([pa.field(f.name, f.type.storage_type) if f.name in ("before", "after")
                       else f for f in schema])  # fmt: skip
    for start in range(1, 13, 4):  # 12 rows in batches of 4, as a driver hands them over
        rows = [
            dict(zip(schema.names, (s, 1, None, "uat", "default", "user", "E", f"U{s}", None,
                                    "insert", [], None, "{}", None, NOW), strict=True))
            for s in range(start, start + 4)
        ]  # fmt: skip
        writer.write(conform(pa.RecordBatch.from_pylist(rows, schema=plain), schema))
    parts = writer.finish()
    assert [p.rows for p in parts] == [5, 5, 2]
    assert [(p.min_seq, p.max_seq) for p in parts] == [(1, 5), (6, 10), (11, 12)]
    for p in parts:
        data = (tmp_path / "d" / p.path).read_bytes()
        assert hashlib.sha256(data).hexdigest() == p.sha256
        table = pq.read_table(io.BytesIO(data))
        assert table.num_rows == p.rows
        assert table.schema.field("after").type == pa.json_(pa.string())


def test_hashing_stream_counts_and_hashes_what_it_forwards() -> None:
    sink = io.BytesIO()
    stream = HashingStream(sink)
    stream.write(b"abc")
    stream.write(memoryview(b"def"))
    assert (stream.size, stream.sha256) == (6, hashlib.sha256(b"abcdef").hexdigest())
    assert sink.getvalue() == b"abcdef"


def test_dbt_sources_render_as_yaml_dbt_reads() -> None:
    doc = dbt.sources("syncsvc", "warehouse", dbt.Freshness(12, 24))
    parsed = yaml.safe_load(dbt.render(doc))
    assert parsed == doc
    source = parsed["sources"][0]
    assert (source["schema"], source["database"]) == ("syncsvc", "warehouse")
    tables = {t["name"]: t for t in source["tables"]}
    assert tables["changes"]["config"]["loaded_at_field"] == "captured_at"
    assert tables["users_history"]["config"]["loaded_at_field"] == "valid_from"
    assert "syncsvc.fetches" in tables["users"]["config"]["loaded_at_query"]
    assert tables["users"]["config"]["freshness"]["warn_after"] == {"count": 12, "period": "hour"}


def test_without_the_export_extra_the_command_says_what_to_install(tmp_path: Path) -> None:
    runner = (
        "import sys\n"
        "sys.modules['pyarrow'] = None\n"
        "sys.modules['adbc_driver_postgresql'] = None\n"
        "from syncsvc.cli import main\n"
        "main(sys.argv[1:])\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", runner, "export", "changes", "--since", "0", "--to", str(tmp_path)],
        env={"PATH": os.environ.get("PATH", ""), "HOME": str(tmp_path)},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2, proc.stderr
    assert "pip install 'syncsvc[export]'" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
