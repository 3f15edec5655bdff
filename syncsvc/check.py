"""`syncsvc check`: the settings, the database and the API, each one line with a verdict.

Settings: every value with where it came from (secrets shown as set, never their value).
Database: reachable, and its schema revision against the code's. API: one `event.do` call,
without retries: the token is valid (not 101) and this address is allow-listed (not 102; the
message names the egress address to allow-list).
"""

from __future__ import annotations

from pathlib import Path

import sqlalchemy as sa

from syncsvc import logs
from syncsvc.errors import (
    ConfigError,
    InvalidTokenError,
    IpNotAllowedError,
    RetriesExhaustedError,
    SyncError,
)
from syncsvc.settings import Settings, setting_fields

PASS, FAIL, WARN = "PASS", "FAIL", "WARN"


def _line(verdict: str, what: str, detail: str) -> str:
    return logs.redact(f"{verdict:4}  {what:9} {detail}")  # type: ignore[no-any-return]


def settings_lines(settings: Settings, sources: dict[str, str]) -> list[str]:
    out = []
    for f in setting_fields(settings):
        value = getattr(settings, f.name)
        if f.metadata.get("secret"):
            shown = "(set)" if value else "(unset)"
        elif f.name == "database_url" and value:
            from syncsvc.store import db

            shown = db.redacted(db.sqlalchemy_url(value).set(drivername="postgresql"))
        elif value is None:
            shown = "(unset)"
        else:
            shown = ",".join(value) if isinstance(value, tuple) else str(value)
        out.append(f"        {f.name} = {shown}  [{sources.get(f.name, 'default')}]")
    return out


async def run_checks(config_file: Path | None) -> tuple[list[str], bool]:
    """The report's lines and whether every check passed."""
    try:
        loaded = Settings.explain(config_file=config_file)
    except ConfigError as exc:
        return [_line(FAIL, "settings", str(exc))], False
    settings = loaded.settings
    logs.register_secrets(settings.secrets)
    # The checks speak through their own lines; library warnings would only repeat them.
    logs.configure("error", settings.log_format)
    lines = [
        _line(PASS, "settings", f"{len(loaded.sources)} set, the rest default"),
        *settings_lines(settings, dict(loaded.sources)),
    ]
    lines += [_line(WARN, "settings", w) for w in loaded.warnings]
    ok = True
    db_line = await _check_database(settings)
    ok &= db_line.startswith(PASS)
    lines.append(db_line)
    for account in settings.accounts():
        # [[account]] tables: one line each, named by the account.
        what = f"api {account.account}" if settings.declared else "api"
        api_line = await _check_api(account, what)
        ok &= api_line.startswith(PASS)
        lines.append(api_line)
    return lines, ok


async def _check_database(settings: Settings) -> str:
    from syncsvc.store import db

    where = "SYNCSVC_DATABASE_URL" if settings.database_url else "the embedded PostgreSQL"
    try:
        async with db.connect(settings) as engine, engine.connect() as conn:
            exists = await conn.scalar(sa.text("SELECT to_regclass('alembic_version') IS NOT NULL"))
            current = (
                await conn.scalar(sa.text("SELECT version_num FROM alembic_version"))
                if exists
                else None
            )
    except SyncError as exc:
        return _line(FAIL, "database", f"{where} is not reachable: {exc}")
    if current != db.SCHEMA_HEAD:
        return _line(
            FAIL,
            "database",
            f"{where} is reachable; its schema is at {current or 'nothing'}, the code needs "
            f"{db.SCHEMA_HEAD}: run `syncsvc db upgrade`",
        )
    return _line(PASS, "database", f"{where} is reachable; schema at {current}")


async def _check_api(settings: Settings, what: str = "api") -> str:
    from syncsvc import catalog
    from syncsvc.cvent.client import CventClient
    from syncsvc.parse.document import element_to_dict
    from syncsvc.parse.stream import ParseStage, collect_all

    try:
        base_url, _ = settings.require_api()
        one_try = settings.replace(retry_attempts=1)
        async with CventClient.open(one_try) as client:
            parse = ParseStage(one_try)  # a small dump: parsed in process, no workers
            listed = parse.consumer(catalog.EVENTS, collect_all, element_to_dict)
            events = (await client.fetch(catalog.EVENTS, None, listed)).value
    except ConfigError as exc:
        return _line(FAIL, what, str(exc))
    except InvalidTokenError as exc:
        return _line(FAIL, what, f"the token was refused: {exc}")
    except IpNotAllowedError as exc:
        return _line(FAIL, what, f"this address is not allow-listed: {exc}")
    except RetriesExhaustedError as exc:
        cause = exc.__cause__ if isinstance(exc.__cause__, SyncError) else exc
        return _line(FAIL, what, f"{base_url} did not answer: {cause}")
    except SyncError as exc:
        return _line(FAIL, what, f"event.do at {base_url} failed: {exc}")
    return _line(
        PASS,
        what,
        f"event.do at {base_url}: the token is valid and this address is allow-listed "
        f"({len(events)} events)",
    )
