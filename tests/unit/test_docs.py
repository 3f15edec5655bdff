"""The configuration reference is what its command prints; the operations page covers every run
status and exit code; every SYNCSVC_* name and local link in the docs is real."""

from __future__ import annotations

import dataclasses
import re
import subprocess
import sys
from pathlib import Path

import pytest

from syncsvc import docgen
from syncsvc.settings import ENV_PREFIX, Settings, setting_fields
from syncsvc.store.schema import RUN_STATUSES
from tests.unit.test_deploy import unknown_setting_names

ROOT = Path(__file__).resolve().parents[2]
CONFIGURATION = ROOT / "docs" / "configuration.md"
OPERATIONS = ROOT / "docs" / "operations.md"
README = ROOT / "README.md"


def test_configuration_reference_is_exactly_what_the_command_prints() -> None:
    # The command the file's header names, run as a user would; a stale file fails here.
    assert docgen.COMMAND in CONFIGURATION.read_text()
    proc = subprocess.run(
        [sys.executable, "-m", "syncsvc.docgen"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == CONFIGURATION.read_text(), (
        f"docs/configuration.md is stale: run `{docgen.COMMAND}`"
    )


def test_the_staleness_check_fails_when_a_setting_is_added() -> None:
    extended = dataclasses.make_dataclass(
        "Extended",
        [("new_knob", int, docgen_field(3, "A knob added after the docs were generated."))],
        bases=(Settings,),
        frozen=True,
    )
    rendered = docgen.render(extended)
    assert rendered != CONFIGURATION.read_text()
    assert "`SYNCSVC_NEW_KNOB`" in rendered


def docgen_field(default: int, doc: str) -> dataclasses.Field[int]:
    field: dataclasses.Field[int] = dataclasses.field(
        default=default, metadata={"doc": doc, "secret": False}
    )
    return field


def _reference_rows() -> dict[str, list[str]]:
    rows = {}
    for line in CONFIGURATION.read_text().splitlines():
        if m := re.match(r"^\| `([a-z_]+)` \|(.*)\|$", line):
            rows[m.group(1)] = [c.strip() for c in m.group(2).split(" | ")]
    return rows


def test_every_setting_is_listed_with_its_variable_toml_key_default_and_secrecy() -> None:
    rows = _reference_rows()
    fields = setting_fields(Settings)
    assert list(rows) == [f.name for f in fields]
    for f in fields:
        env, _kind, default, secret, doc = rows[f.name]
        assert f"`{ENV_PREFIX}{f.name.upper()}`" in env
        assert (f"`{ENV_PREFIX}{f.name.upper()}_FILE`" in env) == f.metadata["secret"]
        assert (secret == "**yes**") == f.metadata["secret"]
        assert doc == f.metadata["doc"]
        if f.default is None:
            assert default == "unset"


def test_the_example_toml_file_loads_to_the_defaults(tmp_path: Path) -> None:
    block = re.search(r"```toml\n(.*?)```", CONFIGURATION.read_text(), re.S)
    assert block
    config = tmp_path / "syncsvc.toml"
    config.write_text(block.group(1))
    env = {"HOME": str(tmp_path)}
    assert Settings.load(env=env, config_file=config) == Settings.load(env=env)


def test_the_operations_tables_are_exactly_what_the_command_writes(tmp_path: Path) -> None:
    text = OPERATIONS.read_text()
    assert docgen.TABLES_COMMAND in text
    assert docgen.table_names(text) == ["exit-codes", "run-statuses", "unit-statuses", "ops"]
    # The command the markers name, run as a user would, on a copy: a stale table fails here.
    copy = tmp_path / "operations.md"
    copy.write_text(text)
    proc = subprocess.run(
        [sys.executable, "-m", "syncsvc.docgen", "--tables", str(copy)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert copy.read_text() == text, f"docs/operations.md is stale: run `{docgen.TABLES_COMMAND}`"


def test_a_stale_table_is_rewritten_from_the_enums() -> None:
    text = OPERATIONS.read_text()
    stale = text.replace("| `abandoned` | left open by a run whose process died", "| `gone` | x", 1)
    assert stale != text
    assert docgen.fill_tables(stale) == text


@pytest.mark.parametrize("status", RUN_STATUSES)
def test_operations_explains_every_run_status(status: str) -> None:
    assert re.search(rf"^\| `{status}` \| \S", OPERATIONS.read_text(), re.M)


@pytest.mark.parametrize("code", range(6))
def test_operations_explains_every_exit_code_of_run(code: int) -> None:
    assert re.search(rf"^\| {code} \| \S", OPERATIONS.read_text(), re.M)


@pytest.mark.parametrize(
    "topic",
    [
        r"\| 101 \|",  # bad token
        r"\| 102 \|.*egress address",  # IP not allow-listed, and which address
        r"--override-hold",
        r"### A partial run",
        r"seq > :last_seen_seq",
        r"ORDER BY seq",
        r"commit\s+order",
        r"syncsvc changes --since",
        r"## Upgrading",
        r"Migrations first",
    ],
)
def test_operations_covers_what_the_operator_needs(topic: str) -> None:
    assert re.search(topic, OPERATIONS.read_text())


def test_every_syncsvc_variable_in_the_docs_is_a_setting() -> None:
    text = "\n".join(p.read_text() for p in (CONFIGURATION, OPERATIONS, README))
    names = set(re.findall(r"\bSYNCSVC_[A-Z0-9_]*[A-Z0-9]\b", text))
    assert "SYNCSVC_DELETE_HOLD_RATIO" in names
    assert unknown_setting_names(names) == set()


def test_readme_links_the_operations_docs_and_every_local_link_resolves() -> None:
    readme = README.read_text()
    operations = readme[readme.index("## Operations") :]
    assert "(docs/operations.md)" in operations
    assert "(docs/configuration.md)" in operations
    for doc in (README, OPERATIONS, CONFIGURATION):
        for target in re.findall(r"\]\(([^)#:]+)\)", doc.read_text()):
            assert (doc.parent / target).exists(), f"{doc.name} links to missing {target}"
