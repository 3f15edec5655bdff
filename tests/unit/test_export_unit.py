"""Pure pieces of the exports: the frozen history SQL, destinations shown without secrets,
the range query's parameters, part-file limits, and the dbt sources document."""

from __future__ import annotations

import datetime as dt
import hashlib
import importlib
import io
from pathlib import Path

import pyarrow.parquet as pq
import yaml

from syncsvc.export import dbt, history
from syncsvc.export.changes import arrow_schema, changes_query, directory_name
from syncsvc.export.dest import Destination, HashingStream, display
from syncsvc.export.parquet import Limits, PartWriter, record_batch

NOW = dt.datetime(2026, 5, 1, tzinfo=dt.UTC)


def test_the_migration_holds_the_history_sql_this_code_generates() -> None:
    migration = importlib.import_module("syncsvc.migrations.versions.0007_history_views")
    assert history.all_views() == {k: v.strip() for k, v in migration.VIEWS.items()}


def test_a_destination_is_shown_without_credentials_or_options() -> None:
    url = "s3://KEY:SECRET@bucket/path?endpoint_override=h:1&secret_key=S2"
    assert display(url) == "s3://bucket/path"
    assert display("/data/exports") == "/data/exports"


def test_the_range_query_binds_every_filter_value() -> None:
    query, params = changes_query({"entity": ["user"], "op": ["rekey"], "event": ["E'1"]})
    assert params == [["user"], ["rekey"], ["E'1"]]
    assert "E'1" not in query
    assert "c.seq > $1 AND c.seq <= $2" in query
    assert "c.entity = ANY($3)" in query
    assert "c.event_guid = ANY($5)" in query


def test_directory_names_sort_in_seq_order() -> None:
    names = [directory_name(a, b) for a, b in ((0, 9), (9, 10), (10, 1_000_000))]
    assert sorted(names) == names


def test_parts_close_at_the_row_limit_and_record_their_checksums(tmp_path: Path) -> None:
    dest = Destination.open(str(tmp_path))
    dest.makedirs("d")
    writer = PartWriter(dest, "d", arrow_schema(), Limits(max_rows=5, batch_rows=2), "seq")
    for start in range(1, 13, 2):  # 12 rows in batches of 2
        rows = [
            (s, 1, None, "uat", "user", "E", f"U{s}", None, "insert", [], None, "{}", None, NOW)
            for s in (start, start + 1)
        ]
        writer.write(record_batch(writer.schema, rows))
    parts = writer.finish()
    assert [p.rows for p in parts] == [6, 6]  # closes after the batch that reaches 5
    assert [(p.min_seq, p.max_seq) for p in parts] == [(1, 6), (7, 12)]
    for p in parts:
        data = (tmp_path / "d" / p.path).read_bytes()
        assert hashlib.sha256(data).hexdigest() == p.sha256
        assert pq.read_table(io.BytesIO(data)).num_rows == p.rows


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
