"""The Conference API as syncsvc models it: resources, fields and response codes, in one place.

Everything here marked [modeled] in docs/conference-api.md is our contract where the
vendor's overview is silent. The simulator, the client, the normalizer and the store schema all
read these definitions, so a real capture corrects the model in one edit.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass


class FieldKind(enum.Enum):
    """How a field's text is typed on the way into PostgreSQL."""

    TEXT = "text"
    INT = "int"
    DATE = "date"  # a calendar date, no time zone (an event's start and end)
    DATETIME = "datetime"  # ISO 8601 instant; normalized to a timezone-aware UTC value
    REFS = "refs"  # a list of <userRef> children (session speakers, exhibitor contacts)
    CUSTOM = "custom"  # <customFields>: one child per field code, text = value code


@dataclass(frozen=True, slots=True)
class Field:
    """One element of a record: its API name, its column in the current-state table, its kind."""

    api: str
    column: str
    kind: FieldKind = FieldKind.TEXT


@dataclass(frozen=True, slots=True)
class Resource:
    """A data-dump resource of the Conference API and the entity it carries."""

    path: str  # e.g. "userData.do"
    entity: str  # "event", "user", "session", "exhibitor": the change log's entity name
    container: str  # the plural wrapper element, e.g. "users"
    record: str  # the record element, e.g. "user"
    key: str  # the API name of the key field (within an event, except for events)
    table: str  # the current-state table
    allows_event_all: bool  # whether `event=all` is accepted
    fields: tuple[Field, ...]
    per_event: bool = True  # False only for event.do, which lists the account's events

    @property
    def key_field(self) -> Field:
        return self.field(self.key)

    def field(self, api: str) -> Field:
        for f in self.fields:
            if f.api == api:
                return f
        raise KeyError(f"{self.path} has no field {api!r}")

    @property
    def field_names(self) -> tuple[str, ...]:
        return tuple(f.api for f in self.fields)

    @property
    def has_client_id(self) -> bool:
        return any(f.api == "clientID" for f in self.fields)


_T, _I, _D, _DT, _R, _C = (
    FieldKind.TEXT,
    FieldKind.INT,
    FieldKind.DATE,
    FieldKind.DATETIME,
    FieldKind.REFS,
    FieldKind.CUSTOM,
)

EVENTS = Resource(
    path="event.do",
    entity="event",
    container="events",
    record="event",
    key="eventGUID",
    table="events",
    allows_event_all=False,
    per_event=False,
    fields=(
        Field("eventGUID", "event_guid"),
        Field("eventCode", "event_code"),
        Field("eventName", "event_name"),
        Field("startDate", "start_date", _D),
        Field("endDate", "end_date", _D),
        Field("timeZone", "time_zone"),
        Field("status", "status"),
    ),
)

USERS = Resource(
    path="userData.do",
    entity="user",
    container="users",
    record="user",
    key="userRef",
    table="users",
    allows_event_all=True,
    fields=(
        Field("userRef", "user_ref"),
        Field("clientID", "client_id"),
        Field("eventGUID", "event_guid"),
        Field("firstName", "first_name"),
        Field("lastName", "last_name"),
        Field("email", "email"),
        Field("company", "company"),
        Field("title", "title"),
        Field("phone", "phone"),
        Field("city", "city"),
        Field("state", "state"),
        Field("country", "country"),
        Field("attendeeType", "attendee_type"),
        Field("registrationStatus", "registration_status"),
        Field("registrationDate", "registration_date", _DT),
        Field("lastModified", "last_modified", _DT),
        Field("customFields", "custom_fields", _C),
    ),
)

SESSIONS = Resource(
    path="sessionData.do",
    entity="session",
    container="sessions",
    record="session",
    key="sessionID",
    table="sessions",
    allows_event_all=True,
    fields=(
        Field("sessionID", "session_id"),
        Field("eventGUID", "event_guid"),
        Field("sessionCode", "session_code"),
        Field("title", "title"),
        Field("abstract", "abstract"),
        Field("sessionType", "session_type"),
        Field("track", "track"),
        Field("room", "room"),
        Field("startTime", "start_time", _DT),
        Field("endTime", "end_time", _DT),
        Field("capacity", "capacity", _I),
        Field("status", "status"),
        Field("speakers", "speakers", _R),
        Field("lastModified", "last_modified", _DT),
        Field("customFields", "custom_fields", _C),
    ),
)

EXHIBITORS = Resource(
    path="exhibitorData.do",
    entity="exhibitor",
    container="exhibitors",
    record="exhibitor",
    key="exhibitorID",
    table="exhibitors",
    allows_event_all=False,
    fields=(
        Field("exhibitorID", "exhibitor_id"),
        Field("clientID", "client_id"),
        Field("eventGUID", "event_guid"),
        Field("name", "name"),
        Field("boothNumber", "booth_number"),
        Field("website", "website"),
        Field("sponsorLevel", "sponsor_level"),
        Field("description", "description"),
        Field("contacts", "contacts", _R),
        Field("lastModified", "last_modified", _DT),
        Field("customFields", "custom_fields", _C),
    ),
)

RESOURCES: tuple[Resource, ...] = (EVENTS, USERS, SESSIONS, EXHIBITORS)
DATA_RESOURCES: tuple[Resource, ...] = (USERS, SESSIONS, EXHIBITORS)
BY_PATH: dict[str, Resource] = {r.path: r for r in RESOURCES}
BY_ENTITY: dict[str, Resource] = {r.entity: r for r in RESOURCES}


