"""The error tree every stage raises from; boundaries translate library errors into it.

::

    SyncError                         retryable = False
    ├── RetryableError                retryable = True
    │   ├── TransportError            connection reset, timeout, HTTP 5xx/429
    │   ├── IncompleteDumpError       body cut short, root never closed, no response code
    │   ├── SegmentRefused            a segment did not parse alone: again, as one document
    │   ├── WorkerDiedError           a parse worker exited with a segment in hand
    │   └── ApiRetryableError         codes 301, 500, 503
    │       └── RateLimitedError      code 301 / HTTP 429 (may carry retry_after)
    └── TerminalError                 retryable = False
        ├── ConfigError               bad settings: exit code 2
        ├── ApiError                  any other API response code
        │   ├── RunStoppingError      the whole run stops at once
        │   │   ├── InvalidTokenError        code 101
        │   │   └── IpNotAllowedError        code 102
        │   ├── FallbackError         the planner falls back to per-event units
        │   │   ├── NoAccountAccessError     code 103
        │   │   └── EventAllUnsupportedError code 104
        │   ├── UnknownEventError     code 201
        │   ├── BadParameterError     code 202
        │   ├── UnknownCodeError      a code the catalog does not know
        │   └── HttpStatusError       an HTTP status retrying will not change (3xx, 4xx but 429)
        ├── UnsafeXmlError            DOCTYPE, entities, size caps, malformed XML
        ├── UnrecognisedDumpError     not the expected container (a namespace, another shape)
        ├── RetriesExhaustedError     the retry policy gave up (wraps the last error)
        ├── AmbiguousEventError       an event GUID the API cannot name on its own (`all`)
        ├── StoreError                a database operation failed
        │   ├── MigrationError        the schema is missing or behind
        │   ├── RunLockedError        another run holds this database
        │   └── RunFencedError        this run lost its lock and a newer run started
        └── MassDeleteHeldError       a unit would delete more than the hold allows

The class docstring is the default message; context lives on attributes. Messages never carry
a secret: the client keeps the token out of every argument it passes here, and a SyncError
redacts its message and context against `syncsvc.logs`' registry when it is made, because a
server's own text (a response message, an element name in a parse error) may repeat the token.
"""

from __future__ import annotations

from typing import Any, ClassVar

from syncsvc.logs import redact


class SyncError(Exception):
    """syncsvc failed."""

    retryable: ClassVar[bool] = False

    def __init__(
        self,
        message: str | None = None,
        *,
        code: int | None = None,
        resource: str | None = None,
        event_guid: str | None = None,
        **context: Any,
    ) -> None:
        # Redacted here, once: every sink (run and fetch rows, stdout, status, tracebacks)
        # renders the error through this message.
        self.message = redact(message or (type(self).__doc__ or "").strip().splitlines()[0])
        self.code = code
        self.resource = resource
        self.event_guid = redact(event_guid)
        self.context = {k: redact(v) if isinstance(v, str) else v for k, v in context.items()}
        super().__init__(self.message)

    def __setstate__(self, state: dict[str, Any] | None) -> None:
        # Unpickled (a parse worker's error): the worker knows no secrets, this process does.
        self.__dict__.update(state or {})
        self.message = redact(self.message)
        self.args = (self.message,)

    def __str__(self) -> str:
        where = ", ".join(
            f"{k}={v}"
            for k, v in (
                ("resource", self.resource),
                ("event", self.event_guid),
                ("code", self.code),
            )
            if v is not None
        )
        return f"{self.message} ({where})" if where else self.message

    def __repr__(self) -> str:
        return f"{type(self).__name__}({str(self)!r})"


class RetryableError(SyncError):
    """A transient failure; the same call may succeed later."""

    retryable = True


class TerminalError(SyncError):
    """A failure that retrying will not fix."""


class TransportError(RetryableError):
    """The HTTP exchange with the API failed."""

    def __init__(self, message: str | None = None, *, http_status: int | None = None, **kw: Any):
        super().__init__(message, **kw)
        self.http_status = http_status


