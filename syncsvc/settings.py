"""Frozen settings, built once by the CLI from SYNCSVC_* variables, a TOML file and secret files.

Precedence, highest first: the environment (`SYNCSVC_<NAME>`), then `SYNCSVC_<NAME>_FILE` for
secrets, then the TOML file (`--config` or `SYNCSVC_CONFIG`, keys are the lower-case names), then
the default. Stages receive the object; none of them reads os.environ.
"""

from __future__ import annotations

import dataclasses
import difflib
import ipaddress
import os
import re
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from syncsvc.errors import ConfigError

ENV_PREFIX = "SYNCSVC_"
ENVIRONMENTS = ("uat", "production")
LOG_FORMATS = ("auto", "json", "console")
PARSE_IN_WORKER = ("event_all", "always", "never")
RATE_BUDGETS = ("local", "shared")
LOG_LEVELS = ("debug", "info", "warning", "error")
EXECUTORS = ("local", "queue")

# The implicit account's name: the single-account deployment (no `[[account]]` table).
DEFAULT_ACCOUNT = "default"
ACCOUNT_NAME_PATTERN = re.compile(r"[a-z0-9][a-z0-9_-]{0,39}")
# What an `[[account]]` table may set (api_token_file: the token itself never sits in TOML); every
# other setting is the deployment's (the database, serve, the feed, logging).
ACCOUNT_KEYS = (
    "base_url",
    "api_token_file",
    "environment",
    "schedule",
    "resources",
    "events_include",
    "events_exclude",
    "use_event_all",
    "rate_limit",
    "rate_period",
    "max_concurrency",
    "delete_hold_ratio",
    "delete_hold_min_rows",
    "run_deadline",
)


def _setting(default: Any, doc: str, *, secret: bool = False, **kw: Any) -> Any:
    """A dataclass field carrying the documentation the config reference is generated from."""
    if isinstance(default, list):
        default = tuple(default)
    return field(default=default, metadata={"doc": doc, "secret": secret, **kw})


def default_data_dir(env: Mapping[str, str]) -> Path:
    base = env.get("XDG_DATA_HOME") or (env.get("HOME") and str(Path(env["HOME"]) / ".local/share"))
    return Path(base or Path.home() / ".local" / "share") / "syncsvc"


