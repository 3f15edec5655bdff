"""The words a run is recorded in: run status, unit status, change op, exit code.

One definition each, from which the rest follow: the schema's check constraints
(store/schema.py), `EXIT_CODES` (scheduler.py), the terminal's colours (console.py) and the
tables of docs/operations.md (docgen.py). The string enums are StrEnums: a member is equal to its
value, so rows read from the database and literals written elsewhere compare equal to them. The
order of the members is the order of the check constraints' lists (the migrations hold them).
"""

from __future__ import annotations

from enum import IntEnum, StrEnum


class RunStatus(StrEnum):
    """A row of `runs`."""

    RUNNING = "running"
    SUCCEEDED = "succeeded"
    PARTIAL = "partial"  # some units failed, the others applied
    FAILED = "failed"
    HELD = "held"  # a unit would delete too much; that scope was not applied
    # Stopped by SIGINT/SIGTERM or cancelled at serve's drain limit.
    INTERRUPTED = "interrupted"
    # Found still `running` after its process died (SIGKILL, a lost host), or fenced off by a
    # newer run.
    ABANDONED = "abandoned"


class UnitStatus(StrEnum):
    """A unit of a run: a row of `fetches`."""

    PENDING = "pending"
    RUNNING = "running"
    APPLIED = "applied"
    FAILED = "failed"
    HELD = "held"
    SUPERSEDED = "superseded"  # an `event=all` unit replaced by per-event units
    SKIPPED = "skipped"  # never started: the run was told to stop first
    # Stopped before it committed (an interruption, or a run-stopping error in a sibling unit).
    CANCELLED = "cancelled"
    ABANDONED = "abandoned"  # left `running` by a run that died, closed by a later run

    @property
    def final(self) -> bool:
        """A state a unit ends in (every unit is in one once its run has ended)."""
        return self not in (UnitStatus.PENDING, UnitStatus.RUNNING)


class Op(StrEnum):
    """What a change record did to a row."""

    INSERT = "insert"
    UPDATE = "update"
    DELETE = "delete"
    REKEY = "rekey"  # the same record re-created under a new key: one change, not two


class ExitCode(IntEnum):
    """The exit codes of `syncsvc run` (and of the other commands, where they apply)."""

    SUCCEEDED = 0
    FAILED = 1
    CONFIG = 2
    PARTIAL = 3
    HELD = 4
    LOCKED = 5  # another run of the account holds its run lock
    INTERRUPTED = 130  # SIGINT (128 + 2), as a shell reports it
    TERMINATED = 143  # SIGTERM (128 + 15)
