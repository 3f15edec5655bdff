"""structlog, configured once: JSON lines or console rendering, run_id via contextvars, redaction.

The secret registry here is the one list of values that must never leave the process: the API
token, the database password, and any secret a later feature adds (it calls `register_secrets`
with it as soon as it holds it). Each secret is kept with the spellings a server may echo it in:
as is, URL-encoded (either hex case, `+` for space or not) and XML-escaped.

Redaction happens at two places. Where a server's text enters syncsvc: every SyncError redacts
its own message and context, so a run record, a fetch row, stdout, `status` and a traceback carry
what the error carries. And as the last line of defence: any string that reaches a log line
(event, values, nested values, exception text, stdlib records from aiohttp or asyncpg) passes
through `redact` after exceptions are formatted. Tracebacks are rendered as plain text, never
with local variables (tokens live in locals).
"""

from __future__ import annotations

import logging
import re
import sys
import threading
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any, TextIO
from urllib.parse import quote, quote_plus

if TYPE_CHECKING:
    from structlog.types import EventDict, Processor, WrappedLogger

# structlog is imported where it is used, not here: the parse workers import this module (every
# SyncError redacts itself) and start from a clean interpreter, where importing structlog costs
# more than the rest of the parse (measured: 0.75 s of a loaded machine's 1 s).

# What structlog imports only to offer rich's tracebacks and pretty-printed locals (with pygments
# for their colours), which these logs never use: tracebacks are plain text (format_exc_info,
# and plain_traceback for the console). Measured: 1.3 MB of a run's process.
_RICH_EXTRAS = ("rich.traceback", "rich.pretty")


def _import_structlog() -> None:
    """Import structlog (once) as if rich had no traceback or pretty-printer: its own fallbacks
    are taken. A module someone else already imported is left for structlog to use."""
    if "structlog" in sys.modules:
        return
    masked = [name for name in _RICH_EXTRAS if name not in sys.modules]
    for name in masked:
        sys.modules[name] = None  # type: ignore[assignment]  # an import of it raises ImportError
    try:
        import structlog  # noqa: F401
    finally:
        for name in masked:
            if sys.modules.get(name, False) is None:
                del sys.modules[name]


REDACTED = "***"

_secrets: tuple[str, ...] = ()
_lock = threading.Lock()


MIN_SECRET_CHARS = 4  # shorter values would redact ordinary words; no real secret is that short


def spellings(secret: str) -> set[str]:
    """`secret` as a server may echo it back: as sent, URL-encoded, XML-escaped."""
    import html  # here: the parse workers import this module and never register a secret

    out = {secret, html.escape(secret), html.escape(secret, quote=False)}
    for encoded in (quote(secret, safe=""), quote(secret), quote_plus(secret)):
        out.add(encoded)
        out.add(re.sub(r"%[0-9A-F]{2}", lambda m: m.group().lower(), encoded))
    return {s for s in out if len(s) >= MIN_SECRET_CHARS}


def register_secrets(values: Iterable[str | None]) -> None:
    """Add values that must never appear in a log line, an error, a row or an output."""
    global _secrets
    with _lock:
        merged = set(_secrets)
        for v in values:
            if v and len(v) >= MIN_SECRET_CHARS:
                merged |= spellings(v)
        # Longest first so a secret containing another is removed whole.
        _secrets = tuple(sorted(merged, key=len, reverse=True))


def redact_text(text: str, limit: int | None = None) -> str:
    """A server's (or a library's) text made safe to keep: secrets out first, then bounded, so
    a cut can never leave a secret's head behind."""
    text = redact(text)
    return text if limit is None else text[:limit]


def clear_secrets() -> None:
    global _secrets
    with _lock:
        _secrets = ()


def redact(value: Any) -> Any:
    """`value` with every registered secret replaced, recursing into containers."""
    secrets = _secrets
    if not secrets:
        return value
    if isinstance(value, str):
        for s in secrets:
            if s in value:
                value = value.replace(s, REDACTED)
        return value
    if isinstance(value, bytes):
        for s in secrets:
            value = value.replace(s.encode(), REDACTED.encode())
        return value
    if isinstance(value, dict):
        return {redact(k): redact(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return type(value)(redact(v) for v in value)
    if isinstance(value, int | float | bool) or value is None:
        return value
    # Anything else (exceptions, paths, objects) is rendered by its str(): redact that text.
    return redact(str(value))


def redact_processor(_: WrappedLogger, __: str, event_dict: EventDict) -> EventDict:
    for key in list(event_dict):
        event_dict[key] = redact(event_dict[key])
    return event_dict


def _shared_processors() -> list[Processor]:
    _import_structlog()
    import structlog

    return [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        structlog.processors.StackInfoRenderer(),
        # Plain-text tracebacks: never rich's with locals, whatever renders them afterwards.
        structlog.processors.format_exc_info,
        structlog.processors.UnicodeDecoder(),
        redact_processor,
    ]


def configure(level: str = "info", fmt: str = "auto", stream: TextIO | None = None) -> None:
    """Configure structlog and route stdlib logging through the same chain. Idempotent."""
    _import_structlog()
    import structlog

    stream = stream or sys.stderr
    use_console = fmt == "console" or (fmt == "auto" and stream.isatty())
    renderer: Processor
    if use_console:
        renderer = structlog.dev.ConsoleRenderer(
            colors=stream.isatty(), exception_formatter=structlog.dev.plain_traceback
        )
    else:
        renderer = structlog.processors.JSONRenderer()
    shared = _shared_processors()
    structlog.configure(
        processors=[
            structlog.stdlib.filter_by_level,
            *shared,
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=False,
    )
    handler = logging.StreamHandler(stream)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=shared,
            processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, renderer],
        )
    )
    root = logging.getLogger()
    for h in list(root.handlers):
        if getattr(h, "_syncsvc", False):
            root.removeHandler(h)
    handler._syncsvc = True  # type: ignore[attr-defined]
    root.addHandler(handler)
    root.setLevel(level.upper())
    # Library chatter at info level is noise in a nightly job's log.
    for name in ("asyncio", "aiohttp.access", "alembic", "pgserver"):
        logging.getLogger(name).setLevel(max(logging.WARNING, root.level))


def get_logger(name: str | None = None) -> Any:
    _import_structlog()
    import structlog

    return structlog.stdlib.get_logger(name)


def bind(**values: Any) -> None:
    """Bind values (run_id, unit, event) to every log line of the current task."""
    _import_structlog()
    import structlog

    structlog.contextvars.bind_contextvars(**values)


def unbind(*keys: str) -> None:
    _import_structlog()
    import structlog

    structlog.contextvars.unbind_contextvars(*keys)