@dataclass(frozen=True, slots=True, repr=False)
class Settings:
    """Every knob of syncsvc. Built by `Settings.load`; never mutated."""

    # --- the account ---------------------------------------------------------------------------
    account: str = _setting(
        DEFAULT_ACCOUNT,
        "The name of the one account the SYNCSVC_* variables describe (a slug: a-z, 0-9, _ and"
        " -, at most 40). With `[[account]]` tables in the TOML file each table names its own"
        ' (docs/operations.md, "Many accounts"); every run, fetch, change and state row'
        " carries it.",
    )

    # --- the API -------------------------------------------------------------------------------
    base_url: str | None = _setting(
        None,
        "The Conference API base URL, e.g. https://EVENTURL.smarteventscloud.com/api/ "
        "(https required unless the host is loopback).",
    )
    api_token: str | None = _setting(None, "The API token (apiToken).", secret=True)
    environment: str = _setting(
        "uat", "Which Cvent site base_url points at: uat or production; recorded on every run."
    )
    rate_limit: float = _setting(10.0, "Request starts allowed per rate_period seconds.")
    rate_period: float = _setting(1.0, "The window, in seconds, of rate_limit.")
    max_concurrency: int = _setting(4, "Requests in flight at once (all units of a run share it).")
    rate_budget: str = _setting(
        "local",
        "Who keeps rate_limit and max_concurrency: local (this process alone) or shared (one"
        " budget per API token in the database, shared by every process that uses the token).",
    )
    rate_budget_lease_ttl: float = _setting(
        15.0,
        "With rate_budget = shared: seconds after which a request place held by a process that"
        " stopped renewing it (killed, frozen) counts as free again.",
    )
    connect_timeout: float = _setting(15.0, "Seconds to open a connection.")
    read_timeout: float = _setting(120.0, "Seconds of silence tolerated while a dump streams.")
    fetch_deadline: float = _setting(3600.0, "Seconds one fetch attempt may take in all.")
    max_dump_bytes: int = _setting(
        8 * 1024**3, "Decoded bytes one dump may reach before it is refused."
    )
    parse_in_worker: str = _setting(
        "always",
        "Which dumps are parsed in worker processes, segment by segment, beside COPY and the"
        " diff: always, event_all (only the account-wide ones) or never (in the run's own"
        " process).",
    )
    parse_workers: int = _setting(
        2, "Worker processes that parse large dumps (one per core the database can spare)."
    )
    retry_attempts: int = _setting(5, "Attempts per call, the first included.")
    retry_base_delay: float = _setting(1.0, "Base of the exponential backoff, in seconds.")
    retry_max_delay: float = _setting(60.0, "Cap of a single backoff delay, in seconds.")
    retry_budget: float = _setting(300.0, "Total seconds one call may spend waiting to retry.")

    # --- time bounds on a slow or silent server (docs/operations.md, "Slow servers") ----------
    stall_min_rate: float = _setting(
        1024.0,
        "A dump arriving slower than this many bytes/s over stall_window seconds of reading is"
        " a stalled transfer, retried like a reset (0: no stall rule).",
    )
    stall_window: float = _setting(60.0, "The window, in seconds, of stall_min_rate.")
    run_deadline: float = _setting(
        3.5 * 3600.0,
        "Seconds a whole run may take; units still running then are cancelled and the run ends"
        " failed or partial (0: no deadline). Keep it below any deadline around the process"
        " (the CronJob's activeDeadlineSeconds, 4 h), so the run records its own end.",
    )

    # --- what to sync --------------------------------------------------------------------------
    resources: tuple[str, ...] = _setting(
        ["users", "sessions", "exhibitors"], "Which data resources to sync (events always are)."
    )
    events_include: tuple[str, ...] = _setting([], "Only these event GUIDs (empty: all).")
    events_exclude: tuple[str, ...] = _setting([], "Never these event GUIDs.")
    use_event_all: bool = _setting(True, "Use one event=all call where the resource allows it.")
    delete_hold_ratio: float = _setting(
        0.5, "Hold a unit that would delete more than this share of its scope's live rows."
    )
    delete_hold_min_rows: int = _setting(
        20, "Scopes with fewer live rows than this are never held."
    )

    # --- the database --------------------------------------------------------------------------
    database_url: str | None = _setting(
        None, "postgresql://user@host:port/db; unset: an embedded PostgreSQL under data_dir."
    )
    database_password: str | None = _setting(
        None, "Overrides the password of database_url.", secret=True
    )
    data_dir: Path = _setting(  # noqa: RUF009 (Path is immutable)
        Path("~/.local/share/syncsvc"),
        "Where the embedded PostgreSQL keeps its data ($XDG_DATA_HOME/syncsvc when that is set).",
    )

    # --- serve ---------------------------------------------------------------------------------
    schedule: str = _setting("0 2 * * *", "The cron schedule of `syncsvc serve` (UTC).")
    serve_host: str = _setting(
        "0.0.0.0",  # noqa: S104 (serve must be reachable by the orchestrator's probes)
        "Address `syncsvc serve` listens on for /healthz, /metrics.",
    )
    serve_port: int = _setting(9108, "Port of /healthz and /metrics.")

    # --- units on a task queue (docs/task-queue.md) -------------------------------------------
    executor: str = _setting(
        "local",
        "Where a run's units run: local (in the run's own process, the default) or queue (as"
        " jobs for `syncsvc worker` processes on any machine; needs the queue extra and"
        " `syncsvc db upgrade`).",
    )
    worker_concurrency: int = _setting(
        4, "Units one `syncsvc worker` process runs at once (its requests share its budget)."
    )
    worker_heartbeat: float = _setting(
        10.0, "Seconds between a worker's heartbeats (procrastinate's worker row)."
    )
    worker_stalled_after: float = _setting(
        30.0,
        "Seconds without a heartbeat after which a worker is taken for dead and its units are"
        " run again by the others (keep it a few heartbeats long).",
    )

    # --- the status pages of serve (syncsvc/web) ------------------------------------------------
    status_page_token: str | None = _setting(
        None,
        "A token the status pages (/, /runs, /trends, /consumers, /now) require, as the HTTP Basic"
        " password (any user name) or `Authorization: Bearer`; give it as a file"
        " (SYNCSVC_STATUS_PAGE_TOKEN_FILE). Unset: the pages are open. /healthz and /metrics never"
        " need it.",
        secret=True,
    )

    # --- the change feed: follow mode and webhook delivery (docs/change-feed.md) ---------------
    feed_poll_interval: float = _setting(
        5.0,
        "Seconds between checks for new changes when no notification arrives (`changes --follow`"
        " and webhook delivery): what a missed notification costs.",
    )
    webhook_batch_size: int = _setting(
        500, "Changes per webhook request at most (a consumer's own batch size overrides it)."
    )
    webhook_batch_max_bytes: int = _setting(
        4 * 1024**2, "Bytes of changes per webhook request at most (one change always fits)."
    )
    webhook_batch_max_wait: float = _setting(
        0.5, "Seconds a partial webhook batch waits for more changes before it is sent."
    )
    webhook_timeout: float = _setting(30.0, "Seconds a webhook request may take in all.")
    webhook_retry_base_delay: float = _setting(
        1.0, "Base of the exponential backoff between webhook attempts, in seconds."
    )
    webhook_retry_max_delay: float = _setting(
        300.0, "Cap of one webhook backoff delay (and of an honoured Retry-After), in seconds."
    )
    webhook_failing_after: float = _setting(
        300.0,
        "Seconds of failed attempts after which a webhook consumer is marked failing (it keeps"
        " its place and keeps retrying).",
    )

    # --- logging -------------------------------------------------------------------------------
    log_level: str = _setting("info", "debug, info, warning or error.")
    log_format: str = _setting(
        "auto", "auto (console on a terminal, JSON otherwise), json, console."
    )

    # The `[[account]]` tables, each a whole per-account Settings; empty: one implicit account,
    # this object itself. No setting: the config reference and `check` list setting_fields() only.
    declared: tuple[Settings, ...] = field(
        default=(), metadata={"doc": "", "secret": False, "internal": True}
    )

    def __repr__(self) -> str:
        parts = []
        for f in setting_fields(self):
            value = getattr(self, f.name)
            if f.metadata.get("secret") and value is not None:
                value = "***"
            parts.append(f"{f.name}={value!r}")
        return f"Settings({', '.join(parts)})"

    @property
    def secrets(self) -> tuple[str, ...]:
        """The secret values in force, for the log redaction (a password inside the URL too)."""
        values = [
            v
            for f in setting_fields(self)
            if f.metadata.get("secret") and isinstance(v := getattr(self, f.name), str) and v
        ]
        if self.database_url and (password := urlsplit(self.database_url).password):
            values.append(password)
        for account in self.declared:
            values.extend(v for v in account.secrets if v not in values)
        return tuple(values)

    def accounts(self) -> tuple[Settings, ...]:
        """Every account this deployment syncs, each a whole Settings with `account` set: the
        `[[account]]` tables in their order, or the one implicit account (these settings)."""
        return self.declared or (self,)

    def for_account(self, name: str) -> Settings:
        """The account named `name`, or a ConfigError listing the names there are."""
        for account in self.accounts():
            if account.account == name:
                return account
        names = ", ".join(a.account for a in self.accounts())
        raise ConfigError(f"no account named {name!r} (configured: {names})", setting="account")

    def require_api(self) -> tuple[str, str]:
        """The base URL and token, or a ConfigError naming what is missing."""
        if not self.base_url:
            raise ConfigError("SYNCSVC_BASE_URL is not set", setting="base_url")
        if not self.api_token:
            raise ConfigError(
                "SYNCSVC_API_TOKEN (or SYNCSVC_API_TOKEN_FILE) is not set", setting="api_token"
            )
        return self.base_url, self.api_token

    def replace(self, **changes: Any) -> Settings:
        new = dataclasses.replace(self, **changes)
        _validate(new)
        return new

    @classmethod
    def load(
        cls, env: Mapping[str, str] | None = None, config_file: str | Path | None = None
    ) -> Settings:
        """Build the settings; raises ConfigError with one line naming the bad setting."""
        return cls.explain(env, config_file).settings

    @classmethod
    def explain(
        cls, env: Mapping[str, str] | None = None, config_file: str | Path | None = None
    ) -> Loaded:
        """The settings, where each value came from, and warnings about names that are no
        setting (a misspelt variable is otherwise silently ignored)."""
        env = os.environ if env is None else env
        config_file = config_file or env.get(ENV_PREFIX + "CONFIG")
        file_values: dict[str, Any] = {}
        if config_file:
            path = Path(config_file)
            try:
                file_values = tomllib.loads(path.read_text())
            except OSError as exc:
                raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from exc
            except tomllib.TOMLDecodeError as exc:
                raise ConfigError(f"config file {path} is not valid TOML: {exc}") from exc
            file_values = {k.lower(): v for k, v in file_values.items()}
        tables = file_values.pop("account", None) if _is_tables(file_values.get("account")) else []
        fields = setting_fields(cls)
        known = {f.name for f in fields}
        unknown = sorted(set(file_values) - known)
        if unknown:
            raise ConfigError(
                f"config file {config_file}: unknown setting {unknown[0]!r}"
                + _did_you_mean(unknown[0], known)
            )
        values: dict[str, Any] = {}
        sources: dict[str, str] = {}
        for f in fields:
            name = ENV_PREFIX + f.name.upper()
            raw: Any
            if name in env:
                raw, source = env[name], name
            elif f.metadata.get("secret") and name + "_FILE" in env:
                raw = _read_secret_file(name, env[name + "_FILE"])
                source = f"{name}_FILE ({env[name + '_FILE']})"
            elif f.name in file_values:
                raw, source = file_values[f.name], f"{f.name} in {config_file}"
            else:
                continue
            sources[f.name] = source
            values[f.name] = _coerce(f, raw, source)
        values.setdefault("data_dir", default_data_dir(env))
        settings = cls(**values)
        try:
            _validate(settings)
        except ConfigError as exc:
            # _validate speaks of variables; a value from the TOML file is named by its key.
            origin = sources.get(exc.setting or "")
            if origin and exc.setting and not origin.startswith(ENV_PREFIX):
                exc.message = exc.message.replace(ENV_PREFIX + exc.setting.upper(), origin)
                exc.args = (exc.message,)
            raise
        if tables:
            if "account" in sources:
                raise ConfigError(
                    f"{sources['account']}: the account's name is each [[account]] table's own"
                    " `name` when the config file declares [[account]] tables",
                    setting="account",
                )
            declared = _accounts(settings, tables, config_file)
            settings = dataclasses.replace(settings, declared=declared)
        return Loaded(settings, sources, tuple(_unknown_variables(env, fields)))


