"""The package's import graph has no cycle.

The graph is built from the sources (AST), not by importing: one node per module of
``bioinstruct`` (a package is its ``__init__``), one edge per import statement that names a
module of the package, absolute or relative (``from . import x`` points at the submodule x
when there is one, else at the package). Imports inside functions count too: a deferred
import that closes a cycle only defers the failure, and two modules that need each other are
one module in two files. Imports under ``if TYPE_CHECKING:`` do not count (they never run).
Importing ``a.b.c`` also runs ``a/__init__`` and ``a/b/__init__``; those implicit edges are
left out, since a package's ``__init__`` importing its own submodules is the usual layout.
"""

from __future__ import annotations

import ast
import graphlib
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit

PACKAGE = Path(__file__).resolve().parent.parent / "bioinstruct"


def modules() -> dict[str, Path]:
    out = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return out


def _type_checking_blocks(tree: ast.AST) -> set[int]:
    skipped = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            skipped |= {id(n) for stmt in node.body for n in ast.walk(stmt)}
    return skipped


def imports_of(name: str, path: Path, known: set[str]) -> set[str]:
    """The package modules that module ``name`` imports."""
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    skipped = _type_checking_blocks(tree)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[:len(anchor) - (node.level - 1)]
                base = ".".join(anchor + ([base] if base else []))
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in node.names]
        else:
            continue
        for target in targets:
            while target and target not in known:  # bioinstruct.x.function -> bioinstruct.x
                target = target.rpartition(".")[0]
            if target and target != name:
                found.add(target)
    return found


def import_graph() -> dict[str, set[str]]:
    mods = modules()
    return {name: imports_of(name, path, set(mods)) for name, path in mods.items()}


def test_the_graph_sees_relative_and_deferred_imports():
    graph = import_graph()
    assert "bioinstruct.errors" in graph["bioinstruct.cli"]  # from .errors import UserError
    assert "bioinstruct.stages.stage" in graph["bioinstruct.stages.pipeline"]  # from .stage import Stage
    assert "bioinstruct.modeling.distributed" in graph["bioinstruct.stages.train"]  # inside run(): from .distributed import ...
    assert len(graph) > 30


def test_the_package_has_no_import_cycle():
    try:
        graphlib.TopologicalSorter(import_graph()).prepare()
    except graphlib.CycleError as e:
        pytest.fail(f"import cycle: {' -> '.join(e.args[1])}")
