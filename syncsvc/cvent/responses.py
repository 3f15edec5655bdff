"""One classification of API responses (HTTP status, response code) into the error tree."""

from __future__ import annotations

import re
import time
from collections.abc import Mapping

from syncsvc import catalog, logs
from syncsvc.catalog import Outcome
from syncsvc.errors import (
    ApiError,
    ApiRetryableError,
    BadParameterError,
    EventAllUnsupportedError,
    FallbackError,
    HttpStatusError,
    InvalidTokenError,
    IpNotAllowedError,
    NoAccountAccessError,
    RateLimitedError,
    RunStoppingError,
    SyncError,
    TransportError,
    UnknownCodeError,
    UnknownEventError,
)

# The specific class of a known code; a code the catalog gains later still gets its outcome's
# generic class below, so a catalog edit alone is enough to change behaviour.
_CODE_CLASSES: dict[int, type[SyncError]] = {
    catalog.INVALID_TOKEN: InvalidTokenError,
    catalog.IP_NOT_ALLOWED: IpNotAllowedError,
    catalog.NO_ACCOUNT_ACCESS: NoAccountAccessError,
    catalog.EVENT_ALL_UNSUPPORTED: EventAllUnsupportedError,
    catalog.UNKNOWN_EVENT: UnknownEventError,
    catalog.BAD_PARAMETER: BadParameterError,
    catalog.RATE_LIMITED: RateLimitedError,
}
_OUTCOME_CLASSES: dict[Outcome, type[SyncError]] = {
    Outcome.STOP_RUN: RunStoppingError,
    Outcome.FALLBACK: FallbackError,
    Outcome.FAIL_FETCH: ApiError,
    Outcome.RETRY: ApiRetryableError,
}

MAX_MESSAGE_CHARS = 200  # a server message is kept for the run record, bounded
# A response code or a Retry-After delta is ASCII digits: int() would also read "1_01" as 101
# and "١٠١" (Arabic-Indic digits) as 101, turning a malformed code into a known one.
_CODE = re.compile(r"[+-]?[0-9]{1,18}")
_DELTA_SECONDS = re.compile(r"[0-9]{1,18}")
# A 404 means the resource path does not exist under the base URL: the path is wrong far more
# often than the resource.
_NOT_FOUND_HINT = (
    "; check the path of SYNCSVC_BASE_URL (the API lives under a path such as"
    " https://EVENTURL.smarteventscloud.com/api/)"
)


def parse_code(text: str) -> int | None:
    """A response code read strictly (optional sign, ASCII digits), None when it is not one."""
    text = text.strip(" \t\r\n")
    return int(text) if _CODE.fullmatch(text) else None


def parse_retry_after(value: str | None, *, now: float | None = None) -> float | None:
    """Seconds from a Retry-After header (delta-seconds or an HTTP date), None if absent/invalid."""
    if not value:
        return None
    value = value.strip()
    if _DELTA_SECONDS.fullmatch(value):
        return float(value)
    # Imported here: the parse workers import this module (for the response codes), and
    # email.utils is a package's worth of imports a worker never uses.
    import email.utils

    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


def classify(
    http_status: int | None,
    code: int | None = None,
    message: str | None = None,
    *,
    resource: str | None = None,
    event: str | None = None,
    headers: Mapping[str, str] | None = None,
    egress: str | None = None,
) -> SyncError | None:
    """The error a response means, or None when it is an accepted dump (HTTP 200, code 0).

    Driven by `catalog.RESPONSE_CODES`: the HTTP status is judged first (5xx and 429 retry, any
    other non-200 is terminal), then the API code. `message` is the server's responseMessage,
    kept (bounded) only for unknown codes; behaviour never depends on it. `egress` names the local
    address the request left from, for the 102 message.
    """
    where = {"resource": resource, "event_guid": event}
    retry_after = parse_retry_after((headers or {}).get("Retry-After"))
    if http_status is not None and http_status != 200:
        if http_status == 429:
            return RateLimitedError(
                "HTTP 429 Too Many Requests",
                retry_after=retry_after,
                http_status=http_status,
                **where,
            )
        if 500 <= http_status <= 599:
            return TransportError(f"HTTP {http_status}", http_status=http_status, **where)
        hint = _NOT_FOUND_HINT if http_status == 404 else ""
        return HttpStatusError(f"HTTP {http_status}{hint}", http_status=http_status, **where)
    if code is None or code == catalog.SUCCESS:
        return None
    known = catalog.RESPONSE_CODES.get(code)
    if known is None:
        # The server's own words: it may repeat what it was sent (the token), so they are
        # redacted before they are bounded or kept anywhere.
        kept = logs.redact_text((message or "").strip(), MAX_MESSAGE_CHARS)
        return UnknownCodeError(
            f"The API answered with unknown response code {code}: {kept!r}",
            code=code,
            server_message=kept,
            **where,
        )
    if known.outcome is Outcome.ACCEPT:
        return None
    cls = _CODE_CLASSES.get(code) or _OUTCOME_CLASSES[known.outcome]
    if cls is RateLimitedError:
        return RateLimitedError(retry_after=retry_after, code=code, **where)
    if cls is IpNotAllowedError:
        via = f" (this host's connection left from {egress}; behind NAT the public address differs)"
        return IpNotAllowedError(
            "This machine's egress IP address must be allow-listed with Cvent (code 102)"
            + (via if egress else ""),
            code=code,
            **where,
        )
    if cls in _OUTCOME_CLASSES.values():
        return cls(f"{known.meaning} (code {code})", code=code, **where)
    return cls(code=code, **where)
