"""What every command module shares: loading the settings once, one-line failures, exit codes.

`syncsvc.cli` (the root app) and the command groups it mounts (`feed.cli`, `export.cli`) import
this module; it imports none of them, so no command module has to import the root app back.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import typer

from syncsvc import logs
from syncsvc.errors import ConfigError, RunLockedError, SyncError
from syncsvc.settings import Settings
from syncsvc.vocab import ExitCode

T = TypeVar("T")

# The exit codes of every command (syncsvc/vocab.py; a run's own follow from its status, see
# scheduler.EXIT_CODES; docs/operations.md lists them all).
EXIT_OK = ExitCode.SUCCEEDED
EXIT_FAILED = ExitCode.FAILED
EXIT_CONFIG = ExitCode.CONFIG
EXIT_LOCKED = ExitCode.LOCKED


def fail(message: str, code: int) -> typer.Exit:
    """Print one line on stderr and return the Exit to raise."""
    typer.echo(f"syncsvc: {logs.redact(message)}", err=True)
    return typer.Exit(code)


def run_async(coro_fn: Callable[[], Awaitable[T]], *, prefix: str = "") -> T:
    """Run a command's coroutine; SyncErrors become one line and an exit code, never a traceback.
    `prefix` starts the line (several accounts: which one failed)."""
    try:
        return asyncio.run(coro_fn())  # type: ignore[arg-type]
    except ConfigError as exc:
        raise fail(prefix + str(exc), EXIT_CONFIG) from None
    except RunLockedError as exc:
        raise fail(prefix + str(exc), EXIT_LOCKED) from None
    except SyncError as exc:
        raise fail(prefix + str(exc), EXIT_FAILED) from None
    except KeyboardInterrupt:
        raise fail("interrupted", ExitCode.INTERRUPTED) from None
    except asyncio.CancelledError:  # SIGTERM (see scheduler.cancel_on_sigterm)
        raise fail("interrupted (SIGTERM)", ExitCode.TERMINATED) from None


@dataclass(slots=True)
class Config:
    """The settings, loaded when a command first asks: `--help`, `--version` and `simulate`
    must work whatever the environment holds."""

    file: Path | None
    settings: Settings | None = None
    sources: dict[str, str] | None = None  # where each setting came from (absent: default)


def settings_of(ctx: typer.Context) -> Settings:
    """The command's settings, loaded (and logging configured) on first use."""
    cfg: Config = ctx.find_root().obj
    if cfg.settings is None:
        try:
            loaded = Settings.explain(config_file=cfg.file)
        except ConfigError as exc:
            raise fail(str(exc), EXIT_CONFIG) from None
        cfg.settings = loaded.settings
        cfg.sources = dict(loaded.sources)
        logs.register_secrets(cfg.settings.secrets)
        logs.configure(cfg.settings.log_level, cfg.settings.log_format)
        for warning in loaded.warnings:
            logs.get_logger(__name__).warning("setting_ignored", warning=warning)
    return cfg.settings


def api_settings_of(ctx: typer.Context) -> Settings:
    """The settings of a command that calls the API: base URL and token required (exit 2)."""
    settings = settings_of(ctx)
    try:
        for account in settings.accounts():
            account.require_api()
    except ConfigError as exc:
        raise fail(str(exc), EXIT_CONFIG) from None
    return settings


def chosen_accounts(settings: Settings, names: list[str] | None) -> tuple[Settings, ...]:
    """The accounts `--account NAME` (repeatable) picks, in the order given; none: all of them.
    An unknown name is a config error (exit 2) listing the configured ones."""
    if not names:
        return settings.accounts()
    try:
        return tuple(settings.for_account(n) for n in dict.fromkeys(names))
    except ConfigError as exc:
        raise fail(str(exc), EXIT_CONFIG) from None
