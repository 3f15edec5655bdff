"""The README's quick start and CI stay the same commands."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _quick_start() -> list[str]:
    readme = (ROOT / "README.md").read_text()
    block = re.search(r"<!-- quick-start -->\s*```(?:sh|bash)?\n(.*?)```", readme, re.S)
    assert block, "README.md lost its quick-start block"
    return [line for line in block.group(1).splitlines() if line.strip()]


def test_readme_quick_start_is_exactly_two_commands() -> None:
    assert len(_quick_start()) == 2


def test_ci_runs_the_readmes_test_command() -> None:
    test_command = _quick_start()[1]
    assert test_command in (ROOT / ".ci" / "run").read_text()
