"""Value pools the simulator draws realistic names, companies and texts from."""

from __future__ import annotations

# (display, ascii) so emails stay ASCII while names carry real-world letters.
FIRST_NAMES: tuple[tuple[str, str], ...] = (
    ("Ann", "ann"),
    ("José", "jose"),
    ("Zoë", "zoe"),
    ("Łukasz", "lukasz"),
    ("Mei", "mei"),
    ("Aarav", "aarav"),
    ("Fatima", "fatima"),
    ("Oliver", "oliver"),
    ("Sofia", "sofia"),
    ("Liam", "liam"),
    ("Amara", "amara"),
    ("Noah", "noah"),
    ("Hiroshi", "hiroshi"),
    ("Chloé", "chloe"),
    ("Mateo", "mateo"),
    ("Ingrid", "ingrid"),
    ("Kwame", "kwame"),
    ("Priya", "priya"),
    ("Elena", "elena"),
    ("Daniel", "daniel"),
    ("Grace", "grace"),
    ("Omar", "omar"),
    ("Yuki", "yuki"),
    ("Björn", "bjorn"),
    ("Isabella", "isabella"),
    ("Ethan", "ethan"),
    ("Nadia", "nadia"),
    ("Samuel", "samuel"),
    ("Leah", "leah"),
    ("Tomás", "tomas"),
    ("Ava", "ava"),
    ("Ravi", "ravi"),
)

LAST_NAMES: tuple[tuple[str, str], ...] = (
    ("Smith", "smith"),
    ("García", "garcia"),
    ("Müller", "muller"),
    ("Nowak", "nowak"),
    ("Chen", "chen"),
    ("Patel", "patel"),
    ("O'Brien", "obrien"),
    ("Johnson", "johnson"),
    ("Rossi", "rossi"),
    ("Kim", "kim"),
    ("Okafor", "okafor"),
    ("Williams", "williams"),
    ("Tanaka", "tanaka"),
    ("Dubois", "dubois"),
    ("Silva", "silva"),
    ("Larsen", "larsen"),
    ("Mensah", "mensah"),
    ("Sharma", "sharma"),
    ("Popescu", "popescu"),
    ("Brown", "brown"),
    ("Nguyen", "nguyen"),
    ("Haddad", "haddad"),
    ("Sato", "sato"),
    ("Lindqvist", "lindqvist"),
    ("Martínez", "martinez"),
    ("Taylor", "taylor"),
    ("Kowalski", "kowalski"),
    ("Cohen", "cohen"),
    ("Schwartz", "schwartz"),
    ("Fernández", "fernandez"),
    ("Walker", "walker"),
    ("Iyer", "iyer"),
)

