"""What the client hands on: one attempt's decoded body, to a consumer that parses it.

The client (syncsvc/cvent/client.py) knows transport, rate budget, retries and the HTTP answer,
not XML: for every attempt whose answer may carry a dump it awaits the fetch's `BodyConsumer`
with the decoded body and what is known of the response. The parse stage
(syncsvc/parse/stream.py) makes the consumers; the scheduler composes the two.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from typing import Any, Generic, Protocol, TypeVar

from syncsvc.catalog import Resource

R_co = TypeVar("R_co", covariant=True)


class FetchProgress(Protocol):
    """Told how a fetch advances (a terminal's live display); every attempt starts over."""

    def response(self, content_length: int | None) -> None: ...

    def data(self, wire_bytes: int, decoded_bytes: int) -> None: ...

    def records(self, n: int) -> None: ...

    def fetched(self) -> None: ...  # the dump is complete (the caller applies it next)


@dataclass(frozen=True, slots=True)
class Response:
    """One attempt's answer, as its body's consumer needs to know it."""

    resource: Resource
    event: str | None  # as asked: None (the endpoint's own), "all", or an event GUID
    headers: Mapping[str, str]  # a Retry-After on a code-301 answer is honoured
    egress: str | None  # the local address the request left from (the code-102 message)
    max_bytes: int  # the decoded body's cap (max_dump_bytes)
    where: dict[str, Any]  # resource and event, for the errors raised about this body
    progress: FetchProgress | None = None


@dataclass(frozen=True, slots=True)
class Consumed(Generic[R_co]):
    """What a consumer made of a complete body: the sink's value and what the run records."""

    value: R_co
    records: int
    bytes: int  # decoded XML bytes


class BodyConsumer(Protocol[R_co]):
    """Consumes one attempt's decoded body; returns only for a complete, accepted dump, else
    raises a SyncError (the client's retry policy decides what happens next)."""

    async def __call__(
        self, body: AsyncIterator[bytes], response: Response
    ) -> Consumed[R_co]: ...  # pragma: no cover
