"""Redaction: a canary token pushed through every kind of log line never comes out."""

from __future__ import annotations

import io
import json
import logging
import subprocess
import sys
from pathlib import Path

import pytest
import structlog

from syncsvc import logs
from syncsvc.errors import ApiError, StoreError
from syncsvc.settings import Settings

CANARY = "CANARY-tok-7f3a9c1e5b"


@pytest.fixture
def captured() -> io.StringIO:
    stream = io.StringIO()
    logs.register_secrets([CANARY])
    logs.configure("debug", "json", stream=stream)
    return stream


def _raise_nested() -> None:
    token = CANARY  # a local holding the token: tracebacks must never render it
    try:
        raise ValueError(f"low level failure with {token}")
    except ValueError as exc:
        raise ApiError(f"api failed for apiToken={token}", resource="userData.do") from exc


def test_token_is_redacted_from_events_values_and_nested_values(captured: io.StringIO) -> None:
    log = logs.get_logger("t")
    log.info(f"event {CANARY}", plain=CANARY, nested={"a": [CANARY, {"b": CANARY}]}, n=3)
    out = captured.getvalue()
    assert CANARY not in out
    record = json.loads(out.strip().splitlines()[-1])
    assert record["plain"] == logs.REDACTED
    assert record["nested"] == {"a": [logs.REDACTED, {"b": logs.REDACTED}]}
    assert record["n"] == 3


def test_token_is_redacted_from_exception_text_and_chained_causes(captured: io.StringIO) -> None:
    log = logs.get_logger("t")
    try:
        _raise_nested()
    except ApiError:
        log.exception("unit_failed")
    out = captured.getvalue()
    assert "unit_failed" in out
    assert "low level failure" in out  # the chained cause is rendered...
    assert CANARY not in out  # ...without the token, and without locals


def test_token_is_redacted_from_stdlib_loggers(captured: io.StringIO) -> None:
    logging.getLogger("aiohttp.client").warning("retrying %s", f"apiToken={CANARY}")
    try:
        raise StoreError(f"db said {CANARY}")
    except StoreError:
        logging.getLogger("asyncpg").exception("boom")
    out = captured.getvalue()
    assert "retrying" in out
    assert CANARY not in out


def test_console_renderer_redacts_and_shows_no_locals() -> None:
    stream = io.StringIO()
    logs.register_secrets([CANARY])
    logs.configure("info", "console", stream=stream)
    try:
        _raise_nested()
    except ApiError:
        logs.get_logger("t").exception("unit_failed", token=CANARY)
    out = stream.getvalue()
    assert "unit_failed" in out
    assert CANARY not in out
    assert "token = " not in out  # no rich locals table


def test_run_id_is_bound_through_contextvars(captured: io.StringIO) -> None:
    logs.bind(run_id=42)
    try:
        logs.get_logger("t").info("unit_applied")
    finally:
        structlog.contextvars.clear_contextvars()
    assert json.loads(captured.getvalue().strip().splitlines()[-1])["run_id"] == 42


def test_settings_secrets_are_registered_and_hidden_in_repr() -> None:
    s = Settings.load({"SYNCSVC_API_TOKEN": CANARY})
    assert CANARY not in repr(s)
    assert CANARY in s.secrets


def test_cli_never_prints_the_token(tmp_path: Path) -> None:
    """A failing command with the token configured: its one-line error and logs omit it."""
    proc = subprocess.run(
        [sys.executable, "-m", "syncsvc", "db", "current"],
        env={
            "SYNCSVC_API_TOKEN": CANARY,
            # The token leaks into the URL's password: the error must still not show it.
            "SYNCSVC_DATABASE_URL": f"postgresql://u:{CANARY}@127.0.0.1:1/x",
            "PATH": "/usr/bin:/bin",
            "HOME": str(tmp_path),
        },
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode != 0
    assert CANARY not in proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr
