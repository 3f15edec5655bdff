"""Settings: precedence, secret files, and one clear line with exit code 2 for bad configuration."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from syncsvc.errors import ConfigError
from syncsvc.settings import Settings


def test_environment_overrides_toml_and_defaults(tmp_path: Path) -> None:
    cfg = tmp_path / "s.toml"
    cfg.write_text('rate_limit = 3.5\nenvironment = "production"\nresources = ["users"]\n')
    s = Settings.load({"SYNCSVC_RATE_LIMIT": "7"}, config_file=cfg)
    assert s.rate_limit == 7.0
    assert s.environment == "production"
    assert s.resources == ("users",)
    assert s.max_concurrency == 4


def test_secret_comes_from_a_file_and_stays_out_of_repr(tmp_path: Path) -> None:
    secret = tmp_path / "token"
    secret.write_text("tok-from-file-123\n")
    s = Settings.load({"SYNCSVC_API_TOKEN_FILE": str(secret)})
    assert s.api_token == "tok-from-file-123"
    assert "tok-from-file-123" not in repr(s)
    assert s.secrets == ("tok-from-file-123",)


def test_list_settings_parse_from_comma_separated_env() -> None:
    s = Settings.load({"SYNCSVC_EVENTS_EXCLUDE": "A, B,,C"})
    assert s.events_exclude == ("A", "B", "C")


@pytest.mark.parametrize(
    ("env", "setting"),
    [
        ({"SYNCSVC_BASE_URL": "not a url"}, "base_url"),
        ({"SYNCSVC_BASE_URL": "http://api.example.com/api/"}, "base_url"),
        ({"SYNCSVC_BASE_URL": "ftp://127.0.0.1/api/"}, "base_url"),
        ({"SYNCSVC_ENVIRONMENT": "staging"}, "environment"),
        ({"SYNCSVC_RATE_LIMIT": "fast"}, "rate_limit"),
        ({"SYNCSVC_MAX_CONCURRENCY": "0"}, "max_concurrency"),
        ({"SYNCSVC_RATE_BUDGET": "redis"}, "rate_budget"),
        ({"SYNCSVC_RATE_BUDGET_LEASE_TTL": "0"}, "rate_budget_lease_ttl"),
        ({"SYNCSVC_RESOURCES": "users,speakers"}, "resources"),
        ({"SYNCSVC_DATABASE_URL": "mysql://x/y"}, "database_url"),
        ({"SYNCSVC_SCHEDULE": "every night"}, "schedule"),
        ({"SYNCSVC_API_TOKEN_FILE": "/nonexistent/token"}, "syncsvc_api_token"),
    ],
)
def test_bad_setting_raises_config_error_naming_it(env: dict[str, str], setting: str) -> None:
    with pytest.raises(ConfigError) as info:
        Settings.load(env)
    assert info.value.setting == setting
    assert setting.upper().removeprefix("SYNCSVC_") in str(info.value).upper()


def test_loopback_http_is_allowed_for_the_simulator() -> None:
    for url in ("http://127.0.0.1:8080/api/", "http://localhost/api/", "http://[::1]:9/api/"):
        assert Settings.load({"SYNCSVC_BASE_URL": url}).base_url == url


def test_missing_token_is_reported_only_where_the_api_is_needed() -> None:
    s = Settings.load({"SYNCSVC_BASE_URL": "https://x.smarteventscloud.com/api/"})
    with pytest.raises(ConfigError) as info:
        s.require_api()
    assert info.value.setting == "api_token"


def test_unknown_toml_key_is_an_error(tmp_path: Path) -> None:
    cfg = tmp_path / "s.toml"
    cfg.write_text("rate_limt = 3\n")
    with pytest.raises(ConfigError, match="rate_limt"):
        Settings.load({}, config_file=cfg)


def test_cli_exits_2_with_one_line_and_no_traceback(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "syncsvc", "db", "current"],
        env={
            "SYNCSVC_BASE_URL": "http://api.example.com/api/",
            "PATH": "/usr/bin:/bin",
            "HOME": str(tmp_path),
        },
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert "SYNCSVC_BASE_URL" in lines[0]
    assert "Traceback" not in proc.stderr
