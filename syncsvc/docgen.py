"""Generates docs from the code, so the reference cannot drift.

docs/configuration.md from the Settings dataclass: regenerate with
`python -m syncsvc.docgen > docs/configuration.md`. The tables of exit codes, run statuses, unit
statuses and ops in docs/operations.md from the enums of syncsvc/vocab.py (each member's words
are here, so a member without them fails the generation): regenerate them in place with
`python -m syncsvc.docgen --tables docs/operations.md`. A test fails when a committed file
differs from what these produce.
"""

from __future__ import annotations

import dataclasses
import json
import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from syncsvc.settings import ACCOUNT_KEYS, ENV_PREFIX, Settings, setting_fields
from syncsvc.vocab import ExitCode, Op, RunStatus, UnitStatus

COMMAND = "python -m syncsvc.docgen > docs/configuration.md"
TABLES_COMMAND = "python -m syncsvc.docgen --tables docs/operations.md"

_KINDS = {
    "str": "text",
    "str | None": "text",
    "float": "number",
    "int": "integer",
    "bool": "boolean",
    "Path": "path",
    "tuple[str, ...]": "list",
}

HEADER = f"""\
<!-- Generated from syncsvc/settings.py by `{COMMAND}`. Do not edit by hand. -->

# Configuration reference

Every setting of syncsvc, generated from the settings object itself. A setting comes from, highest
precedence first:

1. the environment variable `{ENV_PREFIX}<NAME>` (the setting's name in upper case);
2. for a secret, `{ENV_PREFIX}<NAME>_FILE`: a path whose content (trailing whitespace stripped) is
   the value, so the secret stays out of process listings and manifests (Kubernetes Secrets and
   compose secrets mount as files);
3. the TOML file given by `--config FILE` (anywhere on the command line) or `{ENV_PREFIX}CONFIG`
   (keys are the lower-case names; an unknown key is an error naming the closest known one);
4. the default.

An invalid value stops every command with exit code 2 and one line naming the setting as it was
given (the variable, or the TOML key and file). A `{ENV_PREFIX}*` variable that is no setting is
ignored with a warning naming the closest one (`syncsvc check` lists them too). Lists are
comma-separated in the environment (`users,sessions`) and arrays in TOML; booleans accept
`true/false`, `1/0`, `yes/no`, `on/off`.

"""


def _kind(f: dataclasses.Field[Any]) -> str:
    return _KINDS.get(str(f.type), str(f.type))


def _default(f: dataclasses.Field[Any]) -> str:
    value = f.default
    if value is None:
        return "unset"
    if isinstance(value, bool):
        return f"`{str(value).lower()}`"
    if isinstance(value, tuple):
        return f"`{','.join(value)}`" if value else "empty"
    if isinstance(value, Path):
        return f"`{value}`"
    return f"`{value}`"


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _example_toml(settings: type[Any]) -> list[str]:
    lines = ["```toml", "# syncsvc.toml: every non-secret setting at its default"]
    lines.append("# (commented out: no fixed default)")
    for f in setting_fields(settings):
        if f.metadata["secret"]:
            continue
        value = f.default
        if value is None:
            lines.append(f'# {f.name} = "..."')
        elif isinstance(value, Path):
            # Its default depends on the environment ($XDG_DATA_HOME); setting it would pin it.
            lines.append(f"# {f.name} = {json.dumps(str(value))}")
        elif isinstance(value, bool):
            lines.append(f"{f.name} = {str(value).lower()}")
        elif isinstance(value, tuple):
            lines.append(f"{f.name} = {json.dumps(list(value))}")
        elif isinstance(value, int | float):
            lines.append(f"{f.name} = {value}")
        else:
            lines.append(f"{f.name} = {json.dumps(str(value))}")
    lines.append("```")
    return lines