def setting_fields(settings: Any) -> tuple[dataclasses.Field[Any], ...]:
    """The settings' fields (what a variable, a TOML key and the config reference name)."""
    return tuple(f for f in dataclasses.fields(settings) if not f.metadata.get("internal"))


def _is_tables(value: Any) -> bool:
    return isinstance(value, list) and all(isinstance(t, dict) for t in value)


def _accounts(
    base: Settings, tables: list[dict[str, Any]], config_file: Any
) -> tuple[Settings, ...]:
    """The `[[account]]` tables as per-account Settings over `base` (the top-level values and
    the environment, which every account inherits). Errors name the account and the key."""
    by_name = {f.name: f for f in setting_fields(Settings)}
    out: list[Settings] = []
    seen: set[str] = set()
    for i, raw in enumerate(tables, 1):
        table = {str(k).lower(): v for k, v in raw.items()}
        name = table.pop("name", None)
        where = f"config file {config_file}: [[account]] #{i}"
        if not isinstance(name, str) or not ACCOUNT_NAME_PATTERN.fullmatch(name):
            shown = "" if name is None else f" {name!r} is"
            raise ConfigError(
                f"{where}:{shown} `name` must be a slug of a-z, 0-9, _ and - (at most 40,"
                " starting with a letter or digit)",
                setting="account",
            )
        where = f"config file {config_file}: account {name!r}"
        if name in seen:
            raise ConfigError(f"{where}: the name is declared twice", setting="account")
        seen.add(name)
        values: dict[str, Any] = {"account": name}
        for key, raw_value in table.items():
            if key not in ACCOUNT_KEYS:
                why = (
                    "give the token as api_token_file (a file holding it)"
                    if key == "api_token"
                    else "not a per-account setting (set it at the top level)"
                    if key in by_name
                    else "unknown setting" + _did_you_mean(key, set(ACCOUNT_KEYS))
                )
                raise ConfigError(f"{where}: {key!r}: {why}", setting=key)
            if key == "api_token_file":
                path = Path(str(raw_value)).expanduser()
                try:
                    values["api_token"] = path.read_text().strip()
                except OSError as exc:
                    raise ConfigError(
                        f"{where}: api_token_file: cannot read {path}: {exc.strerror}",
                        setting="api_token_file",
                    ) from exc
                continue
            values[key] = _coerce(by_name[key], raw_value, f"{where}: {key}")
        account = dataclasses.replace(base, **values)
        for key, missing in (("base_url", account.base_url), ("api_token", account.api_token)):
            if not missing:
                hint = "api_token_file" if key == "api_token" else key
                raise ConfigError(
                    f"{where}: no {hint} (set it in the table or at the top level)", setting=key
                )
        try:
            _validate(account)
        except ConfigError as exc:
            # _validate speaks of variables: name the account's key instead when it set it.
            if exc.setting and exc.setting in table:
                exc.message = exc.message.replace(
                    ENV_PREFIX + exc.setting.upper(), f"{where}: {exc.setting}"
                )
            else:
                exc.message = f"{where}: {exc.message}"
            exc.args = (exc.message,)
            raise
        out.append(account)
    return tuple(out)


