# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
"""The segment codec's walk over libxml2's nodes, compiled: the COPY text of each record.

`syncsvc.normalize.Walk` visits a record's children through lxml's Python API, and two thirds of
a record's parse went there (an element proxy, its tag and its text per child: 16-21 us per user
against libxml2's own 3.5 us). This module reads the same tree libxml2 built (the document lxml
parsed, with the same options) through lxml's public C API and gives, for the records it can
read, the very list `Walk(resource)(elem)[1]` gives: the fields' COPY text in catalog order, then
extras (records.NULL for no value). Integers, dates and uncommon datetime spellings go through
`syncsvc.normalize`'s and `syncsvc.records`' own Python functions (passed in); the common
datetime spellings (`_utc_text`), the JSON of customFields and extras (`_render_mapping`) and
the COPY line with its hashes (`pack`) are written here, each compared with its Python
counterpart by generated tests.

It reads only what is plain: a record in no namespace whose children are elements in no
namespace holding text (refs and customFields: elements holding text), with text or CDATA
between them. Anything else (an entity reference, a field with markup inside, a namespaced
element) is left to the Python walk for that record (`rows` calls `fallback(element)`), so the
output is the Python walk's on every input; tests/unit/test_parse_compiled.py and
test_segments.py compare both on every simulator style, on hostile records and on generated ones.
"""

from cpython.unicode cimport PyUnicode_DecodeUTF8
from libc.string cimport strcmp, strlen

from json.encoder import encode_basestring as _enc

from lxml.includes cimport tree
from lxml.includes.etreepublic cimport _Element, elementFactory, import_lxml__etree


cdef extern from "Python.h":
    bint PyUnicode_IS_ASCII(object text)
    void* PyUnicode_DATA(object text)
    Py_ssize_t PyUnicode_GET_LENGTH(object text)


import_lxml__etree()

# Field kinds, as SegmentCodec passes them (the order of its KIND_CODES).
cdef enum:
    K_TEXT = 0
    K_CONVERT = 1  # int, date, datetime: a converter that may raise ValueError
    K_REFS = 2
    K_CUSTOM = 3
    K_DATETIME = 4  # converted too, with the common spellings rendered here
    MAX_FIELDS = 64
    SEEN_MAX = 4096

cdef object _PLAIN_FAILED = object()  # a node this module does not read

cdef int _DAYS[13]
_DAYS[:] = [0, 31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31]


cdef inline int _digits(const char* s, int n) noexcept:
    """The n ASCII digits at s as a number, -1 when one is not a digit."""
    cdef int i, v = 0
    for i in range(n):
        if not (48 <= s[i] <= 57):
            return -1
        v = v * 10 + (s[i] - 48)
    return v


cdef inline int _month_days(int year, int month) noexcept:
    if month == 2 and (year % 4 == 0 and (year % 100 != 0 or year % 400 == 0)):
        return 29
    return _DAYS[month]