COMPANY_STEMS: tuple[str, ...] = (
    "Acme",
    "Globex",
    "Initech",
    "Umbrella",
    "Stark",
    "Wayne",
    "Hooli",
    "Vandelay",
    "Soylent",
    "Tyrell",
    "Cyberdyne",
    "Wonka",
    "Gringotts",
    "Monarch",
    "Oscorp",
    "Aperture",
    "Massive Dynamic",
    "Blue Sun",
    "Nakatomi",
    "Pied Piper",
)
COMPANY_SUFFIXES: tuple[str, ...] = (
    "Inc.",
    "LLC",
    "GmbH",
    "& Co.",
    "Ltd",
    "Group",
    "Partners",
    "S.A.",
    "& Sons",
    "Holdings",
)
DOMAINS: tuple[str, ...] = (
    "example.com",
    "example.org",
    "mail.example.net",
    "corp.example.com",
    "example.co.uk",
    "example.de",
)
TITLES: tuple[str, ...] = (
    "Director of Events",
    "VP Marketing",
    "Software Engineer",
    "Account Executive",
    "CFO",
    "Head of R&D",
    "Product Manager",
    "Nurse Practitioner",
    "Professor",
    "Sales Manager",
    "Consultant",
    "Chief Medical Officer",
    "Data Scientist",
    "Procurement Lead",
)
PLACES: tuple[tuple[str, str | None, str], ...] = (
    ("Austin", "TX", "US"),
    ("Boston", "MA", "US"),
    ("Chicago", "IL", "US"),
    ("Denver", "CO", "US"),
    ("Seattle", "WA", "US"),
    ("New York", "NY", "US"),
    ("Toronto", "ON", "CA"),
    ("London", None, "GB"),
    ("Berlin", None, "DE"),
    ("Kraków", None, "PL"),
    ("São Paulo", "SP", "BR"),
    ("Bengaluru", "KA", "IN"),
    ("Tokyo", None, "JP"),
    ("Lagos", None, "NG"),
    ("Sydney", "NSW", "AU"),
    ("Paris", None, "FR"),
)
ATTENDEE_TYPES: tuple[str, ...] = ("Attendee", "Attendee", "Attendee", "Speaker", "Staff", "VIP")
REGISTRATION_STATUSES: tuple[str, ...] = (
    "Accepted",
    "Accepted",
    "Accepted",
    "Pending",
    "Waitlisted",
    "Cancelled",
)
TYPE_BUSINESS: tuple[str, ...] = ("govt", "corp", "edu", "ngo", "smb")
DIETARY: tuple[str, ...] = ("none", "veg", "vegan", "halal", "kosher", "gf")
HEAR_ABOUT_OTHER: tuple[str, ...] = (
    "A colleague at the booth",
    "Saw it on a podcast",
    "Newsletter & blog",
    "Alumni network",
    "Our CEO told us <again>",
    "Conference app",
)

EVENT_NAMES: tuple[str, ...] = (
    "Annual Summit",
    "Partner Forum",
    "Developer Days",
    "Sales Kickoff",
    "Healthcare Leaders Meeting",
    "Customer Conference",
    "Regional Roadshow",
    "Research Symposium",
    "Product Launch",
    "Executive Retreat",
)
TIME_ZONES: tuple[str, ...] = (
    "America/New_York",
    "America/Chicago",
    "America/Los_Angeles",
    "Europe/London",
    "Europe/Berlin",
    "Asia/Tokyo",
)

SESSION_TYPES: tuple[str, ...] = ("Keynote", "Breakout", "Breakout", "Workshop", "Panel")
TRACKS: tuple[tuple[str, str], ...] = (
    ("DEV", "Developers"),
    ("BIZ", "Business"),
    ("OPS", "Operations"),
    ("MED", "Clinical"),
    ("EXE", "Leadership"),
)
ROOMS: tuple[str, ...] = (
    "Ballroom A",
    "Ballroom B",
    "Room 101",
    "Room 102",
    "Room 204",
    "Hall C",
    "Terrace",
)
SESSION_STATUSES: tuple[str, ...] = (
    "Active",
    "Active",
    "Active",
    "Active",
    "Cancelled",
    "Tentative",
)
LEVELS: tuple[str, ...] = ("beginner", "intermediate", "advanced")
WORDS: tuple[str, ...] = (
    "scaling",
    "data",
    "pipelines",
    "patients",
    "outcomes",
    "cloud",
    "security",
    "growth",
    "teams",
    "R&D",
    "strategy",
    "AI",
    "privacy",
    "events",
    "supply",
    "chains",
    "compliance",
    "a<b",
    "metrics",
    "leaders",
)
TITLE_OPENERS: tuple[str, ...] = (
    "Mastering",
    "The Future of",
    "Rethinking",
    "Hands-on:",
    "Lessons from",
    "Beyond",
)

SPONSOR_LEVELS: tuple[str, ...] = ("Platinum", "Gold", "Silver", "Bronze", "Exhibitor")
INDUSTRIES: tuple[str, ...] = ("software", "pharma", "finance", "logistics", "media", "edtech")
HALLS: tuple[str, ...] = ("A", "B", "C", "D")
