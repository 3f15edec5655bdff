"""The streaming, hostile-input-safe dump parse: bytes in, batches of records out, then a verdict.

A `DumpParser` is fed decoded body chunks. It yields nothing itself: records (the results of
`on_record(element)`) collect in `pending` as their elements close, and the caller takes them in
batches. `close()` is the verdict: it returns only when the document parsed completely, the root
closed, nothing but whitespace followed it and the response code is 0; otherwise it raises
IncompleteDumpError, UnsafeXmlError or the ApiError the code means.

The one rule both parse paths apply (this one and the split one, parse/split.py): whitespace after
the root is XML and accepted, however long (max_dump_bytes bounds it); any other byte after the
root, and a record beside its container instead of in it (after `</users>`), make the dump
incomplete. Between records, more than max_record_bytes without a record ending is refused.

Safety: nothing reaches libxml2 before the prolog was checked for a DOCTYPE (so no DTD, no entity
declaration, no external subset ever exists); the parser also runs with entities unresolved, no
network, no DTD loading and libxml2's default limits (depth 256, text nodes 10 MB, names 50 kB),
which huge_tree=False keeps on. The decoded size is capped by the caller's `max_bytes`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, Generic, TypeVar

from lxml import etree

from syncsvc import catalog, logs
from syncsvc.catalog import Resource
from syncsvc.cvent.responses import classify, parse_code
from syncsvc.errors import (
    IncompleteDumpError,
    SyncError,
    UnknownCodeError,
    UnrecognisedDumpError,
    UnsafeXmlError,
)

T = TypeVar("T")

# The prolog (XML declaration, comments, PIs, whitespace) before the root element is short in
# any sane document; a longer one is refused rather than buffered.
MAX_PROLOG_BYTES = 8 * 1024
# libxml2 builds a record's whole subtree before its end event; anything that is not a record
# (an unknown element between records, a record that never ends) stays in the tree. Bounding
# the bytes between two record ends bounds that memory: a real record is a few kB.
MAX_RECORD_BYTES = 1024 * 1024
_WHITESPACE = b" \t\r\n"
_UTF8_BOM = b"\xef\xbb\xbf"
CUSTOM_FIELDS = "customFields"

# lxml reports a fatal error it swallowed during feed() (an undeclared entity reference with
# resolve_entities=False) only at close(), as this code with "no element found". A body cut
# short never produces it: it raises "premature end" style codes instead.
_LXML_SWALLOWED_FATAL = 1


def parser_options() -> dict[str, Any]:
    """The libxml2 options every dump is parsed with (also asserted by the tests)."""
    return {
        "resolve_entities": False,
        "no_network": True,
        "huge_tree": False,
        "recover": False,
        "load_dtd": False,
        "dtd_validation": False,
        "remove_comments": True,
        "remove_pis": True,
        # The document's own encoding declaration is ignored: a declared UTF-7 or UTF-16 could
        # otherwise smuggle a DOCTYPE past the prolog check, which reads bytes as ASCII.
        "encoding": "utf-8",
    }


def element_to_dict(elem: etree._Element) -> dict[str, Any]:
    """The default `on_record`: child tag -> text; refs -> list of texts; customFields -> dict.

    `userKey` (the Primary ID) is dropped here already: it must never be stored or logged.
    """
    out: dict[Any, Any] = {}  # keys are the child tags (str: no namespaces in the API)
    # Comments and PIs are removed by the parser, so every child is an element.
    for child in elem:
        if len(child):
            if child.tag == CUSTOM_FIELDS:
                out[child.tag] = {c.tag: c.text for c in child}
            else:
                out[child.tag] = [c.text for c in child]
        else:
            out[child.tag] = child.text
    for tag in catalog.FORBIDDEN_ELEMENTS:
        out.pop(tag, None)
    return out


def scan_prolog(buf: bytes) -> bool:
    """True once `buf` reaches the root element's start tag, False if more bytes are needed.

    Raises UnsafeXmlError for a DOCTYPE (or any other markup declaration), a non-UTF-8
    encoding form, or text before the root.
    """
    n = len(buf)
    i = len(_UTF8_BOM) if buf.startswith(_UTF8_BOM) else 0
    if b"\x00" in buf[: min(n, 4)]:
        raise UnsafeXmlError("The response is not UTF-8 XML")
    while True:
        while i < n and buf[i] in _WHITESPACE:
            i += 1
        if i >= n:
            return False
        if buf[i] != 0x3C:  # "<"
            raise UnsafeXmlError("The response has content before its root element")
        if i + 1 >= n:
            return False
        nxt = buf[i + 1]
        if nxt == 0x3F:  # "<?": the XML declaration or a PI
            end = buf.find(b"?>", i + 2)
            if end < 0:
                return False
            i = end + 2
        elif nxt == 0x21:  # "<!": a comment is fine; DOCTYPE (or anything else) is not
            if buf.startswith(b"<!--", i):
                end = buf.find(b"-->", i + 4)
                if end < 0:
                    return False
                i = end + 3
            elif b"<!--".startswith(buf[i:]):
                return False
            else:
                raise UnsafeXmlError(
                    "The response carries a DOCTYPE; DTDs and entities are refused"
                )
        else:
            return True


class DumpParser(Generic[T]):
    """Incremental parse of one response body; see the module docstring for the contract."""

    def __init__(
        self,
        resource: Resource,
        on_record: Callable[[etree._Element], T],
        *,
        max_bytes: int,
        event: str | None = None,
        egress: str | None = None,
        headers: Mapping[str, str] | None = None,
        max_record_bytes: int = MAX_RECORD_BYTES,
    ) -> None:
        self.resource = resource
        self.max_record_bytes = max_record_bytes
        self._since_record = 0  # bytes fed since a record last ended
        self.headers = headers  # a Retry-After on a code-301 answer is honoured
        self.event = event
        self.egress = egress
        self.max_bytes = max_bytes
        self.bytes = 0  # decoded bytes fed so far
        self.records = 0  # on_record calls so far
        self.pending: list[T] = []  # results not yet taken by the caller
        self.code: int | None = None
        self.message: str | None = None
        self._on_record = on_record
        self._record_tag = resource.record
        self._prolog: bytearray | None = bytearray()
        self._root_ended = False
        self._container: etree._Element | None = None
        self._container_seen = False  # the root's own <container> element (no namespace) ended
        self._parser = etree.XMLPullParser(
            events=("end",),
            tag=(
                resource.record,
                resource.container,
                catalog.ENVELOPE_CODE,
                catalog.ENVELOPE_MESSAGE,
                catalog.ENVELOPE_ROOT,
            ),
            **parser_options(),
        )

    def _where(self) -> dict[str, Any]:
        return {"resource": self.resource.path, "event_guid": self.event}

    def check_size(self, total: int) -> None:
        """Refuse a body whose decoded size passed max_bytes (also checked by a parse's feeder)."""
        if total > self.max_bytes:
            raise UnsafeXmlError(
                f"The dump exceeds max_dump_bytes ({self.max_bytes} bytes); refused",
                **self._where(),
            )

    def take(self) -> list[T]:
        """The records collected since the last call."""
        out, self.pending = self.pending, []
        return out

    def feed(self, data: bytes) -> None:
        """Parse the next decoded chunk; raises as soon as the input is known to be bad."""
        if not data:
            return
        self.bytes += len(data)
        self.check_size(self.bytes)
        if self._root_ended:
            if data.strip(_WHITESPACE):
                raise IncompleteDumpError(
                    "The response has bytes after its root element", **self._where()
                )
            return
        if self._prolog is not None:
            self._prolog += data
            try:
                found = scan_prolog(bytes(self._prolog))
            except UnsafeXmlError as exc:
                exc.resource, exc.event_guid = self.resource.path, self.event
                raise
            if not found:
                if len(self._prolog) > MAX_PROLOG_BYTES:
                    raise UnsafeXmlError("The response's prolog is too long", **self._where())
                return
            data, self._prolog = bytes(self._prolog), None
        try:
            self._parser.feed(data)
        except etree.XMLSyntaxError as exc:
            # Not chained: libxml2's message quotes the document (it may echo the token); the
            # error keeps its reason, redacted.
            raise self._syntax_error(exc, closing=False) from None
        before = self.records
        self._drain()
        if self.records != before:
            self._since_record = 0
        else:
            self._since_record += len(data)
            if self._since_record > self.max_record_bytes and not self._root_ended:
                raise UnsafeXmlError(
                    f"More than {self.max_record_bytes} bytes without a record ending; refused",
                    **self._where(),
                )

    def _drain(self) -> None:
        record_tag = self._record_tag
        pending = self.pending
        on_record = self._on_record
        container = self._container
        before = len(pending)
        last: etree._Element | None = None
        # The hot loop: one end event per record, nothing per field beyond on_record itself.
        for _event, elem in self._parser.read_events():
            if elem.tag == record_tag:
                if elem.getparent() is not container:
                    parent = elem.getparent()
                    if not self._is_container(parent):
                        if self._is_root(parent):
                            # Beside the container, not in it (e.g. after </users>): a shape
                            # the contract does not have, so the dump cannot be known whole.
                            raise IncompleteDumpError(
                                f"The response has a <{record_tag}> record outside its"
                                f" <{self.resource.container}> container",
                                **self._where(),
                            )
                        continue  # a same-named element nested in a record: part of that record
                    container = self._container
                pending.append(on_record(elem))
                elem.clear()
                last = elem
            else:
                self._envelope(elem)
        if last is not None and container is not None:
            # Drop the records already handed out so the tree never grows. The last one stays:
            # the parser may still be appending its following siblings.
            del container[: container.index(last)]
        self.records += len(pending) - before

    @staticmethod
    def _is_root(elem: etree._Element | None) -> bool:
        return elem is not None and elem.tag == catalog.ENVELOPE_ROOT and elem.getparent() is None

    def _is_container(self, parent: etree._Element | None) -> bool:
        if (
            parent is not None
            and parent.tag == self.resource.container
            and (root := parent.getparent()) is not None
            and root.getparent() is None
        ):
            self._container = parent
            return True
        return False

    def _envelope(self, elem: etree._Element) -> None:
        parent = elem.getparent()
        tag = elem.tag
        if tag == catalog.ENVELOPE_ROOT:
            if parent is None:
                self._root_ended = True
            return
        if tag == self.resource.container:
            if parent is not None and parent.getparent() is None:
                self._container_seen = True
            return
        if parent is None or parent.getparent() is not None:
            return  # not a child of the root: an unknown field inside a record
        if tag == catalog.ENVELOPE_CODE:
            text = elem.text or ""
            code = parse_code(text)
            if code is None:
                shown = logs.redact_text(text.strip(), 40)
                raise UnknownCodeError(
                    f"The response code is not a number: {shown!r}", **self._where()
                )
            if self.code is not None and self.code != code:
                raise UnsafeXmlError("The response carries two response codes", **self._where())
            self.code = code
        elif tag == catalog.ENVELOPE_MESSAGE:
            self.message = elem.text

    def _syntax_error(self, exc: etree.XMLSyntaxError, *, closing: bool) -> SyncError:
        if not self._root_ended:
            # Events parsed before the error may include the root's end.
            for _event, elem in self._parser.read_events():
                if elem.tag == catalog.ENVELOPE_ROOT and elem.getparent() is None:
                    self._root_ended = True
        if self._root_ended:
            return IncompleteDumpError(
                "The response has bytes after its root element", **self._where()
            )
        # libxml2 quotes the document (element names, text) in its messages.
        reason = logs.redact_text(str(exc).split(" (<string>", 1)[0], 160)
        if closing and exc.code != _LXML_SWALLOWED_FATAL:
            return IncompleteDumpError(
                f"The response ended before the document did ({reason})", **self._where()
            )
        return UnsafeXmlError(f"The response is not well-formed XML: {reason}", **self._where())

    def close(self) -> None:
        """Finish the parse: returns only for a complete dump with code 0, else raises."""
        if self._prolog is not None:
            raise IncompleteDumpError(
                "The response ended before its root element began", **self._where()
            )
        try:
            root = self._parser.close()
        except etree.XMLSyntaxError as exc:
            raise self._syntax_error(exc, closing=True) from None  # as in feed()
        self._drain()
        docinfo = root.getroottree().docinfo
        if docinfo.doctype or docinfo.internalDTD is not None or docinfo.externalDTD is not None:
            raise UnsafeXmlError("The response carries a DOCTYPE", **self._where())
        if not self._root_ended:
            raise UnsafeXmlError(
                f"The response's root element is not <{catalog.ENVELOPE_ROOT}>", **self._where()
            )
        if self.code is None:
            raise IncompleteDumpError("The response carries no response code", **self._where())
        if self.code == 0 and not self._container_seen:
            # No <users> (say, <users xmlns="..."> or another shape): its records are invisible,
            # and "zero records" must never be read as "every record was deleted".
            raise UnrecognisedDumpError(
                f"The response has no <{self.resource.container}> element of the expected shape"
                " (a namespace, or another container); nothing applied",
                **self._where(),
            )
        error = classify(
            200,
            self.code,
            self.message,
            resource=self.resource.path,
            event=self.event,
            egress=self.egress,
            headers=self.headers,
        )
        if error is not None:
            raise error
