"""The package's floors: data flows up through them, and imports only ever point down.

Read from the source (ast), not by importing: a lazy import inside a function counts as much as
one at the top, and only `if TYPE_CHECKING:` imports (which never run) are left out.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "syncsvc"

# The floors in the order data flows through a run; a module may import its own floor or lower.
# The longest matching prefix wins (a module's dotted name, without "syncsvc.").
FLOORS: list[tuple[str, tuple[str, ...]]] = [
    (
        "ground: vocabularies, the resource catalog, settings, errors, logs, the budget",
        ("errors", "logs", "vocab", "catalog", "scope", "settings", "budget", "metrics"),
    ),
    ("transport: the Conference API client", ("cvent",)),
    ("parse: XML to typed records and COPY rows", ("parse", "normalize", "records")),
    ("store: stage, diff, apply, the change log's writes, runs", ("store",)),
    ("run: plan the units and drive them", ("units", "cascade", "scheduler", "lockinfo", "worker")),
    ("out: the change feed and the exports", ("changefeed", "feed", "export")),
    (
        "surfaces: commands, pages, health, docs",
        (
            "console",
            "status",
            "planview",
            "check",
            "demo",
            "serve",
            "web",
            "cliutil",
            "cli",
            "feed.cli",
            "export.cli",
            "docgen",
            "__main__",
        ),
    ),
]
# The simulator stands apart: a test double of the vendor that shares only the catalog.
APART = {"simulator": ("catalog", "simulator")}


def _name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts) or "__init__"


def _modules() -> dict[str, Path]:
    return {_name(p): p for p in PACKAGE.rglob("*.py")}


def _type_checking_lines(tree: ast.Module) -> set[int]:
    lines: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            for inner in node.body:
                lines.update(range(inner.lineno, (inner.end_lineno or inner.lineno) + 1))
    return lines


def _imports(name: str, path: Path, modules: dict[str, Path]) -> Iterator[tuple[str, str, int]]:
    """(imported module, imported name or "", line) for every syncsvc import that can run."""
    tree = ast.parse(path.read_text())
    skip = _type_checking_lines(tree)
    package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
    for node in ast.walk(tree):
        if getattr(node, "lineno", None) in skip:
            continue
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("syncsvc."):
                    yield alias.name.removeprefix("syncsvc."), "", node.lineno
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - node.level + 1] + (node.module or "").split(".")
                target = ".".join(p for p in base if p)
            elif node.module and (node.module == "syncsvc" or node.module.startswith("syncsvc.")):
                target = node.module.removeprefix("syncsvc").removeprefix(".")
            else:
                continue
            for alias in node.names:
                sub = f"{target}.{alias.name}" if target else alias.name
                if sub in modules:  # `from syncsvc.store import runs`: the module runs
                    yield sub, "", node.lineno
                else:
                    yield target or "__init__", alias.name, node.lineno


def _floor(module: str) -> int | None:
    """The floor of the longest prefix naming the module (`feed.cli` is a command, `feed` not)."""
    best: tuple[int, int] | None = None
    for index, (_, prefixes) in enumerate(FLOORS):
        for prefix in prefixes:
            named = module == prefix or module.startswith(prefix + ".")
            if named and (best is None or len(prefix) > best[0]):
                best = (len(prefix), index)
    return None if best is None else best[1]


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    return {
        name: {target for target, _, _ in _imports(name, path, modules) if target != name}
        for name, path in modules.items()
    }


def test_every_module_has_a_floor() -> None:
    homeless = [
        m
        for m in _modules()
        if m != "__init__" and _floor(m) is None and m.split(".")[0] not in APART
    ]
    assert homeless == [], "give these modules a floor in FLOORS"


def test_no_module_imports_another_modules_private_names() -> None:
    modules = _modules()
    private = [
        f"{name}:{line} imports {target}.{imported}"
        for name, path in modules.items()
        for target, imported, line in _imports(name, path, modules)
        if imported.startswith("_") and not imported.startswith("__") and target != name
    ]
    for name, path in modules.items():
        # `from syncsvc import cli` then `cli._settings`: the same reach, spelled otherwise.
        tree = ast.parse(path.read_text())
        aliases = {
            a.asname or a.name
            for node in ast.walk(tree)
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("syncsvc")
            for a in node.names
            if f"{node.module}.{a.name}".removeprefix("syncsvc.") in modules
        }
        private += [
            f"{name}:{node.lineno} reaches {node.value.id}.{node.attr}"
            for node in ast.walk(tree)
            if isinstance(node, ast.Attribute)
            and isinstance(node.value, ast.Name)
            and node.value.id in aliases
            and node.attr.startswith("_")
            and not node.attr.startswith("__")
        ]
    assert not private, "\n".join(private)


def test_the_catalog_stands_on_errors_and_logs_alone() -> None:
    modules = _modules()
    below = {t for t, _, _ in _imports("catalog", modules["catalog"], modules)}
    assert below <= {"errors", "logs"}


def test_imports_point_down_the_floors_never_up() -> None:
    modules = _modules()
    upward: list[str] = []
    for name, path in modules.items():
        top = name.split(".")[0]
        for target, _, line in _imports(name, path, modules):
            if top in APART:
                if target.split(".")[0] not in APART[top]:
                    upward.append(f"{name}:{line} -> {target} (the {top} stands apart)")
                continue
            mine, theirs = _floor(name), _floor(target)
            if mine is not None and theirs is not None and theirs > mine:
                found = f"{name}:{line} -> {target} ({FLOORS[theirs][0].split(':')[0]})"
                if found not in upward:
                    upward.append(found)
    assert not upward, "\n".join(upward)


def test_there_are_no_import_cycles() -> None:
    graph = _graph()
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []
    counter = 0

    def visit(node: str) -> None:  # Tarjan's strongly connected components
        nonlocal counter
        index[node] = low[node] = counter
        counter += 1
        stack.append(node)
        on_stack.add(node)
        for nxt in graph.get(node, ()):
            if nxt not in graph:
                continue
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                top = stack.pop()
                on_stack.discard(top)
                component.append(top)
                if top == node:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    assert not cycles, cycles


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("from syncsvc.store import db\n", [("store.db", "")]),
        ("from syncsvc.records import _NULL\n", [("records", "_NULL")]),
        ("def f():\n    from syncsvc import cli\n", [("cli", "")]),
        ("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from syncsvc import cli\n", []),
    ],
)
def test_the_import_reader_sees_what_python_would_run(
    tmp_path: Path, source: str, expected: list[tuple[str, str]]
) -> None:
    module = tmp_path / "m.py"
    module.write_text(source)
    found = [(t, n) for t, n, _ in _imports("m", module, {"store.db": module, "cli": module})]
    assert found == expected
