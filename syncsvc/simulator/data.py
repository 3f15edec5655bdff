"""The simulator's deterministic account: day d's state is a pure function of (seed, d).

Every record lives in a *slot* of its event. A slot's whole life is derived from one stable hash of
(seed, event, entity, slot): the day it is born, the day it dies (a geometric draw at
`delete_rate`), whether and when it comes back, how often it is re-created (new key, same
`clientID`) and, per group of fields, a period and phase that say in which *epoch* the group is on
any day. A field's value is a hash of (slot, group, epoch). So any day costs the same to compute,
no day is ever replayed, and the simulator knows exactly what changed between two days without
diffing two snapshots: which slots were born, died, came back or were re-created, and for slots
alive on both days the fields whose value its own model changed.
"""

from __future__ import annotations

import hashlib
import math
import struct
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any

from syncsvc import catalog
from syncsvc.simulator import pools

MASK64 = (1 << 64) - 1
NEVER = 1 << 40  # a day that never comes
ENTITIES = ("event", "user", "session", "exhibitor")
DATA_ENTITIES = ("user", "session", "exhibitor")
SILENT = "silent"  # a field group whose changes do not move lastModified


@dataclass(frozen=True, slots=True)
class SimConfig:
    """What the simulated account looks like and how fast it changes."""

    seed: int = 1
    day: int = 0  # the day served
    events: int = 8  # events alive on day 0: a few large, many small
    users_per_event: int = 200  # mean; the shape skews: a few events get many times this
    sessions_per_event: int = 20
    exhibitors_per_event: int = 8
    # daily change rates, fractions of live records per day
    update_rate: float = 0.05  # includes custom-value-only and lastModified-not-moved updates
    delete_rate: float = 0.01
    insert_rate: float = 0.02
    recreate_rate: float = 0.005  # users, exhibitors: same person, new key, same clientID
    restore_share: float = 0.25  # share of deleted records that come back a few days later
    client_id_share: float = 0.7  # records carrying a clientID from birth
    client_id_later_share: float = 0.15  # records that get one a few days after birth
    new_event_every: int = 7  # a new event appears every N days (0: never)
    event_days: int = 30  # mean days until an event ends (its status becomes Completed)
    big_event_every: int = 8  # events 1, 1+N, 1+2N... are the big ones
    big_event_factor: float = 4.0  # how many times the mean a big event holds
    start_date: date = date(2026, 1, 5)  # the calendar date of day 0


@dataclass(frozen=True, slots=True)
class ExpectedChange:
    """One change the ground truth says a sync from day a to day b must record."""

    entity: str  # "event" | "user" | "session" | "exhibitor"
    event_guid: str
    key: str  # the record key (for events: the eventGUID); for rekey the NEW key
    op: str  # "insert" | "update" | "delete" | "rekey"
    changed_fields: frozenset[str]
    client_id: str | None  # the after image's clientID (the before's for a delete)
    old_key: str | None = None  # rekey only: the vanished key


# --- hashing -----------------------------------------------------------------------------------


def mix64(x: int) -> int:
    """splitmix64's finalizer: a cheap, stable 64-bit mixer (never Python's salted hash())."""
    x = (x + 0x9E3779B97F4A7C15) & MASK64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & MASK64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & MASK64
    return x ^ (x >> 31)


def _digest(text: str, size: int = 64) -> int:
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=size).digest(), "little")


def _unit(bits: int, width: int) -> float:
    """Map `width` random bits to a float in (0, 1]."""
    return ((bits & ((1 << width) - 1)) + 1) / (1 << width)


# --- groups of fields: each group changes on its own period ------------------------------------


@dataclass(frozen=True, slots=True)
class _Group:
    name: str
    weight: float  # share of update_rate this group carries


