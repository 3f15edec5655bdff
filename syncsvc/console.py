"""What a person sees of a run: rich progress on a terminal, and the closing summary table."""

from __future__ import annotations

import sys
import time
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from syncsvc.scheduler import RunResult, UnitOutcome

OPS = ("inserted", "updated", "deleted", "rekeyed")


def console() -> Console:
    # Piped output (a log, a ticket) gets full-width rows rather than folding at 80 columns.
    return Console() if sys.stdout.isatty() else Console(width=160)


class RunProgress:
    """Units done/total with records, MB and rate per unit; silent when not on a terminal."""

    def __init__(self, out: Console) -> None:
        self.enabled = out.is_terminal
        self._out = out
        self._progress = Progress(
            TextColumn("[bold]units"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[records]:,} records, {task.fields[mb]:.1f} MB"),
            TimeElapsedColumn(),
            console=out,
            transient=False,
        )
        self._task: Any = None
        self._records = 0
        self._bytes = 0
        self._started = time.monotonic()

    def __enter__(self) -> RunProgress:
        if self.enabled:
            self._progress.start()
            self._task = self._progress.add_task("units", total=None, records=0, mb=0.0)
        return self

    def __exit__(self, *exc: object) -> None:
        if self.enabled:
            self._progress.stop()

    def planned(self, units: int) -> None:
        if self.enabled:
            self._progress.update(self._task, total=units + 1)  # + event.do

    def unit_done(self, o: UnitOutcome) -> None:
        if not self.enabled or o.status == "superseded":
            return
        self._records += o.records
        self._bytes += o.bytes
        rate = o.records / o.seconds if o.seconds else 0.0
        colour = {"applied": "green", "held": "yellow"}.get(o.status, "red")
        self._progress.console.print(
            f"  [{colour}]{o.status:8}[/{colour}] {o.unit.name:48} {o.records:>9,} records "
            f"{o.bytes / 1e6:8.1f} MB {rate:>9,.0f} rec/s" + (f"  {o.error}" if o.error else "")
        )
        self._progress.update(self._task, advance=1, records=self._records, mb=self._bytes / 1e6)


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


def print_summary(out: Console, result: RunResult) -> None:
    """The summary on stdout; a failed run's reason on stderr (once, and without an empty
    table above it), where a wrapper script and a person look for errors."""
    if result.totals() or result.status != "failed":
        out.print(summary_table(result))
    by_status: dict[str, int] = {}
    for o in result.outcomes:
        by_status[o.status] = by_status.get(o.status, 0) + 1
    if by_status:
        out.print("units: " + ", ".join(f"{n} {s}" for s, n in sorted(by_status.items())))
    if result.error and result.status == "failed":
        print(f"syncsvc: run {result.run_id} failed: {result.error}", file=sys.stderr)
    elif result.error:
        out.print(f"[yellow]{result.error}[/yellow]")
