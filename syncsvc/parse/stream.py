"""The parse stage: one attempt's decoded body -> batches for the sink, then the dump's verdict.

The client (syncsvc/cvent/client.py) does transport, rate budget, retries and the HTTP answer; per
attempt it hands the decoded body to a `DumpConsumer` made here (`ParseStage.consumer`), and the
scheduler composes the two with the stage's sink: fetch -> parse -> stage.

Per attempt, the sink is awaited with a fresh async iterator of batches that ends normally only
for a complete dump with code 0. Batches are lists of `on_record` results (one-document parse,
syncsvc/parse/document.py) or, for an `encoded` fetch, EncodedBatch: staging rows made in worker
processes from segments of whole records (syncsvc/parse/split.py, pool.py, segments.py) for the
dumps `parse_in_worker` names, or in process by the same codec when no `on_record` is given. A
segment that does not parse on its own raises SegmentRefused, which the retry policy retries at
once; this consumer then parses the dump as one document.
"""

from __future__ import annotations

import asyncio
import collections
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, Generic, TypeVar, cast

from lxml import etree

from syncsvc import catalog, logs
from syncsvc.catalog import Resource
from syncsvc.cvent.body import Consumed, FetchProgress, Response
from syncsvc.errors import SegmentRefused, SyncError, TerminalError, WorkerDiedError
from syncsvc.parse.document import DumpParser, element_to_dict
from syncsvc.parse.pool import ParsePool
from syncsvc.parse.segments import EncodedBatch, segment_codec
from syncsvc.parse.split import Splitter
from syncsvc.settings import Settings

T = TypeVar("T")
R = TypeVar("R")

Sink = Callable[[AsyncIterator[list[T]]], Awaitable[R]]

log = logs.get_logger(__name__)

BATCH_SIZE = 2000  # records per batch handed to the sink
# Bytes of whole records per segment parsed in a worker. Each worker holds a segment's tree and
# rows, and the loop SEGMENTS_AHEAD of them per worker: 256 KiB rather than 512 took ~8 MB off the
# whole tree (cgroup peak, `benchmarks/run.py --scenario small`) at the same speed; 128 KiB rather
# than 256 another 3-4 MB (`--scenario mid`) for ~2% more CPU (more segments, each a round trip).
SEGMENT_BYTES = 128 * 1024
SEGMENTS_AHEAD = 2  # segments queued per worker: enough to keep it busy while COPY writes


class ParseStage:
    """The parse for one run: its worker pool (started for the first dump that needs it) and
    the consumers that parse each fetch's bodies."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._pool: ParsePool | None = None

    def consumer(
        self,
        resource: Resource,
        sink: Sink[T, R],
        on_record: Callable[[etree._Element], T] | None = None,
        *,
        encoded: bool = False,
    ) -> DumpConsumer[T, R]:
        """The body consumer for one fetch of `resource` into `sink` (see the module docstring).

        `encoded=True`: the sink also takes EncodedBatch batches; without `on_record`, the dumps
        parsed in process are staging rows too (rendered once, by the walk that hashes them)."""
        return DumpConsumer(self, resource, sink, on_record, encoded=encoded)

    def pool(self, event: str | None, encoded: bool) -> ParsePool | None:
        """The worker pool a dump is parsed in, or None to parse it in process."""
        mode = self.settings.parse_in_worker
        large = mode == "always" or (mode == "event_all" and event == catalog.EVENT_ALL)
        if not (encoded and large):
            return None
        if self._pool is None:
            self._pool = ParsePool(self.settings.parse_workers)
        return self._pool

    def discard_pool(self) -> None:
        """Forget a broken pool (its workers are gone); the next large dump starts another."""
        pool, self._pool = self._pool, None
        if pool is not None:
            pool.close()

    def close(self) -> None:
        """Stop the parse workers (blocking; idempotent)."""
        self.discard_pool()


class DumpConsumer(Generic[T, R]):
    """Parses each attempt's body of one fetch into its sink (cvent.body.BodyConsumer)."""

    def __init__(
        self,
        stage: ParseStage,
        resource: Resource,
        sink: Sink[T, R],
        on_record: Callable[[etree._Element], T] | None,
        *,
        encoded: bool,
    ) -> None:
        self.stage = stage
        self.resource = resource
        self.sink = sink
        self.encoded = encoded  # False once a split was refused: every later attempt is whole
        self.rows = encoded and on_record is None  # in process, staging rows instead of records
        self.on_record = on_record or cast(Callable[[etree._Element], T], element_to_dict)

    async def __call__(self, body: AsyncIterator[bytes], response: Response) -> Consumed[R]:
        event = response.event
        on_record: Callable[[etree._Element], Any] = self.on_record
        if self.rows:
            on_record = segment_codec(self.resource.path).row
        parser: DumpParser[Any] = DumpParser(
            self.resource,
            on_record,
            max_bytes=response.max_bytes,
            event=event,
            egress=response.egress,
            headers=response.headers,
        )
        only = None if event in (None, catalog.EVENT_ALL) else event
        batches = _Batches(
            self,
            body,
            parser,
            response.where,
            split=self.stage.pool(event, self.encoded),
            only=only,
            progress=response.progress,
        )
        try:
            value = await self.sink(batches)
        except BaseException as exc:
            # A sink may wrap the iterator's error; the iterator's verdict decides.
            error = batches.error if batches.error is not None else exc
            if isinstance(error, SegmentRefused):
                self._refused(error, event)
            if error is not exc:
                raise error  # noqa: B904 (its own cause chain is the story)
            raise
        if batches.error is not None:
            if isinstance(batches.error, SegmentRefused):
                self._refused(batches.error, event)
            raise batches.error
        if not batches.finished:
            raise TerminalError(
                "The sink returned before the dump ended; a partial dump is never accepted",
                **response.where,
            )
        return Consumed(value, records=parser.records, bytes=parser.bytes)

    def _refused(self, exc: SegmentRefused, event: str | None) -> None:
        # The retry (at once, by the policy) parses the dump as one document, whose verdict
        # is final.
        if self.encoded:
            self.encoded = False
            log.warning(
                "dump_parsed_whole", resource=self.resource.path, event_guid=event, reason=str(exc)
            )


