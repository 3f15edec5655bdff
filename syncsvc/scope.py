"""What one unit's dump speaks for: one `Scope` type from the planner to the store.

Four reaches, each with one spelling on the fetch row (`fetches.scope`, unchanged from the
strings runs recorded before this type existed):

- `account` (event.do): the account's own list of events;
- `all` (`event=all`): every event the dump holds, plus the events it covers;
- `home` (no `event` parameter): the endpoint's own event, known from the dump alone;
- an event's GUID: that one event.

The store reads the first three alike (the events the dump holds, and the covered ones); only
a one-event scope takes records of that event alone. Inside the store the account's name is
`ACCOUNT_NAME` ('*'): the scope lock's and the hold's name for an `event.do` unit, recorded in
`fetches.details`.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

# The store's name for the whole account (scope locks, held scopes of event.do).
ACCOUNT_NAME = "*"


class Reach(enum.Enum):
    ACCOUNT = "account"
    EVERY_EVENT = "all"
    HOME = "home"
    EVENT = "event"


@dataclass(frozen=True, slots=True)
class Scope:
    """A unit's scope; `str()` is what the fetch row records."""

    reach: Reach
    event: str | None = None  # the GUID of a one-event scope

    def __post_init__(self) -> None:
        if (self.reach is Reach.EVENT) != (self.event is not None):
            raise ValueError("a one-event scope, and only it, names its event")

    @classmethod
    def account(cls) -> Scope:
        return cls(Reach.ACCOUNT)

    @classmethod
    def every_event(cls) -> Scope:
        return cls(Reach.EVERY_EVENT)

    @classmethod
    def home(cls) -> Scope:
        return cls(Reach.HOME)

    @classmethod
    def of_event(cls, guid: str) -> Scope:
        return cls(Reach.EVENT, guid)

    @classmethod
    def parse(cls, text: str) -> Scope:
        """The store's shorthand (tests, tools): "all" is every event, anything else one GUID."""
        return cls.every_event() if text == Reach.EVERY_EVENT.value else cls.of_event(text)

    @property
    def only(self) -> str | None:
        """The one event whose records this scope takes, or None: the dump's own events."""
        return self.event

    def __str__(self) -> str:
        return self.event if self.event is not None else self.reach.value
