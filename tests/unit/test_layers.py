"""The package's imports follow the data flow: no private names across modules, no stage
importing one it feeds, no cycles. Read from the source (ast), so nothing is imported here."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "syncsvc"


def _modules() -> dict[str, ast.Module]:
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = ast.parse(path.read_text(), str(path))
    return out


MODULES = _modules()


def _imports(tree: ast.Module, *, top_level: bool) -> list[tuple[str, list[str]]]:
    """(module, names) per import of a syncsvc module; `top_level`: those run at import time
    (a function's own import runs later, and cannot make a cycle at import)."""
    nodes = tree.body if top_level else list(ast.walk(tree))
    found = []
    for node in nodes:
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append((node.module, [a.name for a in node.names]))
        elif isinstance(node, ast.Import):
            found += [(a.name, []) for a in node.names]
    return [(m, names) for m, names in found if m == "syncsvc" or m.startswith("syncsvc.")]


def _targets(module: str, names: list[str]) -> list[str]:
    # `from syncsvc.cvent import client` names a module, `from syncsvc.catalog import X` not.
    subs = [f"{module}.{n}" for n in names if f"{module}.{n}" in MODULES]
    return subs or [module]


def test_no_module_imports_another_modules_private_names() -> None:
    private = [
        f"{name}: from {module} import {n}"
        for name, tree in MODULES.items()
        for module, names in _imports(tree, top_level=False)
        for n in names
        if n.startswith("_") and not n.startswith("__")
    ]
    for name, tree in MODULES.items():
        # `from syncsvc import cli` then `cli._settings`: the same reach, spelled otherwise.
        aliases = {
            a.asname or a.name
            for node in ast.walk(tree)
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("syncsvc")
            for a in node.names
            if f"{node.module}.{a.name}" in MODULES
        }
        private += [
            f"{name}: {node.value.id}.{node.attr}"
            for node in ast.walk(tree)
            if isinstance(node, ast.Attribute)
            and isinstance(node.value, ast.Name)
            and node.value.id in aliases
            and node.attr.startswith("_")
            and not node.attr.startswith("__")
        ]
    assert private == []


# stage -> the modules it must not import (directly or through its own modules)
FORBIDDEN = {
    "syncsvc.catalog": ("syncsvc.",),  # the ground floor (but errors, below)
    "syncsvc.cvent": ("syncsvc.parse", "syncsvc.normalize", "syncsvc.store", "syncsvc.scheduler"),
    "syncsvc.parse": ("syncsvc.cvent.client", "syncsvc.store", "syncsvc.scheduler"),
    "syncsvc.normalize": ("syncsvc.cvent", "syncsvc.parse", "syncsvc.store", "syncsvc.scheduler"),
    "syncsvc.records": ("syncsvc.cvent", "syncsvc.parse", "syncsvc.store", "syncsvc.scheduler"),
}
ALLOWED = {"syncsvc.catalog": ("syncsvc.errors", "syncsvc.logs")}


@pytest.mark.parametrize("stage", sorted(FORBIDDEN))
def test_a_stage_imports_nothing_downstream_of_it(stage: str) -> None:
    wrong = []
    for name, tree in MODULES.items():
        if name != stage and not name.startswith(stage + "."):
            continue
        for module, names in _imports(tree, top_level=False):
            for target in _targets(module, names):
                if target.startswith(ALLOWED.get(stage, ("\0",))):
                    continue
                if target.startswith(FORBIDDEN[stage]) and not target.startswith(stage):
                    wrong.append(f"{name} imports {target}")
    assert wrong == []


def test_no_import_cycles() -> None:
    graph = {
        name: {
            t
            for module, names in _imports(tree, top_level=True)
            for t in _targets(module, names)
            if t in MODULES and t != name
        }
        for name, tree in MODULES.items()
    }
    done: set[str] = set()
    cycles = []

    def visit(name: str, path: list[str]) -> None:
        if name in path:
            cycles.append(" -> ".join([*path[path.index(name) :], name]))
            return
        if name in done:
            return
        for nxt in sorted(graph[name]):
            visit(nxt, [*path, name])
        done.add(name)

    for name in sorted(graph):
        visit(name, [])
    assert cycles == []