USER_GROUPS = (
    _Group("job", 0.2),
    _Group("phone", 0.15),
    _Group("address", 0.1),
    _Group("registration", 0.2),
    _Group("custom", 0.2),
    _Group(SILENT, 0.15),
)
SESSION_GROUPS = (
    _Group("content", 0.2),
    _Group("schedule", 0.3),
    _Group("capacity", 0.15),
    _Group("status", 0.1),
    _Group("speakers", 0.15),
    _Group("custom", 0.1),
)
EXHIBITOR_GROUPS = (
    _Group("booth", 0.3),
    _Group("sponsor", 0.2),
    _Group("description", 0.2),
    _Group("contacts", 0.15),
    _Group("custom", 0.15),
)
GROUPS = {"user": USER_GROUPS, "session": SESSION_GROUPS, "exhibitor": EXHIBITOR_GROUPS}
RECREATABLE = {"user": True, "session": False, "exhibitor": True}
KEY_PREFIX = {"user": "U", "session": "S", "exhibitor": "X"}
SIZES = {
    "user": "users_per_event",
    "session": "sessions_per_event",
    "exhibitor": "exhibitors_per_event",
}

# A slot's hash is five 64-bit words (small ints are much cheaper than one 320-bit int):
# w[0] death (24 bits) | restore (16) | restore delay (2) | re-creation period and phase (16)
# w[1] clientID mode (16) | clientID delay (3) | created second (16) | created days back (rest)
# w[2] the seed of field values; w[3], w[4] four groups each: period (4 bits), phase (12)
_WORDS = struct.Struct("<5Q")
Words = tuple[int, ...]


def _periods(rate: float) -> tuple[int, ...]:
    """16 periods (days) whose mean frequency is about `rate`; () when the rate is zero.

    A slot picks one with 4 bits of its hash and a phase with 12 more, so a change that happens
    at `rate` per day costs a division, not a replay of the days before.
    """
    if rate <= 0:
        return ()
    return tuple(max(1, round((0.53 + k / 16) / rate)) for k in range(16))


@dataclass(frozen=True, slots=True)
class Event:
    """An event of the account, alive from `birth` on; `end_day` on it is Completed."""

    index: int
    guid: str
    code: str
    name: str
    birth: int
    end_day: int
    start_date: date
    end_date: date
    time_zone: str
    factor: float  # its size relative to the mean
    salt: int

    def raw(self, day: int) -> tuple[Any, ...]:
        status = "Completed" if day >= self.end_day else "Active"
        return (
            self.guid,
            self.code,
            self.name,
            self.start_date,
            self.end_date,
            self.time_zone,
            status,
        )