@dataclass(frozen=True, slots=True)
class Loaded:
    """What `Settings.explain` found: the settings, each value's origin, and warnings."""

    settings: Settings
    sources: Mapping[str, str]  # field name -> the variable, file or TOML key; absent: default
    warnings: tuple[str, ...]


# SYNCSVC_* names that are not settings but are not mistakes either.
_OTHER_VARIABLES = (ENV_PREFIX + "CONFIG",)
_OTHER_PREFIXES = (ENV_PREFIX + "TEST_",)  # the test suite's own (tests/conftest.py)


def _unknown_variables(
    env: Mapping[str, str], fields: tuple[dataclasses.Field[Any], ...]
) -> list[str]:
    known = {ENV_PREFIX + f.name.upper() for f in fields}
    known |= {ENV_PREFIX + f.name.upper() + "_FILE" for f in fields if f.metadata.get("secret")}
    known |= set(_OTHER_VARIABLES)
    out = []
    for name in sorted(env):
        if not name.startswith(ENV_PREFIX) or name in known or name.startswith(_OTHER_PREFIXES):
            continue
        out.append(f"{name} is not a setting and is ignored" + _did_you_mean(name, known))
    return out


def _did_you_mean(name: str, known: set[str]) -> str:
    close = difflib.get_close_matches(name, sorted(known), n=1, cutoff=0.6)
    return f" (did you mean {close[0]}?)" if close else ""