class IncompleteDumpError(RetryableError):
    """The dump ended before the whole document arrived; nothing from it may be applied."""


class SegmentRefused(RetryableError):
    """A segment did not parse on its own; the dump must be parsed as one document."""

    # The next attempt parses differently, so waiting buys nothing; it is the fallback the
    # split's soundness rests on, so no attempt limit or time budget may refuse it.
    retry_at_once: ClassVar[bool] = True


class WorkerDiedError(RetryableError):
    """A parse worker exited (killed, out of memory) with a segment in hand."""


class ApiRetryableError(RetryableError):
    """The API answered with a code that asks the caller to try again later."""


class RateLimitedError(ApiRetryableError):
    """The API's rate limit was exceeded."""

    def __init__(self, message: str | None = None, *, retry_after: float | None = None, **kw: Any):
        super().__init__(message, **kw)
        self.retry_after = retry_after


class ConfigError(TerminalError):
    """The configuration is invalid."""

    def __init__(self, message: str | None = None, *, setting: str | None = None, **kw: Any):
        super().__init__(message, **kw)
        self.setting = setting


class ApiError(TerminalError):
    """The API answered with a code that retrying will not change."""


class RunStoppingError(ApiError):
    """The API refused the caller; the run stops."""


class InvalidTokenError(RunStoppingError):
    """The API token is invalid or expired (code 101): set a valid SYNCSVC_API_TOKEN."""


class IpNotAllowedError(RunStoppingError):
    """This machine's egress IP address is not allow-listed with Cvent (code 102)."""


class FallbackError(ApiError):
    """The API refused an account-level call; fall back to per-event calls."""


class NoAccountAccessError(FallbackError):
    """Account-level access is not enabled for this token (code 103)."""


class EventAllUnsupportedError(FallbackError):
    """This resource does not accept event=all (code 104)."""


class UnknownEventError(ApiError):
    """The API does not know this event GUID (code 201)."""


class BadParameterError(ApiError):
    """The API rejected a parameter as missing or malformed (code 202)."""


class UnknownCodeError(ApiError):
    """The API answered with a response code syncsvc does not know."""


class HttpStatusError(ApiError):
    """The API answered with an HTTP status that retrying will not change."""

    def __init__(self, message: str | None = None, *, http_status: int | None = None, **kw: Any):
        super().__init__(message, **kw)
        self.http_status = http_status


class UnsafeXmlError(TerminalError):
    """The response is not a safe, well-formed XML document."""


class RetriesExhaustedError(TerminalError):
    """The call kept failing until the retry policy gave up."""


class AmbiguousEventError(TerminalError):
    """This event's GUID is the API's word for every event (`all`): it cannot be asked alone."""


class StoreError(TerminalError):
    """A database operation failed."""


class MigrationError(StoreError):
    """The database schema is missing or behind: run `syncsvc db upgrade`."""


class RunLockedError(StoreError):
    """Another syncsvc run holds this database; wait for it or pass --wait."""


class MassDeleteHeldError(TerminalError):
    """The unit would delete more records than the mass-delete hold allows; nothing applied."""


class RunFencedError(StoreError):
    """This run lost its right to write (its lock session was lost and a newer run started);
    it commits nothing more."""

    def __init__(
        self,
        message: str | None = None,
        *,
        run_id: int | None = None,
        superseded_by: int | None = None,
        **kw: Any,
    ) -> None:
        if message is None and run_id is not None:
            newer = f"run {superseded_by}" if superseded_by is not None else "a newer run"
            message = (
                f"fenced: run {run_id} was superseded by {newer} after its lock session was"
                " lost; it commits nothing more"
            )
        super().__init__(message, **kw)
        self.run_id = run_id
        self.superseded_by = superseded_by


class UnitClosedError(StoreError):
    """The unit's row was closed before this attempt could commit: another attempt of the same
    queued unit committed it (a redelivered job), or its run closed it. Nothing is applied."""


class UnrecognisedDumpError(TerminalError):
    """The dump's shape is not the one expected (a namespace, another container or record
    element); it is incomplete for its scope and nothing of it is applied."""