cdef object _utc_text(str text):
    """`YYYY-MM-DDTHH:MM:SS` with no offset, `Z` or `+HH:MM`/`-HH:MM`, as
    `records.RENDER[DATETIME](normalize.parse_datetime(text))` renders it (the instant in UTC,
    `+00:00`); None for any other text (fractions, other ISO 8601 forms, an invalid date or
    time): the Python functions judge those."""
    cdef bytes raw
    cdef const char* s
    cdef Py_ssize_t n = len(text)
    cdef int year, month, day, hour, minute, second, sign, oh, om, total
    if n != 19 and n != 20 and n != 25:
        return None
    raw = text.encode("ascii", "replace")
    s = raw
    if s[4] != 45 or s[7] != 45 or s[10] != 84 or s[13] != 58 or s[16] != 58:  # - - T : :
        return None
    year, month, day = _digits(s, 4), _digits(s + 5, 2), _digits(s + 8, 2)
    hour, minute, second = _digits(s + 11, 2), _digits(s + 14, 2), _digits(s + 17, 2)
    if year < 1 or not 1 <= month <= 12 or day < 1 or day > _month_days(year, month):
        return None
    if not (0 <= hour <= 23 and 0 <= minute <= 59 and 0 <= second <= 59):
        return None
    if n == 20:
        if s[19] != 90:  # Z
            return None
    elif n == 25:
        if s[19] == 43:  # +
            sign = 1
        elif s[19] == 45:  # -
            sign = -1
        else:
            return None
        oh, om = _digits(s + 20, 2), _digits(s + 23, 2)
        if s[22] != 58 or not (0 <= oh <= 23 and 0 <= om <= 59):
            return None
        # UTC = local - offset, carried through the day, month and year.
        total = hour * 60 + minute - sign * (oh * 60 + om)
        if total < 0:
            total += 1440
            day -= 1
            if day == 0:
                month -= 1
                if month == 0:
                    month = 12
                    year -= 1
                day = _month_days(year, month)
        elif total >= 1440:
            total -= 1440
            day += 1
            if day > _month_days(year, month):
                day = 1
                month += 1
                if month == 13:
                    month = 1
                    year += 1
        if not 1 <= year <= 9999:
            return None
        hour, minute = total // 60, total % 60
    return f"{year:04d}-{month:02d}-{day:02d}T{hour:02d}:{minute:02d}:{second:02d}+00:00"


def utc_text(str text):
    """`_utc_text`, for the tests."""
    return _utc_text(text)


def render_mapping(dict mapping):
    """`_render_mapping`, for the tests."""
    return _render_mapping(mapping)


cdef str _json_text(str text):
    """`records.render_json`'s string encoding (json's encode_basestring): a plain ASCII text
    (no quote, backslash or control character) is only quoted; others go to json's own."""
    cdef Py_ssize_t i, n
    cdef const unsigned char* data
    cdef unsigned char ch
    if not PyUnicode_IS_ASCII(text):
        return _enc(text)
    data = <const unsigned char*>PyUnicode_DATA(text)
    n = PyUnicode_GET_LENGTH(text)
    for i in range(n):
        ch = data[i]
        if ch < 0x20 or ch == 0x22 or ch == 0x5C:
            return _enc(text)
    return f'"{text}"'


cdef str _render_mapping(dict mapping):
    """`records.render_json(mapping)`: keys sorted, compiled."""
    pieces = []
    for key in sorted(mapping):
        pieces.append(_json_text(key) + ":" + _json_text(mapping[key]))
    return "{" + ",".join(pieces) + "}"


cdef inline bint _plain_ends(const char* s, Py_ssize_t n) noexcept:
    """Whether a non-empty UTF-8 text starts and ends with printable ASCII: str.strip() would
    not change it (every character it strips is a space, a control or not ASCII)."""
    cdef unsigned char first = <unsigned char>s[0]
    cdef unsigned char last = <unsigned char>s[n - 1]
    return 0x20 < first < 0x7F and 0x20 < last < 0x7F


cdef object _trimmed(const char* s):
    """A text node's text as str.strip() leaves it, None when nothing is left."""
    cdef Py_ssize_t n = strlen(s)
    if n == 0:
        return None
    text = PyUnicode_DecodeUTF8(s, n, NULL)
    if _plain_ends(s, n):
        return text
    return text.strip() or None


cdef object _text_only(tree.xmlNode* elem):
    """The element's text trimmed (None: none left) when it holds only text or CDATA;
    _PLAIN_FAILED when it holds anything else."""
    cdef tree.xmlNode* c = elem.children
    if c is NULL:
        return None
    if c.next is NULL and (c.type == tree.XML_TEXT_NODE or c.type == tree.XML_CDATA_SECTION_NODE):
        return _trimmed(<const char*>c.content)
    pieces = []
    while c is not NULL:
        if c.type != tree.XML_TEXT_NODE and c.type != tree.XML_CDATA_SECTION_NODE:
            return _PLAIN_FAILED
        pieces.append(PyUnicode_DecodeUTF8(<const char*>c.content, strlen(<const char*>c.content), NULL))
        c = c.next
    return "".join(pieces).strip() or None


