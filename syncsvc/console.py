"""What a person sees of a run: rich progress on a terminal, and the closing summary table."""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Mapping
from typing import Any

from rich.console import Console, Group
from rich.live import Live
from rich.progress import (
    BarColumn,
    DownloadColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    SpinnerColumn,
    Task,
    TextColumn,
    TimeElapsedColumn,
)
from rich.table import Table
from rich.text import Text

from syncsvc.scheduler import RunResult
from syncsvc.units import Unit, UnitOutcome
from syncsvc.vocab import RunStatus, UnitStatus

OPS = ("inserted", "updated", "deleted", "rekeyed")

# The colour of a unit's status in the line printed as it ends: green applied, yellow held,
# red whatever applied nothing (pending and running never end a unit; listed for completeness).
UNIT_COLOURS: dict[UnitStatus, str] = {
    UnitStatus.PENDING: "red",
    UnitStatus.RUNNING: "red",
    UnitStatus.APPLIED: "green",
    UnitStatus.FAILED: "red",
    UnitStatus.HELD: "yellow",
    UnitStatus.SUPERSEDED: "red",
    UnitStatus.SKIPPED: "red",
    UnitStatus.CANCELLED: "red",
    UnitStatus.ABANDONED: "red",
}


def console() -> Console:
    # Piped output (a log, a ticket) gets full-width rows rather than folding at 80 columns.
    return Console() if sys.stdout.isatty() else Console(width=160)


class _Rate(ProgressColumn):
    """Records and megabytes per second of one unit in flight."""

    def render(self, task: Task) -> Text:
        elapsed = task.elapsed or 0.0
        records = task.fields.get("records", 0)
        rps = records / elapsed if elapsed > 0 else 0.0
        mbps = (task.speed or 0.0) / 1e6
        return Text(f"{rps:>8,.0f} rec/s {mbps:5.1f} MB/s", style="progress.data.speed")


class _Eta(ProgressColumn):
    """Time left at the current rate; `?` without an expected size (no Content-Length and no
    previous run of the unit)."""

    def render(self, task: Task) -> Text:
        if task.finished:
            return Text("applying", style="progress.remaining")
        left = task.time_remaining
        if left is None:
            return Text("ETA ?", style="progress.remaining")
        minutes, seconds = divmod(int(left), 60)
        hours, minutes = divmod(minutes, 60)
        return Text(f"ETA {hours}:{minutes:02d}:{seconds:02d}", style="progress.remaining")


class _LiveStream:
    """A file for the log handler while the live display runs: each complete line is printed
    through the display's console, above the bars, instead of being written over them."""

    def __init__(self, out: Console) -> None:
        self._out = out
        self._partial = ""

    def write(self, text: str) -> int:
        self._partial += text
        *lines, self._partial = self._partial.split("\n")
        for line in lines:
            self._out.print(Text.from_ansi(line), soft_wrap=True)
        return len(text)

    def flush(self) -> None:
        pass

    def isatty(self) -> bool:
        return True


class _UnitBar:
    """One unit's line (a FetchProgress for the client): bytes against the Content-Length, or
    against the same unit's size in the previous run; records; rate; ETA."""

    def __init__(self, owner: RunProgress, unit: Unit, expected: int | None) -> None:
        self._owner = owner
        self._unit = unit
        self._expected = expected
        self._by_wire = False
        self._task: Any = None
        self._total: int | None = None
        self._done = 0
        self._records = 0

    def response(self, content_length: int | None) -> None:
        # A new attempt starts over (a retried fetch streams the whole dump again).
        self._by_wire = content_length is not None
        self._total = content_length if content_length is not None else self._expected
        self._done = self._records = 0
        progress = self._owner.units
        if self._task is None:
            self._task = progress.add_task(self._unit.name, total=self._total, records=0)
            self._owner.unit_tasks[self._unit.name] = self._task
        else:
            progress.reset(self._task, total=self._total, records=0)

    def data(self, wire_bytes: int, decoded_bytes: int) -> None:
        if self._task is None:
            return
        self._done += wire_bytes if self._by_wire else decoded_bytes
        if self._total is not None and self._done > self._total:
            self._total = None  # larger than last time: no honest ETA any more
            self._owner.units.update(self._task, total=None)
        self._owner.units.update(self._task, completed=self._done)

    def records(self, n: int) -> None:
        if self._task is not None:
            self._records += n
            self._owner.units.update(self._task, records=self._records)

    def fetched(self) -> None:
        # Fetched and staged: what remains is the diff and apply, which no byte count measures.
        if self._task is not None:
            self._owner.units.update(
                self._task,
                total=self._done,
                completed=self._done,
            )


