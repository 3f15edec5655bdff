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


# --- many accounts: [[account]] tables ------------------------------------------------------------


def _accounts_file(tmp_path: Path, body: str) -> Path:
    for name in ("a", "b"):
        (tmp_path / f"{name}.token").write_text(f"tok-{name}-secret\n")
    cfg = tmp_path / "accounts.toml"
    cfg.write_text(body.replace("DIR", str(tmp_path)))
    return cfg


TWO_ACCOUNTS = """
rate_limit = 3.0
resources = ["users"]
delete_hold_ratio = 0.4

[[account]]
name = "a"
base_url = "https://a.example.com/api/"
api_token_file = "DIR/a.token"

[[account]]
name = "b-2"
base_url = "https://b.example.com/api/"
api_token_file = "DIR/b.token"
environment = "production"
resources = ["users", "sessions"]
rate_limit = 7
schedule = "0 5 * * *"
"""


def test_accounts_inherit_the_top_level_and_override_it(tmp_path: Path) -> None:
    s = Settings.load({"HOME": str(tmp_path)}, config_file=_accounts_file(tmp_path, TWO_ACCOUNTS))
    a, b = s.accounts()
    assert (a.account, b.account) == ("a", "b-2")
    assert a.base_url == "https://a.example.com/api/"
    assert a.api_token == "tok-a-secret"
    assert (a.rate_limit, a.resources, a.environment, a.schedule) == (
        3.0,
        ("users",),
        "uat",
        "0 2 * * *",
    )
    assert (b.rate_limit, b.resources, b.environment, b.schedule) == (
        7.0,
        ("users", "sessions"),
        "production",
        "0 5 * * *",
    )
    assert a.delete_hold_ratio == b.delete_hold_ratio == 0.4
    assert s.for_account("b-2") is b
    assert not a.declared
    assert not b.declared
    # Every account's token is a secret of the whole, and none reaches a repr.
    assert set(s.secrets) >= {"tok-a-secret", "tok-b-secret"}
    for text in (repr(s), repr(a), repr(b)):
        assert "tok-a-secret" not in text
        assert "tok-b-secret" not in text


def test_environment_sets_the_defaults_an_account_table_overrides(tmp_path: Path) -> None:
    cfg = _accounts_file(tmp_path, TWO_ACCOUNTS)
    s = Settings.load({"HOME": str(tmp_path), "SYNCSVC_RATE_LIMIT": "2"}, config_file=cfg)
    assert [x.rate_limit for x in s.accounts()] == [2.0, 7.0]


def test_without_account_tables_the_variables_are_one_implicit_account(tmp_path: Path) -> None:
    env = {"HOME": str(tmp_path), "SYNCSVC_BASE_URL": "https://x.example.com/api/"}
    s = Settings.load(env)
    assert s.accounts() == (s,)
    assert s.account == "default"
    named = Settings.load({**env, "SYNCSVC_ACCOUNT": "acme"})
    assert named.accounts() == (named,)
    assert named.account == "acme"
    assert named.for_account("acme") is named


def test_an_unknown_account_name_is_one_line_listing_the_names(tmp_path: Path) -> None:
    s = Settings.load({"HOME": str(tmp_path)}, config_file=_accounts_file(tmp_path, TWO_ACCOUNTS))
    with pytest.raises(ConfigError, match=r"^no account named 'c' \(configured: a, b-2\)$"):
        s.for_account("c")


ONE = (
    '[[account]]\nname = "a"\nbase_url = "https://a.example.com/api/"\n'
    'api_token_file = "DIR/a.token"\n'
)


@pytest.mark.parametrize(
    ("body", "says"),
    [
        (ONE + ONE, "account 'a': the name is declared twice"),
        (ONE.replace('name = "a"\n', ""), "[[account]] #1: `name` must be a slug"),
        (ONE.replace('"a"', '"Bad Name"', 1), "'Bad Name' is `name` must be a slug"),
        (ONE + 'database_url = "postgresql://x/y"\n', "'database_url': not a per-account"),
        (ONE + "rate_limt = 3\n", "'rate_limt': unknown setting (did you mean rate_limit?)"),
        (
            ONE + 'api_token = "tok-literal-secret"\n',
            "'api_token': give the token as api_token_file",
        ),
        (ONE.replace('base_url = "https://a.example.com/api/"\n', ""), "account 'a': no base_url"),
        (ONE.replace('api_token_file = "DIR/a.token"\n', ""), "account 'a': no api_token_file"),
        (ONE.replace("a.token", "missing.token"), "account 'a': api_token_file: cannot read"),
        (ONE + 'environment = "staging"\n', "account 'a': environment must be one of"),
        (ONE + 'rate_limit = "fast"\n', "account 'a': rate_limit is not a valid float"),
        (ONE.replace("https://a", "http://a"), "account 'a': base_url must use https"),
    ],
)
def test_a_bad_account_table_is_one_line_naming_the_account_and_key(
    tmp_path: Path, body: str, says: str
) -> None:
    cfg = _accounts_file(tmp_path, body)
    with pytest.raises(ConfigError) as info:
        Settings.load({"HOME": str(tmp_path)}, config_file=cfg)
    message = str(info.value)
    assert says in message
    assert "\n" not in message
    assert "secret" not in message  # neither token's value


def test_a_bad_implicit_account_name_is_refused() -> None:
    with pytest.raises(ConfigError, match="SYNCSVC_ACCOUNT must be a slug"):
        Settings.load({"SYNCSVC_ACCOUNT": "Not/A/Slug"})


def test_syncsvc_account_beside_account_tables_is_refused(tmp_path: Path) -> None:
    cfg = _accounts_file(tmp_path, ONE)
    with pytest.raises(ConfigError, match="is each \\[\\[account\\]\\] table's own `name`"):
        Settings.load({"HOME": str(tmp_path), "SYNCSVC_ACCOUNT": "x"}, config_file=cfg)