cdef class CompiledWalk:
    """One resource's plain records -> their COPY text parts (see the module docstring)."""

    cdef bytes record  # the record element's name
    cdef Py_ssize_t width
    cdef list names  # the fields' element names (bytes, kept alive for `_name`)
    cdef const char* _name[MAX_FIELDS]
    cdef int _kind[MAX_FIELDS]
    cdef list apis  # per field: its API name (str), converter, renderer
    cdef list converts
    cdef list renders
    cdef list seen  # per field: text -> its rendering (converted kinds), at most SEEN_MAX
    cdef list forbidden  # element names (bytes) never kept
    cdef object null
    cdef object render_refs

    def __init__(self, str record, list fields, forbidden, null, render_refs):
        """`fields`: (api name, kind code, convert or None, render or None) in catalog order."""
        if len(fields) > MAX_FIELDS:
            raise ValueError("too many fields for the compiled walk")
        self.record = record.encode()
        self.width = len(fields)
        self.names = [api.encode() for api, _, _, _ in fields]
        self.apis = [api for api, _, _, _ in fields]
        self.converts = [convert for _, _, convert, _ in fields]
        self.renders = [render for _, _, _, render in fields]
        self.seen = [{} for _ in fields]
        for slot, (_, kind, _, _) in enumerate(fields):
            self._name[slot] = <const char*>(<bytes>self.names[slot])
            self._kind[slot] = kind
        self.forbidden = [name.encode() for name in forbidden]
        self.null = null
        self.render_refs = render_refs

    cdef Py_ssize_t _slot(self, const char* name, Py_ssize_t guess) noexcept:
        """The field slot of an element name, -1 for none; children mostly come in catalog
        order, so the slot after the previous child's is tried first."""
        cdef Py_ssize_t i
        if guess < self.width and strcmp(name, self._name[guess]) == 0:
            return guess
        # ... or in reverse catalog order (one of the simulator's styles, and some exports)
        if guess >= 2 and strcmp(name, self._name[guess - 2]) == 0:
            return guess - 2
        for i in range(self.width):
            if strcmp(name, self._name[i]) == 0:
                return i
        return -1

    cdef bint _forbidden(self, const char* name):
        for f in self.forbidden:
            if strcmp(name, <const char*>(<bytes>f)) == 0:
                return True
        return False

    cdef object _parts(self, tree.xmlNode* elem):
        """The record's parts, or None when it is not plain (the Python walk reads it)."""
        cdef tree.xmlNode* c = elem.children
        cdef tree.xmlNode* g
        cdef Py_ssize_t slot
        cdef Py_ssize_t guess = 0
        cdef int kind
        cdef const char* name
        null = self.null
        parts = [null] * (self.width + 1)
        extras = None
        while c is not NULL:
            if c.type == tree.XML_ELEMENT_NODE:
                if c.ns is not NULL:
                    return None
                name = <const char*>c.name
                slot = self._slot(name, guess)
                if slot < 0:
                    if self._forbidden(name):
                        c = c.next
                        continue
                    # An unknown element: kept in extras under its name, trimmed.
                    text = _text_only(c)
                    if text is _PLAIN_FAILED:
                        return None
                    if text is not None:
                        if extras is None:
                            extras = {}
                        extras[PyUnicode_DecodeUTF8(name, strlen(name), NULL)] = text
                    c = c.next
                    continue
                guess = slot + 1
                kind = self._kind[slot]
                if kind == K_TEXT or kind == K_CONVERT or kind == K_DATETIME:
                    text = _text_only(c)
                    if text is _PLAIN_FAILED:
                        return None
                    if text is None:
                        parts[slot] = null
                    elif kind == K_TEXT:
                        parts[slot] = text
                    elif kind == K_DATETIME and (rendered := _utc_text(text)) is not None:
                        parts[slot] = rendered
                    else:
                        # Dumps repeat their timestamps (a record's registrationDate is often
                        # its lastModified): each slot remembers what its texts rendered as.
                        seen = <dict>self.seen[slot]
                        rendered = seen.get(text)
                        if rendered is not None:
                            parts[slot] = rendered
                            c = c.next
                            continue
                        try:
                            rendered = self.renders[slot](self.converts[slot](text))
                            if len(seen) >= SEEN_MAX:
                                seen.clear()
                            seen[text] = rendered
                            parts[slot] = rendered
                        except (ValueError, OverflowError):
                            # Not lost: the raw text goes to extras under the field's name.
                            parts[slot] = null
                            if extras is None:
                                extras = {}
                            extras[self.apis[slot]] = text
                else:  # refs, customFields: element children holding text
                    values = [] if kind == K_REFS else {}
                    g = c.children
                    while g is not NULL:
                        if g.type == tree.XML_ELEMENT_NODE:
                            if g.ns is not NULL:
                                return None
                            text = _text_only(g)
                            if text is _PLAIN_FAILED:
                                return None
                            if text is not None:
                                if kind == K_REFS:
                                    values.append(text)
                                else:
                                    values[
                                        PyUnicode_DecodeUTF8(
                                            <const char*>g.name, strlen(<const char*>g.name), NULL
                                        )
                                    ] = text
                        elif g.type != tree.XML_TEXT_NODE and g.type != tree.XML_CDATA_SECTION_NODE:
                            return None
                        g = g.next
                    if not values:
                        parts[slot] = null
                    elif kind == K_REFS:
                        parts[slot] = self.render_refs(values)
                    else:
                        parts[slot] = _render_mapping(values)
            elif c.type != tree.XML_TEXT_NODE and c.type != tree.XML_CDATA_SECTION_NODE:
                return None
            c = c.next
        if extras is not None:
            parts[self.width] = _render_mapping(extras)
        return parts

    def parts(self, _Element elem):
        """One record element's parts, or None when it is not plain."""
        return self._parts(elem._c_node)

    def rows(self, _Element root, fallback):
        """The parts of every record element among `root`'s children, in document order (other
        children are not records); `fallback(element)` gives a record that is not plain."""
        cdef tree.xmlNode* c = root._c_node.children
        cdef const char* record = self.record
        out = []
        while c is not NULL:
            if (
                c.type == tree.XML_ELEMENT_NODE
                and c.ns is NULL
                and strcmp(<const char*>c.name, record) == 0
            ):
                parts = self._parts(c)
                if parts is None:
                    parts = fallback(elementFactory(root._doc, c))
                out.append(parts)
            c = c.next
        return out