def render(settings: type[Any] = Settings) -> str:
    """The whole of docs/configuration.md, from the fields of `settings` (a dataclass)."""
    rows = [
        "| TOML key | environment variable | type | default | secret | meaning |",
        "|---|---|---|---|---|---|",
    ]
    for f in setting_fields(settings):
        env = f"`{ENV_PREFIX}{f.name.upper()}`"
        confidential = "no"
        if f.metadata["secret"]:
            env += f"<br>`{ENV_PREFIX}{f.name.upper()}_FILE`"
            confidential = "**yes**"
        rows.append(
            f"| `{f.name}` | {env} | {_kind(f)} | {_default(f)} | {confidential} | "
            f"{_cell(f.metadata['doc'])} |"
        )
    secrets = ", ".join(f"`{f.name}`" for f in setting_fields(settings) if f.metadata["secret"])
    body = [
        "## Settings",
        "",
        *rows,
        "",
        f"Secrets ({secrets}) never appear in a log line, an exception, a run record",
        "or a metric; set them through their `_FILE` variable in production.",
        "",
        "## An example file",
        "",
        *_example_toml(settings),
        "",
        "## Many accounts",
        "",
        "`[[account]]` tables in the TOML file declare several accounts, each with its `name` and",
        "its own `base_url`, `api_token_file` and any of "
        + ", ".join(f"`{k}`" for k in ACCOUNT_KEYS[2:])
        + "; the settings above are the",
        "defaults every account inherits. Without a table, the settings above are one account,",
        '`default` (`account` renames it). See [operations.md](operations.md), "Many accounts".',
        "",
    ]
    return HEADER + "\n".join(body)


# --- the vocabulary's tables (docs/operations.md) -----------------------------------------------

# (meaning, what to do) per exit code of `syncsvc run`.
EXIT_CODE_WORDS: dict[ExitCode, tuple[str, str]] = {
    ExitCode.SUCCEEDED: ("the run `succeeded`: every unit applied", "nothing"),
    ExitCode.FAILED: (
        "the run `failed` (or the command could not start: database unreachable, schema behind)",
        "read the one-line message and the run's `error_code`; see the table of response codes"
        " below",
    ),
    ExitCode.CONFIG: (
        "a configuration error: one line names the setting",
        "fix that setting (see [configuration.md](configuration.md)); nothing ran",
    ),
    ExitCode.PARTIAL: (
        "the run is `partial`: some units failed, the others applied",
        'see "A partial run" below',
    ),
    ExitCode.HELD: (
        "the run is `held`: a unit would delete too much; nothing was applied for that scope",
        'see "Held deletes" below',
    ),
    ExitCode.LOCKED: (
        "another run of the account holds its run lock (an advisory lock)",
        "nothing ran; `syncsvc status` shows the running one; `syncsvc run --wait` waits for it"
        " instead",
    ),
    ExitCode.INTERRUPTED: (
        "interrupted by Ctrl-C (SIGINT): one line `syncsvc: interrupted`; the run is stored"
        " `interrupted`",
        "nothing: committed units stay applied, the next run redoes the rest",
    ),
    ExitCode.TERMINATED: (
        "interrupted by SIGTERM: one line `syncsvc: interrupted (SIGTERM)`; the run is stored"
        " `interrupted`",
        "as for 130",
    ),
}

# (meaning, what to do) per run status.
RUN_STATUS_WORDS: dict[RunStatus, tuple[str, str]] = {
    RunStatus.RUNNING: (
        "a run is in progress (it holds the advisory lock)",
        "wait; `syncsvc run --wait` queues behind it",
    ),
    RunStatus.SUCCEEDED: (
        "every unit applied; the current state is the new snapshot",
        "nothing",
    ),
    RunStatus.PARTIAL: (
        "some units failed; the others applied and their change records are out",
        'see "A partial run"',
    ),
    RunStatus.FAILED: (
        "the run stopped (bad token, address not allow-listed, database error)",
        "see the response codes below",
    ),
    RunStatus.HELD: (
        f"a unit would have deleted more than `{ENV_PREFIX}DELETE_HOLD_RATIO` of its scope",
        'see "Held deletes"',
    ),
    RunStatus.INTERRUPTED: (
        "stopped by SIGINT/SIGTERM, or cancelled at `serve`'s drain limit",
        "units that had committed stay applied; the rest were cancelled and applied nothing; the"
        " next run redoes them",
    ),
    RunStatus.ABANDONED: (
        "the process died mid-run (killed, evicted, `OOMKilled`, node lost), or it lost its lock"
        ' and a newer run started (see "Fencing")',
        "units it had applied stay applied, the rest applied nothing; the next run redoes them."
        " If it recurs, look at the pod's last state (memory limit, `activeDeadlineSeconds`)",
    ),
}

