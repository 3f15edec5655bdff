"""The change feed's pure parts: webhook backoff and Retry-After, signing, validation, the
Debezium envelope and the batch body."""

from __future__ import annotations

import datetime as dt
import json
from email.utils import format_datetime
from pathlib import Path

import pytest
from standardwebhooks import Webhook

from syncsvc.changefeed import render_debezium, render_json
from syncsvc.errors import ConfigError
from syncsvc.feed.consumers import check_filters, check_name, check_webhook_url, read_secret
from syncsvc.feed.webhook import Signer, WebhookRetry, batch_body, parse_retry_after

SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"


def test_backoff_doubles_with_jitter_within_half_and_whole_ceiling() -> None:
    low = WebhookRetry(base=1.0, cap=60.0, random=lambda: 0.0)
    high = WebhookRetry(base=1.0, cap=60.0, random=lambda: 0.999999)
    for attempt, ceiling in ((1, 1.0), (2, 2.0), (3, 4.0), (7, 60.0), (500, 60.0)):
        assert low.next_delay(attempt) == pytest.approx(ceiling / 2)
        assert high.next_delay(attempt) == pytest.approx(ceiling, rel=1e-5)


def test_retry_after_is_honoured_as_given_even_above_the_cap() -> None:
    policy = WebhookRetry(base=1.0, cap=5.0, random=lambda: 0.5)
    assert policy.next_delay(1, retry_after=30.0) == 30.0
    assert policy.next_delay(9, retry_after=0.0) == 0.0


def test_retry_after_parses_seconds_and_http_dates() -> None:
    now = 1_800_000_000.0
    assert parse_retry_after("7", now) == 7.0
    when = dt.datetime.fromtimestamp(now + 42, dt.UTC)
    assert parse_retry_after(format_datetime(when, usegmt=True), now) == pytest.approx(42)
    assert parse_retry_after("yesterday-ish", now) is None
    assert parse_retry_after(None, now) is None


def test_signatures_verify_with_the_standard_webhooks_verifier() -> None:
    body = batch_body("crm", 10, 12, ['{"seq":11}', '{"seq":12}'])
    headers = Signer(SECRET).headers("msg_crm_10_12", body)
    payload = Webhook(SECRET).verify(body.encode(), headers)
    assert payload["type"] == "syncsvc.changes"
    assert payload["data"]["after_seq"] == 10
    assert payload["data"]["until_seq"] == 12
    assert [c["seq"] for c in payload["data"]["changes"]] == [11, 12]
    with pytest.raises(Exception, match="signature"):
        Webhook(SECRET).verify(body.replace("11", "13").encode(), headers)


def test_secret_files_must_hold_a_standard_webhooks_secret(tmp_path: Path) -> None:
    good = tmp_path / "good"
    good.write_text(SECRET + "\n")
    assert read_secret(good) == SECRET
    for text in ("whsec_c2hvcnQ=", "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw", "whsec_!!not base64!!"):
        bad = tmp_path / "bad"
        bad.write_text(text)
        with pytest.raises(ConfigError) as err:
            read_secret(bad)
        assert text not in str(err.value)
    with pytest.raises(ConfigError, match="cannot read"):
        read_secret(tmp_path / "missing")


def test_names_urls_and_filters_are_checked() -> None:
    assert check_name("crm-mirror_2") == "crm-mirror_2"
    for bad in ("", "CRM", "a b", "-x", "x" * 64):
        with pytest.raises(ConfigError):
            check_name(bad)
    assert check_webhook_url("https://hooks.example.com/in")
    assert check_webhook_url("http://127.0.0.1:8080/in")
    for bad in ("http://hooks.example.com/in", "ftp://x/y", "https://a:b@x.com/", "nope"):
        with pytest.raises(ConfigError):
            check_webhook_url(bad)
    assert check_filters({"entity": ["user"], "op": []}) == {"entity": ["user"]}
    with pytest.raises(ConfigError, match="--op 'upsert'"):
        check_filters({"op": ["upsert"]})


def _row(op: str) -> dict[str, object]:
    before = '{"userRef": "U1", "email": "a@x"}' if op != "insert" else None
    after = '{"userRef": "U2", "email": "b@x"}' if op != "delete" else None
    return {
        "seq": 7,
        "run_id": 3,
        "environment": "production",
        "account": "default",
        "entity": "user",
        "event_guid": "E1",
        "record_key": "U2",
        "client_id": "C1",
        "op": op,
        "changed_fields": ["email", "userRef"] if op in ("update", "rekey") else [],
        "before": before,
        "after": after,
        "source_modified_at": None,
        "captured_at": dt.datetime(2026, 11, 30, 12, 0, tzinfo=dt.UTC),
    }


def test_debezium_envelope_maps_ops_and_splits_a_rekey() -> None:
    for op, dops in (("insert", ["c"]), ("update", ["u"]), ("delete", ["d"])):
        out = [json.loads(x) for x in render_debezium(_row(op))]
        assert [o["op"] for o in out] == dops
        assert out[0]["source"]["seq"] == 7
        assert out[0]["source"]["environment"] == "production"
        assert out[0]["source"]["account"] == "default"
        assert out[0]["ts_ms"] == 1_796_040_000_000
    delete, create = (json.loads(x) for x in render_debezium(_row("rekey")))
    assert (delete["op"], create["op"]) == ("d", "c")
    assert delete["source"]["record_key"] == "U1"  # the old key, from the before image
    assert create["source"]["record_key"] == "U2"
    assert delete["after"] is None
    assert create["before"] is None
    assert create["syncsvc"] == {
        "op": "rekey",
        "changed_fields": ["email", "userRef"],
        "rekey_part": "create",
    }


def test_the_plain_record_is_valid_json_with_images_spliced_in() -> None:
    record = json.loads(render_json(_row("update")))
    assert record["before"] == {"userRef": "U1", "email": "a@x"}
    assert record["captured_at"] == "2026-11-30T12:00:00+00:00"
    assert list(record)[:3] == ["seq", "run_id", "environment"]