from hashlib import md5 as _md5
from zlib import crc32 as _crc32

from syncsvc.records import _COPY_ESCAPES


def pack(
    list rows,
    long long ord_base,
    object only,
    Py_ssize_t guid_at,
    Py_ssize_t key_at,
    str null,
    dict events,
):
    """`SegmentCodec.pack`'s loop, compiled: (COPY bytes, staged, rejected, unidentified);
    `events` counts rows per event GUID. Each line is `records.copy_text` of the parts, then
    `segments.staging_line`'s columns (md5 of the data line, ordinal, key hash): the same
    bytes, which tests/unit/test_parse_compiled.py checks against the Python loop."""
    cdef long long ordinal = ord_base
    cdef Py_ssize_t rejected = 0
    cdef Py_ssize_t unidentified = 0
    cdef list lines = []
    cdef list parts
    cdef str line
    for parts in rows:
        guid = parts[guid_at]
        key = parts[key_at]
        if guid is null or key is null:
            rejected += 1
            unidentified += 1
            continue
        if only is not None and guid != only:
            rejected += 1
            continue
        events[guid] = events.get(guid, 0) + 1
        line = "\x00".join(parts)
        if "\\" in line or "\t" in line or "\n" in line or "\r" in line:
            line = line.translate(_COPY_ESCAPES)
        line = line.replace("\x00", "\t").replace(null, "\\N")
        ordinal += 1
        digest = _md5(line.encode(), usedforsecurity=False).hexdigest()
        kh = (<object>_crc32((<str>guid).encode()) << 31) ^ _crc32((<str>key).encode())
        lines.append(f"{line}\t\\\\x{digest}\t{ordinal}\t{kh}\n")
    return "".join(lines).encode(), ordinal - ord_base, rejected, unidentified
