"""Generates docs/configuration.md from the Settings dataclass, so the reference cannot drift.

Regenerate with `python -m syncsvc.docgen > docs/configuration.md`; a test fails when the
committed file differs from what this prints.
"""

from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path
from typing import Any

from syncsvc.settings import ENV_PREFIX, Settings

COMMAND = "python -m syncsvc.docgen > docs/configuration.md"

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
    for f in dataclasses.fields(settings):
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
    for f in dataclasses.fields(settings):
        env = f"`{ENV_PREFIX}{f.name.upper()}`"
        confidential = "no"
        if f.metadata["secret"]:
            env += f"<br>`{ENV_PREFIX}{f.name.upper()}_FILE`"
            confidential = "**yes**"
        rows.append(
            f"| `{f.name}` | {env} | {_kind(f)} | {_default(f)} | {confidential} | "
            f"{_cell(f.metadata['doc'])} |"
        )
    secrets = ", ".join(f"`{f.name}`" for f in dataclasses.fields(settings) if f.metadata["secret"])
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
    ]
    return HEADER + "\n".join(body)


def main() -> None:
    sys.stdout.write(render())


if __name__ == "__main__":
    main()