class RunProgress:
    """On a terminal, one live display: units done/total with records and MB, then a line per
    unit in flight (bytes, records, rate, ETA); finished units and log lines print above it.
    Off a terminal it is silent: the JSON log lines say everything."""

    def __init__(self, out: Console, expected: Mapping[tuple[str, str], int] | None = None) -> None:
        self.enabled = out.is_terminal
        self._out = out
        self._expected = dict(expected or {})
        self.overall = Progress(
            SpinnerColumn(),
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[records]:,} records, {task.fields[mb]:.1f} MB"),
            TimeElapsedColumn(),
            console=out,
        )
        self.units = Progress(
            TextColumn("  {task.description:<44}"),
            BarColumn(bar_width=16),
            DownloadColumn(),
            TextColumn("{task.fields[records]:>10,} records"),
            _Rate(),
            _Eta(),
            console=out,
        )
        self.lock_wait = Progress(
            SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn(), console=out
        )
        self._wait_task: Any = None
        self.unit_tasks: dict[str, Any] = {}
        self._live = Live(
            Group(self.lock_wait, self.overall, self.units), console=out, refresh_per_second=4
        )
        self._task: Any = None
        self._records = 0
        self._bytes = 0
        self._started = time.monotonic()
        self._handler: logging.StreamHandler[Any] | None = None
        self._stream: Any = None

    def __enter__(self) -> RunProgress:
        if self.enabled:
            self._task = self.overall.add_task("starting", total=None, records=0, mb=0.0)
            self._live.start()
            self._route_logs()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.enabled:
            for task in list(self.unit_tasks.values()):
                self.units.remove_task(task)
            self.unit_tasks.clear()
            self._live.stop()
            if self._handler is not None:
                self._handler.setStream(self._stream)

    def _route_logs(self) -> None:
        # The log handler holds the real stderr: written as is, a line lands on the bars' row
        # and glues onto their fragments. While the display runs, lines go through it.
        for handler in logging.getLogger().handlers:
            if getattr(handler, "_syncsvc", False) and isinstance(handler, logging.StreamHandler):
                self._handler = handler
                self._stream = handler.setStream(_LiveStream(self._live.console))
                return

    def waiting(self, what: str) -> None:
        """Say what the run waits for (another run holding the database's lock)."""
        if self.enabled:
            self.overall.update(self._task, visible=False)
            self._wait_task = self.lock_wait.add_task(what)

    def _waited(self) -> None:
        if self._wait_task is not None:
            self.lock_wait.remove_task(self._wait_task)
            self._wait_task = None
            self.overall.update(self._task, visible=True)

    def planned(self, units: int) -> None:
        if self.enabled:
            self._waited()
            self.overall.update(self._task, description="units", total=units + 1)  # + event.do

    def fetch_progress(self, unit: Unit) -> _UnitBar | None:
        """The unit's line, fed by the client as its dump streams (None off a terminal)."""
        if not self.enabled:
            return None
        self._waited()  # the run has the lock: its first unit (event.do) is starting
        scope = str(unit.scope)  # the fetch row's: `account` for event.do
        return _UnitBar(self, unit, self._expected.get((unit.resource.path, scope)))

    def unit_done(self, o: UnitOutcome) -> None:
        if not self.enabled or o.status == UnitStatus.SUPERSEDED:
            if self.enabled and (task := self.unit_tasks.pop(o.unit.name, None)) is not None:
                self.units.remove_task(task)
            return
        if (task := self.unit_tasks.pop(o.unit.name, None)) is not None:
            self.units.remove_task(task)
        self._records += o.records
        self._bytes += o.bytes
        rate = o.records / o.seconds if o.seconds else 0.0
        colour = UNIT_COLOURS[o.status]
        self._live.console.print(
            f"  [{colour}]{o.status:8}[/{colour}] {o.unit.name:48} {o.records:>9,} records "
            f"{o.bytes / 1e6:8.1f} MB {rate:>9,.0f} rec/s" + (f"  {o.error}" if o.error else "")
        )
        if self._task is not None:
            self.overall.update(self._task, advance=1, records=self._records, mb=self._bytes / 1e6)


def summary_table(result: RunResult) -> Table:
    """Changes per entity and op, with the run's units by status."""
    table = Table(title=f"run {result.run_id}: {result.status}", title_justify="left")
    table.add_column("entity")
    for op in OPS:
        table.add_column(op, justify="right")
    totals = result.totals()
    for entity in ("event", "user", "session", "exhibitor"):
        if any((entity, op) in totals for op in OPS):
            table.add_row(entity, *(f"{totals.get((entity, op), 0):,}" for op in OPS))
    return table


def print_summary(out: Console, result: RunResult, *, label: str = "") -> None:
    """The summary on stdout; a failed run's reason on stderr (once, and without an empty
    table above it), where a wrapper script and a person look for errors."""
    if result.totals() or result.status != RunStatus.FAILED:
        out.print(summary_table(result))
    by_status: dict[str, int] = {}
    for o in result.outcomes:
        by_status[o.status] = by_status.get(o.status, 0) + 1
    if by_status:
        out.print("units: " + ", ".join(f"{n} {s}" for s, n in sorted(by_status.items())))
    if result.error and result.status == RunStatus.FAILED:
        print(f"syncsvc: {label}run {result.run_id} failed: {result.error}", file=sys.stderr)
    elif result.error:
        out.print(f"{label}{result.error}", style="yellow", markup=False, highlight=False)