class _Batches(Generic[T]):
    """The async iterator a sink consumes for one attempt; remembers how it ended."""

    def __init__(
        self,
        consumer: DumpConsumer[Any, Any],
        body: AsyncIterator[bytes],
        parser: DumpParser[T],
        where: dict[str, Any],
        *,
        split: ParsePool | None = None,
        only: str | None = None,
        progress: FetchProgress | None = None,
    ) -> None:
        self.error: SyncError | None = None
        self._progress = progress
        self.finished = False
        self._consumer = consumer
        self._body = body
        self._parser = parser
        self._where = where
        self._only = only
        self._rows = consumer.rows
        self._batch = 0  # batches of in-process staging rows so far (their ordinal base)
        self._gen = self._run_split(split) if split is not None else self._run()

    def __aiter__(self) -> _Batches[T]:
        return self

    async def __anext__(self) -> list[T]:
        try:
            batch: list[T] = await self._gen.__anext__()
        except SyncError as exc:
            self.error = exc
            raise
        if self._progress is not None:
            self._progress.records(batch.records if isinstance(batch, EncodedBatch) else len(batch))
        return batch

    def _take(self) -> Any:
        """The parser's pending results: as they are, or packed as staging rows."""
        taken = self._parser.take()
        if not self._rows:
            return taken
        self._batch += 1
        codec = segment_codec(self._parser.resource.path)
        return codec.pack(cast(list[list[str]], taken), self._batch << 32, self._only)

    async def _run_split(self, pool: ParsePool) -> AsyncIterator[Any]:
        """As `_run`, with the records parsed in worker processes, segment by segment (see
        parse/split.py): batches are EncodedBatch, in document order. A dump whose head is not
        the plain shape is parsed as one document here, as `_run` does."""
        parser = self._parser
        splitter = Splitter(
            parser.resource, segment_bytes=SEGMENT_BYTES, max_record_bytes=parser.max_record_bytes
        )
        path = parser.resource.path
        ahead = SEGMENTS_AHEAD * self._consumer.stage.settings.parse_workers
        inflight: collections.deque[asyncio.Future[EncodedBatch]] = collections.deque()
        segments = records = total = 0
        try:
            async for piece in self._body:
                total += len(piece)
                parser.check_size(total)
                if not splitter.classic:
                    for segment in splitter.feed(piece):
                        if len(inflight) >= ahead:
                            batch = await self._parsed(inflight.popleft())
                            records += batch.records
                            yield batch
                        segments += 1
                        inflight.append(pool.submit(path, segment, segments << 32, self._only))
                    if not splitter.classic:
                        continue
                    # Decided just now: the head is not the plain shape, and every byte so
                    # far goes to the one-document parse.
                    piece = splitter.take_buffered()
                parser.feed(piece)
                if len(parser.pending) >= BATCH_SIZE:
                    yield self._take()
            for segment in splitter.finish():
                segments += 1
                inflight.append(pool.submit(path, segment, segments << 32, self._only))
            if splitter.classic:
                parser.feed(splitter.take_buffered())  # the body ended while the head was sought
                parser.close()
                if parser.pending:
                    yield self._take()
                self.finished = True
                return
            while inflight:
                batch = await self._parsed(inflight.popleft())
                records += batch.records
                yield batch
        finally:
            for future in inflight:
                future.cancel()
        # The verdict: head and tail as one document (root, response code, nothing after it).
        assert splitter.head is not None
        parser.feed(splitter.head)
        parser.feed(splitter.tail)
        parser.close()
        if parser.records:
            raise SegmentRefused("A record outside the dump's segments", **self._where)
        parser.records, parser.bytes = records, total
        self.finished = True

    async def _parsed(self, future: asyncio.Future[EncodedBatch]) -> EncodedBatch:
        try:
            return await future
        except WorkerDiedError:
            # This attempt fails and is retried; the retry starts a new pool.
            self._consumer.stage.discard_pool()
            raise

    async def _run(self) -> AsyncIterator[Any]:
        parser = self._parser
        async for piece in self._body:
            parser.feed(piece)
            if len(parser.pending) >= BATCH_SIZE:
                yield self._take()
        parser.close()
        if parser.pending:
            yield self._take()
        self.finished = True


async def collect_all(batches: AsyncIterator[list[T]]) -> list[T]:
    """A sink that keeps every record of a dump (small ones: the account's events)."""
    out: list[T] = []
    async for batch in batches:
        out.extend(batch)
    return out