class Population:
    """The slots of one entity in one event, and everything about any of them on any day."""

    __slots__ = (
        "base",
        "cid_cut",
        "cid_later",
        "cid_later_cut",
        "cid_prefix",
        "cid_salt",
        "cid_share",
        "day0_ts",
        "delete_log",
        "entity",
        "event",
        "group_rates",
        "group_table",
        "groups",
        "ipd_micro",
        "key_prefix",
        "key_salt",
        "n0",
        "rec_periods",
        "rec_rate",
        "restore_cut",
        "restore_share",
        "salt",
        "salt_bytes",
        "salt_text",
        "silent",
        "universe",
    )

    def __init__(self, universe: Universe, event: Event, entity: str) -> None:
        cfg = universe.config
        self.universe = universe
        self.event = event
        self.entity = entity
        mean = getattr(cfg, SIZES[entity])
        jitter = 0.8 + 0.4 * _unit(mix64(event.salt ^ len(entity)), 20)
        self.n0 = max(1, round(mean * event.factor * jitter)) if mean > 0 else 0
        self.ipd_micro = round(cfg.insert_rate * self.n0 * 1_000_000)
        p = cfg.delete_rate
        self.delete_log = math.log1p(-p) if 0 < p < 1 else (0.0 if p <= 0 else -math.inf)
        self.restore_share = cfg.restore_share
        self.rec_rate = cfg.recreate_rate if RECREATABLE[entity] else 0.0
        self.cid_share = cfg.client_id_share if entity != "session" else 0.0
        self.cid_later = cfg.client_id_later_share if entity != "session" else 0.0
        self.groups = GROUPS[entity]
        self.group_rates = tuple(cfg.update_rate * g.weight for g in self.groups)
        self.silent = tuple(g.name == SILENT for g in self.groups)
        self.salt_text = f"{cfg.seed}:{event.index}:{entity}:"
        self.salt = _digest(self.salt_text, 8)
        self.salt_bytes = self.salt_text.encode()
        self.day0_ts = universe.day0_ts
        self.base = event.birth
        self.restore_cut = round(cfg.restore_share * 0x10000)
        self.cid_cut = round(self.cid_share * 0x10000)
        self.cid_later_cut = round((self.cid_share + self.cid_later) * 0x10000)
        self.rec_periods = _periods(self.rec_rate)
        # Per group: (hash word, bit shift, periods, silent, mixing salt, seed rotation).
        self.group_table = tuple(
            (3 + (i >> 2), 16 * (i & 3), _periods(rate), silent, (i + 1) << 56, 11 * i + 7)
            for i, (rate, silent) in enumerate(zip(self.group_rates, self.silent, strict=True))
        )
        self.key_prefix = KEY_PREFIX[entity]
        self.key_salt = self.salt & 0xFFFFFFFF
        self.cid_prefix = "CRM" if entity == "user" else "ACC"
        self.cid_salt = self.salt & 0xFFFFFF

    # --- the life of a slot --------------------------------------------------------------------

    def count(self, day: int) -> int:
        """Slots ever born by `day` (dead ones included)."""
        base = self.event.birth
        if day < base:
            return 0
        return self.n0 + ((day - base) * self.ipd_micro) // 1_000_000

    def birth(self, slot: int) -> int:
        base = self.event.birth
        if slot < self.n0:
            return base
        need = (slot - self.n0 + 1) * 1_000_000
        return base + -(-need // self.ipd_micro)

    def life(self, slot: int) -> tuple[int, int, int, Words]:
        """(birth, death, restore, hash): alive on d iff birth <= d and not death <= d < restore."""
        w = _WORDS.unpack(
            hashlib.blake2b(self.salt_bytes + slot.to_bytes(6, "little"), digest_size=40).digest()
        )
        w0 = w[0]
        birth = self.base if slot < self.n0 else self.birth(slot)
        dl = self.delete_log
        if dl == 0.0:
            death = NEVER
        elif dl == -math.inf:
            death = birth + 1
        else:
            death = birth + 1 + int(math.log(((w0 & 0xFFFFFF) + 1) / 0x1000000) / dl)
        restore = NEVER
        if death < NEVER and ((w0 >> 24) & 0xFFFF) < self.restore_cut:
            restore = death + 1 + ((w0 >> 40) & 3)
        return birth, death, restore, w

    def client_id_day(self, birth: int, w: Words) -> int:
        """The day the slot's clientID appears (NEVER: it has none)."""
        u = w[1] & 0xFFFF
        if u < self.cid_cut:
            return birth
        if u < self.cid_later_cut:
            return birth + 1 + ((w[1] >> 16) & 7)
        return NEVER

    def generation(self, birth: int, w: Words, day: int, cid_day: int) -> tuple[int, int]:
        """(how many times re-created by `day`, the day of the last re-creation)."""
        if not self.rec_periods or cid_day != birth:
            return 0, birth  # only records with a clientID from birth are re-created
        bits = (w[0] >> 44) & 0xFFFF
        period = self.rec_periods[bits & 15]
        phase = (bits >> 4) % period
        gen = (day - birth + phase) // period
        return (gen, birth + gen * period - phase) if gen > 0 else (0, birth)

    def key(self, slot: int, gen: int) -> str:
        x = ((slot << 6) | (gen & 63)) ^ self.key_salt
        return f"{self.key_prefix}{(x * 0x9E3779B97F4B) & 0xFFFFFFFFFF:010X}"

    def client_id(self, slot: int) -> str:
        return f"{self.cid_prefix}-{(slot * 7_654_321 + self.cid_salt) % 1_000_000_000:09d}"

    def day_ts(self, day: int) -> int:
        return self.day0_ts + day * 86400

    def ref_on(self, slot: int, day: int) -> str | None:
        """The key a slot carries on `day`, None when it is not alive (for speaker/contact refs)."""
        birth, death, restore, w = self.life(slot)
        if day < birth or death <= day < restore:
            return None
        gen = self.generation(birth, w, day, self.client_id_day(birth, w))[0]
        return self.key(slot, gen)

    def state(self, slot: int, day: int) -> tuple[Any, ...] | None:
        """The raw record of a slot on `day` (catalog field order), None when it is not alive."""
        birth, death, restore, w = self.life(slot)
        if day < birth or death <= day < restore:
            return None
        return self._raw(slot, birth, w, day)

    def states(self, day: int) -> Iterator[tuple[Any, ...]]:
        life, raw = self.life, self._raw
        for slot in range(self.count(day)):
            birth, death, restore, w = life(slot)
            if day < birth or death <= day < restore:
                continue
            yield raw(slot, birth, w, day)

    # --- field values --------------------------------------------------------------------------

    def _raw(self, slot: int, birth: int, w: Words, day: int) -> tuple[Any, ...]:
        seed64 = w[2]
        cid_day = self.client_id_day(birth, w)
        gen, gen_day = self.generation(birth, w, day, cid_day)
        day0 = self.day0_ts
        cbits = w[1] >> 19
        secs = 28800 + (cbits & 0xFFFF) % 43200  # business hours, UTC
        if birth <= 0 and slot < self.n0:
            created = day0 + (birth - 1 - (cbits >> 16) % 180) * 86400 + secs
        else:
            created = day0 + birth * 86400 + secs
        last = created
        if gen > 0:
            created = day0 + gen_day * 86400 + secs  # re-created: a new registration
            last = created
        if birth < cid_day <= day:
            last = max(last, day0 + cid_day * 86400 + secs + 60)
        rs = []
        age = day - birth
        for wi, shift, periods, silent, salt, rot in self.group_table:
            if periods:
                bits = (w[wi] >> shift) & 0xFFFF
                period = periods[bits & 15]
                phase = (bits >> 4) % period
                e = (age + phase) // period
                if e > 0:
                    r = mix64(seed64 ^ salt ^ ((e * 0x9E3779B97F4A7C15) & MASK64))
                    if not silent:
                        ts = day0 + (birth + e * period - phase) * 86400 + 3600 + r % 72000
                        if ts > last:
                            last = ts
                    rs.append(r)
                    continue
            # Epoch 0 needs no mixing: rotate the slot's seed so groups draw distinct bits.
            rs.append(((seed64 << rot) | (seed64 >> (64 - rot))) & MASK64)
        client_id = self.client_id(slot) if cid_day <= day else None
        if self.entity == "user":
            return self._user(slot, gen, seed64, client_id, created, last, rs)
        if self.entity == "session":
            return self._session(slot, seed64, last, rs, day)
        return self._exhibitor(slot, gen, seed64, client_id, last, rs, day)

    def _user(
        self,
        slot: int,
        gen: int,
        s: int,
        client_id: str | None,
        created: int,
        last: int,
        rs: Sequence[int],
    ) -> tuple[Any, ...]:
        first, first_a = pools.FIRST_NAMES[s % 32]
        last_name, last_a = pools.LAST_NAMES[(s >> 5) % 32]
        email = f"{first_a}.{last_a}{(s >> 10) % 1000}@{pools.DOMAINS[(s >> 20) % 6]}"
        job, phone_r, addr, reg, cust, silent = rs
        company = (
            f"{pools.COMPANY_STEMS[job % 20]} {pools.COMPANY_SUFFIXES[(job >> 8) % 10]}"
            if (job >> 16) % 20
            else None
        )
        title = pools.TITLES[(job >> 24) % 14] if (job >> 32) % 20 else None
        phone = (
            f"+1-{200 + phone_r % 800}-555-{(phone_r >> 12) % 10000:04d}"
            if (phone_r >> 28) % 10
            else None
        )
        city, state, country = pools.PLACES[addr % 16]
        custom = [("type_business", pools.TYPE_BUSINESS[cust % 5])]
        if (cust >> 8) % 5:
            custom.append(("dietary", pools.DIETARY[(cust >> 12) % 6]))
        custom.append(("publicViewPrivateSchedule", str(100000 + (s >> 30) % 900000)))
        if (s >> 50) & 1:
            custom.append(("privateViewPrivateSchedule", str(100000 + (s >> 51) % 900)))
        if (silent >> 8) % 10 < 7:
            custom.append(("cannotViewOrSchedule", str(700000 + silent % 99991)))
        if (s >> 60) == 0 or (s >> 60) == 7:
            custom.append(("hearAbout_other", pools.HEAR_ABOUT_OTHER[(s >> 40) % 6]))
        return (
            self.key(slot, gen),
            client_id,
            self.event.guid,
            first,
            last_name,
            email,
            company,
            title,
            phone,
            city,
            state,
            country,
            pools.ATTENDEE_TYPES[reg % 6],
            pools.REGISTRATION_STATUSES[(reg >> 8) % 6],
            created,
            last,
            custom,
        )

    def _refs(self, r: int, day: int) -> list[str] | None:
        users = self.universe.population(self.event, "user")
        if users.n0 == 0:
            return None
        refs: list[str] = []
        for i in range(r % 4):
            ref = users.ref_on((r >> (8 + 16 * i)) % users.n0, day)
            if ref is not None and ref not in refs:
                refs.append(ref)
        return refs or None

    def _session(
        self, slot: int, s: int, last: int, rs: Sequence[int], day: int
    ) -> tuple[Any, ...]:
        content, sched, cap, status, speakers, cust = rs
        track_code, track = pools.TRACKS[s % 5]
        words = pools.WORDS
        opener = pools.TITLE_OPENERS[content % 6]
        title = f"{opener} {words[(content >> 4) % 20]} {words[(content >> 9) % 20]}"
        abstract = (
            " ".join(words[(content >> (14 + 3 * k)) % 20] for k in range(12)).capitalize() + "."
            if (content >> 60) % 8
            else None
        )
        days = max(1, (self.event.end_date - self.event.start_date).days + 1)
        start = (
            self.universe.date_ts(self.event.start_date)
            + (sched % days) * 86400
            + (8 + (sched >> 8) % 10) * 3600
            + ((sched >> 16) % 4) * 900
        )
        end = start + (30, 45, 60, 90)[(sched >> 20) % 4] * 60
        custom = [("level", pools.LEVELS[cust % 3])]
        if (s >> 8) % 3:
            custom.append(("cpe_credits", str(1 + (s >> 10) % 4)))
        custom.append(("publicViewPrivateSchedule", str(200000 + (s >> 14) % 900000)))
        return (
            self.key(slot, 0),
            self.event.guid,
            f"{track_code}-{100 + slot}",
            title,
            abstract,
            pools.SESSION_TYPES[(s >> 4) % 5],
            track,
            pools.ROOMS[(sched >> 24) % 7],
            start,
            end,
            20 + cap % 480 if (cap >> 12) % 10 else None,
            pools.SESSION_STATUSES[status % 6],
            self._refs(speakers, day),
            last,
            custom,
        )

    def _exhibitor(
        self,
        slot: int,
        gen: int,
        s: int,
        client_id: str | None,
        last: int,
        rs: Sequence[int],
        day: int,
    ) -> tuple[Any, ...]:
        booth, sponsor, desc, contacts, cust = rs
        stem = pools.COMPANY_STEMS[s % 20]
        words = pools.WORDS
        description = (
            " ".join(words[(desc >> (3 * k)) % 20] for k in range(10)).capitalize() + "."
            if (desc >> 40) % 6
            else None
        )
        custom = [("industry", pools.INDUSTRIES[cust % 6])]
        custom.append(("lead_retrieval", "yes" if (s >> 8) & 1 else "no"))
        custom.append(("publicViewPrivateSchedule", str(300000 + (s >> 14) % 900000)))
        return (
            self.key(slot, gen),
            client_id,
            self.event.guid,
            f"{stem} {pools.COMPANY_SUFFIXES[(s >> 5) % 10]} #{slot}",
            f"{pools.HALLS[booth % 4]}{100 + (booth >> 4) % 400}",
            f"https://www.{stem.lower().replace(' ', '')}{slot}.example.com",
            pools.SPONSOR_LEVELS[sponsor % 5],
            description,
            self._refs(contacts, day),
            last,
            custom,
        )


def _check_field_order() -> None:
    # The raw tuples above are positional: fail at import if the catalog's order ever moves.
    expected = {
        "user": ("userRef", "clientID", "eventGUID", "firstName", "lastName", "email", "company"),
        "session": ("sessionID", "eventGUID", "sessionCode", "title", "abstract"),
        "exhibitor": ("exhibitorID", "clientID", "eventGUID", "name", "boothNumber", "website"),
        "event": ("eventGUID", "eventCode", "eventName", "startDate", "endDate", "timeZone"),
    }
    for entity, names in expected.items():
        got = catalog.BY_ENTITY[entity].field_names
        if got[: len(names)] != names:
            raise RuntimeError(f"catalog field order changed for {entity}: {got}")


_check_field_order()


# --- typed records (the normalized form, conference contract "Typed records") ------------------


def typed(entity: str, raw: tuple[Any, ...]) -> dict[str, Any]:
    """A raw tuple as the typed record the store's normalizer must produce for it."""
    resource = catalog.BY_ENTITY[entity]
    out: dict[str, Any] = {}
    for f, v in zip(resource.fields, raw, strict=True):
        if v is None:
            out[f.api] = None
        elif f.kind is catalog.FieldKind.DATETIME:
            out[f.api] = datetime.fromtimestamp(v, UTC)
        elif f.kind is catalog.FieldKind.CUSTOM:
            out[f.api] = dict(v) or None
        elif f.kind is catalog.FieldKind.REFS:
            out[f.api] = list(v) or None
        else:
            out[f.api] = v
    out["extras"] = None
    return out


def changed_fields(entity: str, before: tuple[Any, ...], after: tuple[Any, ...]) -> frozenset[str]:
    """API names of the fields whose value differs between two raw images of one record."""
    names = catalog.BY_ENTITY[entity].field_names
    out: set[str] = set()
    for name, a, b in zip(names, before, after, strict=True):
        if a == b:
            continue
        if name == "customFields":
            ca, cb = dict(a or ()), dict(b or ())
            out.update(
                catalog.CUSTOM_PREFIX + code
                for code in ca.keys() | cb.keys()
                if ca.get(code) != cb.get(code)
            )
        else:
            out.add(name)
    return frozenset(out)


# --- the account -------------------------------------------------------------------------------


class Universe:
    """The simulated account: its events and records on any day, and the truth between days."""

    def __init__(self, config: SimConfig) -> None:
        self.config = config
        self.day0_ts = self.date_ts(config.start_date)
        self._events: dict[int, Event] = {}
        self._pops: dict[tuple[int, str], Population] = {}
        self._by_guid: dict[str, int] = {}

    @staticmethod
    def date_ts(d: date) -> int:
        return int(datetime(d.year, d.month, d.day, tzinfo=UTC).timestamp())

    # --- events --------------------------------------------------------------------------------

    def event_count(self, day: int) -> int:
        cfg = self.config
        if day < 0:
            return 0
        added = day // cfg.new_event_every if cfg.new_event_every > 0 else 0
        return cfg.events + added

    def event_at(self, index: int) -> Event:
        ev = self._events.get(index)
        if ev is None:
            ev = self._make_event(index)
            self._events[index] = ev
        return ev

    def _make_event(self, index: int) -> Event:
        cfg = self.config
        h = _digest(f"{cfg.seed}:event:{index}", 32)
        hexed = f"{h & ((1 << 128) - 1):032X}"
        guid = f"{hexed[:8]}-{hexed[8:12]}-{hexed[12:16]}-{hexed[16:20]}-{hexed[20:]}"
        every_new = max(1, cfg.new_event_every)
        birth = 0 if index < cfg.events else (index - cfg.events + 1) * every_new
        end_day = birth + 1 + int(((h >> 128) & 0xFFFF) / 0xFFFF * 2 * max(1, cfg.event_days))
        end_date = cfg.start_date + timedelta(days=end_day - 1)
        start_date = end_date - timedelta(days=(h >> 144) % 3)
        every = max(2, cfg.big_event_every)
        big = min(cfg.big_event_factor, float(every))
        factor = big if index % every == 1 else (every - big) / (every - 1)
        return Event(
            index=index,
            guid=guid,
            code=f"EV{start_date.year % 100:02d}-{index + 1:03d}",
            name=f"{pools.EVENT_NAMES[(h >> 160) % 10]} {start_date.year}",
            birth=birth,
            end_day=end_day,
            start_date=start_date,
            end_date=end_date,
            time_zone=pools.TIME_ZONES[(h >> 170) % 6],
            factor=max(0.05, factor),
            salt=(h >> 192) & MASK64,
        )

    def events(self, day: int) -> list[Event]:
        """The events listed on `day`, in a stable order (the home event first)."""
        return [self.event_at(i) for i in range(self.event_count(day))]

    def home_event(self) -> Event:
        return self.event_at(0)

    def find_event(self, guid: str, day: int) -> Event | None:
        """The event with this GUID if it exists on `day`."""
        # Index GUIDs up to the events of this day (cheap: a few hundred at most).
        for i in range(len(self._by_guid), self.event_count(day)):
            self._by_guid[self.event_at(i).guid] = i
        index = self._by_guid.get(guid.upper())
        if index is None or index >= self.event_count(day):
            return None
        return self.event_at(index)

    def population(self, event: Event, entity: str) -> Population:
        pop = self._pops.get((event.index, entity))
        if pop is None:
            pop = Population(self, event, entity)
            self._pops[(event.index, entity)] = pop
        return pop

    # --- raw and typed records -----------------------------------------------------------------

    def raw_records(
        self, entity: str, day: int, events: Sequence[Event] | None = None
    ) -> Iterator[tuple[Any, ...]]:
        """Raw tuples (catalog field order) of live records, event by event, slot by slot."""
        if entity == "event":
            for ev in self.events(day) if events is None else events:
                yield ev.raw(day)
            return
        for ev in self.events(day) if events is None else events:
            yield from self.population(ev, entity).states(day)

    def _scope(self, day: int, event_guid: str | None) -> list[Event] | None:
        if event_guid is None:
            return None
        ev = self.find_event(event_guid, day)
        return [] if ev is None else [ev]

    def records(
        self, entity: str, day: int, event_guid: str | None = None
    ) -> Iterator[dict[str, Any]]:
        """Live typed records in a stable order (for events, event_guid is ignored)."""
        if entity not in ENTITIES:
            raise ValueError(f"unknown entity {entity!r}")
        events = None if entity == "event" else self._scope(day, event_guid)
        for raw in self.raw_records(entity, day, events):
            yield typed(entity, raw)

    def snapshot(self, day: int) -> dict[str, dict[tuple[str, str], dict[str, Any]]]:
        """entity -> {(event_guid, key): typed record} for every entity on `day`."""
        out: dict[str, dict[tuple[str, str], dict[str, Any]]] = {}
        for entity in ENTITIES:
            key_field = catalog.BY_ENTITY[entity].key
            out[entity] = {
                (rec["eventGUID"], rec[key_field]): rec for rec in self.records(entity, day)
            }
        return out

    # --- ground truth --------------------------------------------------------------------------

    def expected_changes(self, day_a: int, day_b: int) -> list[ExpectedChange]:
        """The changes a sync from day_a's snapshot to day_b's must record, from the model itself.

        For every slot the model knows whether it lived on each day and under which key; a slot
        alive on both days under one key is an update when its own fields moved, under two keys
        (re-created, same clientID) a rekey; born or restored is an insert, dead a delete.
        """
        out: list[ExpectedChange] = []
        count_a, count_b = self.event_count(day_a), self.event_count(day_b)
        for i in range(max(count_a, count_b)):
            ev = self.event_at(i)
            a = ev.raw(day_a) if i < count_a else None
            b = ev.raw(day_b) if i < count_b else None
            out.extend(_slot_change("event", ev.guid, a, b, 0))
        for entity in DATA_ENTITIES:
            for i in range(max(count_a, count_b)):
                ev = self.event_at(i)
                pop = self.population(ev, entity)
                for slot in range(max(pop.count(day_a), pop.count(day_b))):
                    a = pop.state(slot, day_a) if i < count_a else None
                    b = pop.state(slot, day_b) if i < count_b else None
                    out.extend(_slot_change(entity, ev.guid, a, b, 1))
        return out


def _slot_change(
    entity: str,
    event_guid: str,
    a: tuple[Any, ...] | None,
    b: tuple[Any, ...] | None,
    cid_index: int,
) -> list[ExpectedChange]:
    has_cid = catalog.BY_ENTITY[entity].has_client_id
    if a is None and b is None:
        return []
    if a is None:
        assert b is not None
        cid = b[cid_index] if has_cid else None
        return [ExpectedChange(entity, event_guid, b[0], "insert", frozenset(), cid)]
    if b is None:
        cid = a[cid_index] if has_cid else None
        return [ExpectedChange(entity, event_guid, a[0], "delete", frozenset(), cid)]
    fields = changed_fields(entity, a, b)
    if not fields:
        return []
    cid = b[cid_index] if has_cid else None
    if a[0] != b[0]:
        # Re-created: the model only re-creates records whose clientID it kept since birth,
        # and clientIDs are unique per event, so the rekey rule's ambiguity cannot arise.
        return [ExpectedChange(entity, event_guid, b[0], "rekey", fields, cid, old_key=a[0])]
    return [ExpectedChange(entity, event_guid, b[0], "update", fields, cid)]