def resolve(resource: Resource | str) -> Resource:
    """A Resource, given itself, its path ("userData.do") or its entity ("user")."""
    if isinstance(resource, Resource):
        return resource
    found = BY_PATH.get(resource) or BY_ENTITY.get(resource)
    if found is None:
        raise ValueError(f"unknown resource {resource!r}")
    return found


# Elements a data dump must never hand us: the Primary ID lets its holder act as the user.
FORBIDDEN_ELEMENTS: frozenset[str] = frozenset({"userKey"})

# The custom fields whose value is a custom value ID rather than a value code [overview].
CONSTRAINT_FIELDS: frozenset[str] = frozenset(
    {"publicViewPrivateSchedule", "privateViewPrivateSchedule", "cannotViewOrSchedule"}
)

CUSTOM_PREFIX = "custom."  # changed_fields name custom field <code> as "custom.<code>"


class Outcome(enum.Enum):
    """What the sync does with a response code (conference-api.md, "Response codes")."""

    ACCEPT = "accept"
    STOP_RUN = "stop_run"  # configuration problem: stop the whole run, never retry
    FALLBACK = "fallback"  # the planner falls back to per-event units
    FAIL_FETCH = "fail_fetch"  # this unit fails; siblings go on
    RETRY = "retry"  # retry with backoff, then fail this unit


@dataclass(frozen=True, slots=True)
class ResponseCode:
    code: int
    meaning: str
    outcome: Outcome


RESPONSE_CODES: dict[int, ResponseCode] = {
    rc.code: rc
    for rc in (
        ResponseCode(0, "Success", Outcome.ACCEPT),
        ResponseCode(101, "Invalid or expired apiToken", Outcome.STOP_RUN),
        ResponseCode(102, "Caller IP address not allow-listed", Outcome.STOP_RUN),
        ResponseCode(103, "Account-level access not enabled", Outcome.FALLBACK),
        ResponseCode(104, "event=all not supported by this resource", Outcome.FALLBACK),
        ResponseCode(201, "Unknown event GUID", Outcome.FAIL_FETCH),
        ResponseCode(202, "Missing or malformed parameter", Outcome.FAIL_FETCH),
        ResponseCode(301, "Rate limit exceeded", Outcome.RETRY),
        ResponseCode(500, "Internal error", Outcome.RETRY),
        ResponseCode(503, "Temporarily unavailable", Outcome.RETRY),
    )
}

SUCCESS = 0
INVALID_TOKEN = 101
IP_NOT_ALLOWED = 102
NO_ACCOUNT_ACCESS = 103
EVENT_ALL_UNSUPPORTED = 104
UNKNOWN_EVENT = 201
BAD_PARAMETER = 202
RATE_LIMITED = 301
INTERNAL_ERROR = 500
UNAVAILABLE = 503

# Form parameter names [overview]: the token travels as `apiToken`, the scope as `event`.
PARAM_TOKEN = "apiToken"  # noqa: S105 (a parameter name, not a secret)
PARAM_EVENT = "event"
EVENT_ALL = "all"

ENVELOPE_ROOT = "response"
ENVELOPE_CODE = "responseCode"
ENVELOPE_MESSAGE = "responseMessage"


# What each field means, for column descriptions (dbt sources, docs). Keyed by API name; an
# (entity, API name) key overrides it for one entity.
DESCRIPTIONS: dict[str | tuple[str, str], str] = {
    "eventGUID": "The event's GUID (Cvent); an event's records are keyed within it.",
    "eventCode": "The event's short code.",
    "eventName": "The event's name.",
    "startDate": "The event's first day (a calendar date, no time zone).",
    "endDate": "The event's last day (a calendar date, no time zone).",
    "timeZone": "The event's time zone.",
    ("event", "status"): "The event's status (for example Active, Completed).",
    "userRef": "The user's key within the event (Cvent's Secondary ID); a re-created user gets a "
    "new one.",
    "clientID": "The client's own ID for the record; unique per event when present, kept when "
    "Cvent re-creates the record under a new key.",
    "firstName": "First name.",
    "lastName": "Last name.",
    "email": "Email address.",
    "company": "Company.",
    ("user", "title"): "Job title.",
    "phone": "Phone number.",
    "city": "City.",
    "state": "State or region.",
    "country": "Country.",
    "attendeeType": "Attendee type (for example attendee, speaker, staff).",
    "registrationStatus": "Registration status.",
    "registrationDate": "When the user registered (UTC).",
    "lastModified": "The source's last-modified time (UTC); does not move for every change.",
    "customFields": "Custom fields: field code -> value code.",
    "sessionID": "The session's key within the event.",
    "sessionCode": "The session's code.",
    ("session", "title"): "The session's title.",
    "abstract": "The session's abstract.",
    "sessionType": "The session's type.",
    "track": "The track the session belongs to.",
    "room": "The room.",
    "startTime": "When the session starts (UTC).",
    "endTime": "When the session ends (UTC).",
    "capacity": "How many attendees the session holds.",
    ("session", "status"): "The session's status.",
    "speakers": "The speakers' userRefs.",
    "exhibitorID": "The exhibitor's key within the event.",
    "name": "The exhibitor's name.",
    "boothNumber": "The booth number.",
    "website": "The exhibitor's website.",
    "sponsorLevel": "The sponsor level.",
    "description": "The exhibitor's description.",
    "contacts": "The exhibitor's contacts' userRefs.",
}


def describe(resource: Resource, f: Field) -> str:
    """The description of one field of one resource ("" when the catalog has none)."""
    return DESCRIPTIONS.get((resource.entity, f.api)) or DESCRIPTIONS.get(f.api, "")
