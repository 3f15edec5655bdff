"""Cutting a dump body into head, segments of whole records and tail, at C speed.

The parse of a large dump runs in several worker processes (syncsvc.parse.segments); this is what
lets them share it. Only byte searches run here, on the event loop: the container's start tag ends
the head, and a segment ends at the last record end tag (`</user>`) in the bytes buffered so far.

Soundness does not rest on these searches. The head must be exactly a prolog, the root, its
response code and message, and the container's start tag (anything else, a comment included, and
the dump is parsed as one document instead); each segment must parse on its own inside its
container; and head + tail, parsed together by the one-document parser, must hold no record and
give the verdict (root, response code, nothing after the root). A record end tag inside a comment
or CDATA section can only cut a segment inside that comment or section, which then does not parse
on its own (SegmentRefused): the dump is fetched again and parsed as one document. So does a
segment holding the container's end tag (a record after `</users>`). Whitespace after the root's
end tag is dropped as it arrives, however long: the one rule of parse/document.py for both paths.
"""

from __future__ import annotations

import re

from syncsvc import catalog
from syncsvc.catalog import Resource
from syncsvc.errors import IncompleteDumpError, UnsafeXmlError

MAX_HEAD_BYTES = 64 * 1024  # a real head is ~150 bytes; a longer one means "parse as a document"
_WHITESPACE = b" \t\r\n"


class Splitter:
    """Feed decoded body pieces; take segments of whole records as they complete."""

    def __init__(self, resource: Resource, *, segment_bytes: int, max_record_bytes: int) -> None:
        self.resource = resource
        self.segment_bytes = segment_bytes
        self.max_record_bytes = max_record_bytes
        self.head: bytes | None = None  # set once the container has started
        self.tail = b""  # after finish(): the bytes after the last record
        self.classic = False  # the head is not the plain shape: parse the dump as one document
        self.buffered = bytearray()  # the head while it is sought, then the current segment
        self._after_root = False  # the root's end tag and whitespace were seen: nothing more
        self._root_end = f"</{catalog.ENVELOPE_ROOT}>".encode()
        self._start = f"<{resource.container}>".encode()
        self._end = f"</{resource.record}>".encode()
        names = f"{catalog.ENVELOPE_CODE}|{catalog.ENVELOPE_MESSAGE}"
        ws = rb"[ \t\r\n]*"
        self._head = re.compile(
            rb"(?:\xef\xbb\xbf)?" + ws + rb"(?:<\?xml [^<>]*\?>)?" + ws
            + f"<{catalog.ENVELOPE_ROOT}>".encode() + ws
            + rb"(?:<(" + names.encode() + rb")>[^<>]*</\1>" + ws + rb")*"
            + re.escape(self._start)
        )  # fmt: skip

    def feed(self, piece: bytes) -> list[bytes]:
        """Segments completed by `piece` (none while the head is sought or when classic)."""
        if self._after_root:
            # Whitespace after the root is dropped as it comes (the one-document parse ignores
            # it too); anything else after the root makes the dump incomplete, as there.
            if piece.strip(_WHITESPACE):
                raise IncompleteDumpError(
                    "The response has bytes after its root element", resource=self.resource.path
                )
            return []
        buf = self.buffered
        buf += piece
        if self.head is None:
            if self.classic:
                return []
            at = buf.find(self._start)
            if at < 0:
                if len(buf) > MAX_HEAD_BYTES:
                    self.classic = True
                return []
            head = bytes(buf[: at + len(self._start)])
            if self._head.fullmatch(head) is None:
                self.classic = True
                return []
            self.head = head
            del buf[: len(head)]
        out: list[bytes] = []
        while len(buf) >= self.segment_bytes:
            cut = buf.rfind(self._end)
            if cut < 0:
                if len(buf) > self.max_record_bytes and not self._root_then_whitespace():
                    raise UnsafeXmlError(
                        f"More than {self.max_record_bytes} bytes without a record ending; refused",
                        resource=self.resource.path,
                    )
                break
            cut += len(self._end)
            out.append(bytes(buf[:cut]))
            del buf[:cut]
            if len(buf) < self.segment_bytes:
                break
        return out

    def _root_then_whitespace(self) -> bool:
        """True (and the whitespace dropped) when the bytes held are the document's end, the
        root's end tag, followed by whitespace only: a valid dump with a long blank tail."""
        body = bytes(self.buffered).rstrip(_WHITESPACE)
        if len(body) > self.max_record_bytes or not body.endswith(self._root_end):
            return False
        del self.buffered[len(body) :]
        self._after_root = True
        return True

    def take_buffered(self) -> bytes:
        """The bytes held and not yet cut (once `classic`: everything fed so far)."""
        out = bytes(self.buffered)
        self.buffered.clear()
        return out

    def finish(self) -> list[bytes]:
        """The last segment (if any) once the body ended; `tail` holds what followed it. A body
        that ended before its container started is `classic`."""
        buf = self.buffered
        if self.head is None:
            self.classic = True
            return []
        cut = buf.rfind(self._end)
        if cut < 0:
            self.tail = bytes(buf)
            buf.clear()
            return []
        cut += len(self._end)
        last, self.tail = bytes(buf[:cut]), bytes(buf[cut:])
        buf.clear()
        return [last]