# The meaning of each final unit status (`UnitStatus.final`).
UNIT_STATUS_WORDS: dict[UnitStatus, str] = {
    UnitStatus.APPLIED: "committed: its rows and change records are in",
    UnitStatus.HELD: 'committed, with some scopes held for mass deletes (see "Held deletes")',
    UnitStatus.FAILED: "did not commit; `error_code` and `error_message` say why",
    UnitStatus.SUPERSEDED: (
        "an `event=all` unit that was refused or failed; per-event units replaced it"
    ),
    UnitStatus.SKIPPED: "never started: the run was told to stop first",
    UnitStatus.CANCELLED: (
        "started, then stopped before it committed (an interruption, a 101/102 in a sibling,"
        " `serve`'s drain limit, fencing); applied nothing"
    ),
    UnitStatus.ABANDONED: (
        "left open by a run whose process died; closed by the next run; applied nothing"
    ),
}

# (before, after, changed_fields) per op of a change record.
OP_WORDS: dict[Op, tuple[str, str, str]] = {
    Op.INSERT: ("null", "the new record", "empty"),
    Op.UPDATE: (
        "the old record",
        "the new record",
        "the API names of the fields that differ; custom fields as `custom.<code>`",
    ),
    Op.DELETE: ("the last record", "null", "empty"),
    Op.REKEY: (
        "the old record (old key)",
        "the new record (new key)",
        "the fields that differ, the key among them",
    ),
}


def _table(header: tuple[str, ...], rows: list[tuple[str, ...]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def _exit_codes() -> str:
    return _table(
        ("code", "meaning", "what to do"),
        [(str(int(code)), *EXIT_CODE_WORDS[code]) for code in ExitCode],
    )


def _run_statuses() -> str:
    return _table(
        ("status", "meaning", "what to do"),
        [(f"`{status}`", *RUN_STATUS_WORDS[status]) for status in RunStatus],
    )


def _unit_statuses() -> str:
    return _table(
        ("unit status", "meaning"),
        [(f"`{status}`", UNIT_STATUS_WORDS[status]) for status in UnitStatus if status.final],
    )


def _ops() -> str:
    return _table(
        ("`op`", "`before`", "`after`", "`changed_fields`"),
        [(f"`{op}`", *OP_WORDS[op]) for op in Op],
    )


TABLES: dict[str, Callable[[], str]] = {
    "exit-codes": _exit_codes,
    "run-statuses": _run_statuses,
    "unit-statuses": _unit_statuses,
    "ops": _ops,
}

# A generated table sits between these lines; the text around it is written by hand.
_BLOCK = re.compile(
    r"^(<!-- generated by `[^`]*`: (?P<name>[a-z-]+) -->\n)(?P<body>.*?)(^<!-- end generated -->$)",
    re.M | re.S,
)


def fill_tables(text: str) -> str:
    """`text` (a Markdown page) with every generated table block rewritten from the enums."""

    def fill(m: re.Match[str]) -> str:
        # Blank lines around the table: no renderer reads a marker as one of its rows.
        return f"{m.group(1)}\n{TABLES[m.group('name')]()}\n\n{m.group(4)}"

    return _BLOCK.sub(fill, text)


def table_names(text: str) -> list[str]:
    """The generated table blocks of `text`, by name, in order."""
    return [m.group("name") for m in _BLOCK.finditer(text)]


def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else argv
    if args[:1] == ["--tables"] and len(args) == 2:
        path = Path(args[1])
        path.write_text(fill_tables(path.read_text()))
        return
    if args:
        sys.exit(f"usage: {COMMAND}\n       {TABLES_COMMAND}")
    sys.stdout.write(render())


if __name__ == "__main__":
    main()