def _read_secret_file(name: str, path: str) -> str:
    try:
        return Path(path).read_text().strip()
    except OSError as exc:
        raise ConfigError(
            f"{name}_FILE: cannot read {path}: {exc.strerror}", setting=name.lower()
        ) from exc


def _coerce(f: dataclasses.Field[Any], raw: Any, name: str) -> Any:
    parsers: dict[str, Callable[[Any], Any]] = {
        "float": float,
        "int": int,
        "bool": _parse_bool,
        "Path": lambda v: Path(v).expanduser(),
        "tuple[str, ...]": _parse_list,
    }
    kind = str(f.type).replace("| None", "").strip()
    parse = parsers.get(kind)
    if parse is None:
        if not isinstance(raw, str):
            raise ConfigError(f"{name} must be a string, got {type(raw).__name__}", setting=f.name)
        return raw
    try:
        return parse(raw)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{name} is not a valid {kind}: {raw!r}", setting=f.name) from exc


def _parse_bool(raw: Any) -> bool:
    if isinstance(raw, bool):
        return raw
    text = str(raw).strip().lower()
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("0", "false", "no", "off"):
        return False
    raise ValueError(raw)


def _parse_list(raw: Any) -> tuple[str, ...]:
    if isinstance(raw, list | tuple):
        return tuple(str(x).strip() for x in raw if str(x).strip())
    if isinstance(raw, str):
        return tuple(x.strip() for x in raw.split(",") if x.strip())
    raise TypeError(raw)


