"""Parser throughput on a synthetic users dump, in-process (prints figures; never pass/fail)."""

from __future__ import annotations

import argparse
import time
import tracemalloc

from syncsvc import catalog
from syncsvc.normalize import normalizer
from syncsvc.parse.document import DumpParser, element_to_dict
from syncsvc.parse.segments import SegmentCodec, staging_line
from syncsvc.parse.split import Splitter
from syncsvc.records import codec as row_codec


def synthetic_users(n: int, event: str = "E-0001") -> bytes:
    """A users dump of `n` realistic-looking records (17 fields, custom fields)."""
    parts = [
        b'<?xml version="1.0" encoding="UTF-8"?>\n<response><responseCode>0</responseCode>'
        b"<responseMessage>Success</responseMessage><users>\n"
    ]
    for i in range(n):
        hms = f"{i // 3600 % 24:02d}:{i // 60 % 60:02d}:{i % 60:02d}"
        parts.append(
            (
                f"<user><userRef>U{i:07d}</userRef><clientID>C{i:07d}</clientID>"
                f"<eventGUID>{event}</eventGUID><firstName>First{i}</firstName>"
                f"<lastName>Last{i}</lastName><email>user{i}@example.com</email>"
                f"<company>Company {i % 500}</company><title>Title {i % 40}</title>"
                f"<phone>+1 555 {i:07d}</phone><city>City {i % 300}</city><state>ST</state>"
                f"<country>US</country><attendeeType>Attendee</attendeeType>"
                f"<registrationStatus>Accepted</registrationStatus>"
                # Distinct instants (a real dump's are), so no cache flatters the conversion.
                f"<registrationDate>2026-03-01T{hms}Z</registrationDate>"
                f"<lastModified>2026-04-{1 + i // 86400 % 28:02d}T{hms}+02:00</lastModified>"
                f"<customFields><type_business>govt</type_business>"
                f"<diet>veg</diet></customFields></user>\n"
            ).encode()
        )
    parts.append(b"</users></response>\n")
    return b"".join(parts)


def run(doc: bytes, on_record: object, chunk: int, batch: int) -> tuple[int, float]:
    parser: DumpParser[object] = DumpParser(
        catalog.USERS,
        on_record,  # type: ignore[arg-type]
        max_bytes=len(doc) + 1,
    )
    n = 0
    t0 = time.perf_counter()
    for i in range(0, len(doc), chunk):
        parser.feed(doc[i : i + chunk])
        if len(parser.pending) >= batch:
            n += len(parser.take())
    parser.close()
    n += len(parser.take())
    return n, time.perf_counter() - t0


def _timed(fn: object) -> float:
    t0 = time.perf_counter()
    fn()  # type: ignore[operator]
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--records", type=int, default=100_000)
    ap.add_argument("--chunk", type=int, default=256 * 1024)
    ap.add_argument("--batch", type=int, default=2000)
    args = ap.parse_args()
    doc = synthetic_users(args.records)
    print(f"document: {args.records} users, {len(doc) / 1e6:.1f} MB")
    for name, fn in (("identity on_record", lambda e: e), ("element_to_dict", element_to_dict)):
        best = min(run(doc, fn, args.chunk, args.batch)[1] for _ in range(3))
        print(
            f"{name:>20}: {args.records / best:,.0f} records/s, "
            f"{len(doc) / best / 1e6:.0f} MB/s ({best:.2f} s)"
        )
    # What one parse worker does: split, then each segment -> COPY text with hash, ord, kh.
    splitter = Splitter(catalog.USERS, segment_bytes=512 * 1024, max_record_bytes=1 << 20)
    segments = []
    for i in range(0, len(doc), args.chunk):
        segments += splitter.feed(doc[i : i + args.chunk])
    segments += splitter.finish()
    # The compiled walk (parse/_walk.pyx, when the install built it) and the Python walk.
    for label, compiled in (("compiled", True), ("python", False)):
        seg = SegmentCodec(catalog.USERS, compiled=compiled)
        if compiled and seg.compiled is None:
            print(f"{'segment -> COPY rows':>20}: compiled walk not built")
            continue
        best = min(
            _timed(lambda seg=seg: [seg.encode(s, n << 32) for n, s in enumerate(segments)])
            for _ in range(3)
        )
        print(
            f"{'segment -> COPY rows':>20}: {args.records / best:,.0f} records/s per core "
            f"({best:.2f} s; parse, normalize, row hash, COPY text; {label} walk)"
        )
    codec = SegmentCodec(catalog.USERS)
    # In process, for the store: typed records then the stage's COPY text (a second rendering,
    # as records are staged), against the walk's own COPY text packed as staging rows.
    data_line = row_codec(catalog.USERS).data_line

    def records_then_copy() -> None:
        n = 0
        parser: DumpParser[object] = DumpParser(
            catalog.USERS, normalizer(catalog.USERS), max_bytes=len(doc) + 1
        )
        for i in range(0, len(doc), args.chunk):
            parser.feed(doc[i : i + args.chunk])
            for r in parser.take():
                n += 1
                staging_line(data_line(r[:-1]), r[-1], n, r[2], r[0])  # type: ignore[index]
        parser.close()

    def rows() -> None:
        parser: DumpParser[list[str]] = DumpParser(catalog.USERS, codec.row, max_bytes=len(doc) + 1)
        for i in range(0, len(doc), args.chunk):
            parser.feed(doc[i : i + args.chunk])
            codec.pack(parser.take(), i << 32, None)
        parser.close()
        codec.pack(parser.take(), len(doc) << 32, None)

    for name, fn in (("records + stage COPY", records_then_copy), ("rows in process", rows)):
        best = min(_timed(fn) for _ in range(3))
        print(f"{name:>20}: {args.records / best:,.0f} records/s ({best:.2f} s; in process)")
    tracemalloc.start()
    run(doc, element_to_dict, args.chunk, args.batch)
    _, peak = tracemalloc.get_traced_memory()
    print(f"peak Python allocations during a parse: {peak / 1e6:.1f} MB")


if __name__ == "__main__":
    main()
