"""The vocabulary's enums and everything generated from them: the schema's check constraints,
the exit codes, the terminal's colours, the status pages' words and styles, the docs' tables."""

from __future__ import annotations

import re
from pathlib import Path

from syncsvc import console, docgen, web
from syncsvc.scheduler import EXIT_CODES, RunResult
from syncsvc.store.schema import FETCH_STATUSES, OPS, RUN_STATUSES
from syncsvc.vocab import ExitCode, Op, RunStatus, UnitStatus

ROOT = Path(__file__).resolve().parents[2]
BASE_TEMPLATE = ROOT / "syncsvc" / "web" / "templates" / "base.html"


def test_the_check_constraints_list_the_enums_values_in_the_migrations_order() -> None:
    # The migrations hold these lists: a new member or another order needs a migration.
    assert RUN_STATUSES == (
        "running",
        "succeeded",
        "partial",
        "failed",
        "held",
        "interrupted",
        "abandoned",
    )
    assert FETCH_STATUSES == (
        "pending",
        "running",
        "applied",
        "failed",
        "held",
        "superseded",
        "skipped",
        "cancelled",
        "abandoned",
    )
    assert OPS == ("insert", "update", "delete", "rekey")
    for values in (RUN_STATUSES, FETCH_STATUSES, OPS):
        assert all(type(v) is str for v in values)  # plain strings: their repr is SQL


def test_members_are_equal_to_the_words_the_database_and_older_code_use() -> None:
    assert RunStatus.SUCCEEDED == "succeeded"
    assert UnitStatus("applied") is UnitStatus.APPLIED
    assert f"{Op.REKEY}" == "rekey"
    assert {"held": 1}[UnitStatus.HELD] == 1
    assert [s for s in UnitStatus if s.final] == [
        UnitStatus.APPLIED,
        UnitStatus.FAILED,
        UnitStatus.HELD,
        UnitStatus.SUPERSEDED,
        UnitStatus.SKIPPED,
        UnitStatus.CANCELLED,
        UnitStatus.ABANDONED,
    ]


def test_a_runs_exit_code_follows_from_its_status() -> None:
    assert EXIT_CODES == {"succeeded": 0, "failed": 1, "partial": 3, "held": 4}
    assert [int(c) for c in ExitCode] == [0, 1, 2, 3, 4, 5, 130, 143]
    for status in RunStatus:
        expected = EXIT_CODES.get(status, 1)
        assert RunResult(1, status).exit_code == expected
    assert RunResult(1, RunStatus.INTERRUPTED).exit_code == ExitCode.FAILED


def test_every_unit_status_has_a_colour_on_the_terminal() -> None:
    assert set(console.UNIT_COLOURS) == set(UnitStatus)
    assert console.UNIT_COLOURS[UnitStatus.APPLIED] == "green"
    assert console.UNIT_COLOURS[UnitStatus.HELD] == "yellow"
    others = set(UnitStatus) - {UnitStatus.APPLIED, UnitStatus.HELD}
    assert {console.UNIT_COLOURS[s] for s in others} == {"red"}  # applied nothing


def test_every_run_and_unit_status_has_a_word_and_a_style_on_the_pages() -> None:
    css = BASE_TEMPLATE.read_text()
    for status in (*RunStatus, *UnitStatus):
        assert web.STATUS_WORDS[status] == status.value
        assert re.search(rf"\.s-{status.value}\b[^{{]*\{{[^}}]*color:", css), status
    assert set(web.STATUS_MEANING) <= set(RunStatus)


def test_every_member_has_its_words_in_the_docs_tables() -> None:
    assert set(docgen.EXIT_CODE_WORDS) == set(ExitCode)
    assert set(docgen.RUN_STATUS_WORDS) == set(RunStatus)
    assert set(docgen.UNIT_STATUS_WORDS) == {s for s in UnitStatus if s.final}
    assert set(docgen.OP_WORDS) == set(Op)