def is_loopback_host(host: str | None) -> bool:
    if not host:
        return False
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _validate(s: Settings) -> None:
    if not ACCOUNT_NAME_PATTERN.fullmatch(s.account):
        raise ConfigError(
            "SYNCSVC_ACCOUNT must be a slug of a-z, 0-9, _ and - (at most 40, starting with a"
            f" letter or digit), not {s.account!r}",
            setting="account",
        )
    if s.base_url is not None:
        try:
            parts = urlsplit(s.base_url)
            host = parts.hostname
        except ValueError as exc:
            raise ConfigError(f"SYNCSVC_BASE_URL is malformed: {exc}", setting="base_url") from exc
        if parts.scheme not in ("http", "https") or not host:
            raise ConfigError(
                "SYNCSVC_BASE_URL is malformed: expected https://HOST/api/", setting="base_url"
            )
        if parts.username or parts.password or parts.query:
            raise ConfigError(
                "SYNCSVC_BASE_URL must not carry credentials or a query string", setting="base_url"
            )
        if parts.scheme == "http" and not is_loopback_host(host):
            raise ConfigError(
                f"SYNCSVC_BASE_URL must use https (plain http only to loopback, not {host})",
                setting="base_url",
            )
    if s.environment not in ENVIRONMENTS:
        raise ConfigError(
            f"SYNCSVC_ENVIRONMENT must be one of {', '.join(ENVIRONMENTS)}, not {s.environment!r}",
            setting="environment",
        )
    if s.database_url is not None:
        parts = urlsplit(s.database_url)
        if parts.scheme not in ("postgresql", "postgres", "postgresql+asyncpg"):
            raise ConfigError(
                "SYNCSVC_DATABASE_URL must be a postgresql:// URL", setting="database_url"
            )
        try:
            parts.port  # noqa: B018 (urlsplit checks the port only when it is read)
        except ValueError:
            # Not the URL itself in the message: it may carry the password.
            raise ConfigError(
                "SYNCSVC_DATABASE_URL is malformed: its port is not a number from 0 to 65535",
                setting="database_url",
            ) from None
    if s.parse_in_worker not in PARSE_IN_WORKER:
        raise ConfigError(
            f"SYNCSVC_PARSE_IN_WORKER must be one of {', '.join(PARSE_IN_WORKER)}",
            setting="parse_in_worker",
        )
    if s.executor not in EXECUTORS:
        raise ConfigError(
            f"SYNCSVC_EXECUTOR must be one of {', '.join(EXECUTORS)}", setting="executor"
        )
    if s.worker_concurrency < 1:
        raise ConfigError(
            "SYNCSVC_WORKER_CONCURRENCY must be at least 1", setting="worker_concurrency"
        )
    if not 0 < s.worker_heartbeat < s.worker_stalled_after:
        raise ConfigError(
            "SYNCSVC_WORKER_STALLED_AFTER must be longer than SYNCSVC_WORKER_HEARTBEAT (> 0)",
            setting="worker_stalled_after",
        )
    if s.rate_budget not in RATE_BUDGETS:
        raise ConfigError(
            f"SYNCSVC_RATE_BUDGET must be one of {', '.join(RATE_BUDGETS)}", setting="rate_budget"
        )
    if s.log_format not in LOG_FORMATS:
        raise ConfigError(
            f"SYNCSVC_LOG_FORMAT must be one of {', '.join(LOG_FORMATS)}", setting="log_format"
        )
    if s.log_level not in LOG_LEVELS:
        raise ConfigError(
            f"SYNCSVC_LOG_LEVEL must be one of {', '.join(LOG_LEVELS)}", setting="log_level"
        )
    from syncsvc.catalog import DATA_RESOURCES

    valid = {r.table for r in DATA_RESOURCES}
    for r in s.resources:
        if r not in valid:
            raise ConfigError(
                f"SYNCSVC_RESOURCES: unknown resource {r!r} (one of {', '.join(sorted(valid))})",
                setting="resources",
            )
    positive = (
        "rate_limit",
        "rate_period",
        "max_concurrency",
        "rate_budget_lease_ttl",
        "parse_workers",
        "connect_timeout",
        "read_timeout",
        "fetch_deadline",
        "max_dump_bytes",
        "retry_attempts",
    )
    for name in positive:
        if getattr(s, name) <= 0:
            raise ConfigError(f"SYNCSVC_{name.upper()} must be positive", setting=name)
    # The change feed's knobs (docs/change-feed.md).
    for name in (
        "feed_poll_interval",
        "webhook_batch_size",
        "webhook_batch_max_bytes",
        "webhook_timeout",
        "webhook_retry_base_delay",
        "webhook_retry_max_delay",
        "webhook_failing_after",
    ):
        if getattr(s, name) <= 0:
            raise ConfigError(f"SYNCSVC_{name.upper()} must be positive", setting=name)
    if s.webhook_batch_max_wait < 0:
        raise ConfigError(
            "SYNCSVC_WEBHOOK_BATCH_MAX_WAIT must not be negative", setting="webhook_batch_max_wait"
        )
    for name in ("stall_min_rate", "run_deadline"):
        if getattr(s, name) < 0:
            raise ConfigError(f"SYNCSVC_{name.upper()} must be 0 or positive", setting=name)
    if s.stall_window <= 0:
        raise ConfigError("SYNCSVC_STALL_WINDOW must be positive", setting="stall_window")
    if not 0 < s.delete_hold_ratio <= 1:
        raise ConfigError(
            "SYNCSVC_DELETE_HOLD_RATIO must be in (0, 1]", setting="delete_hold_ratio"
        )
    try:
        from croniter import croniter

        croniter(s.schedule)
    except (ValueError, KeyError) as exc:
        raise ConfigError(
            f"SYNCSVC_SCHEDULE is not a cron expression: {s.schedule!r}", setting="schedule"
        ) from exc
