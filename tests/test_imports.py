"""Imports flow one way: no import loop, and no module imports from a floor above its own
(docs/architecture.md). Function-level imports count: deferring an import hides a loop
from Python, not from a reader."""
from __future__ import annotations

import ast
from pathlib import Path

from helpers import REPO

# Lowest first; a module may import its own floor and the floors below.
FLOORS = ("data_tools.common", "data_tools", "pretrain", "finetune", "launch")


def floor(module: str) -> int:
    return max(i for i, prefix in enumerate(FLOORS) if module == prefix or module.startswith(prefix + "."))


def module_names(root: Path) -> dict[str, Path]:
    names = {}
    for package in ("data_tools", "pretrain", "finetune", "launch"):
        for path in (root / package).rglob("*.py"):
            parts = path.relative_to(root).with_suffix("").parts
            names[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return names


def imported(module: str, path: Path, known: dict) -> set[str]:
    """The project's modules that `module` imports, anywhere in its body."""
    found = set()
    package = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package[:len(package) - node.level + 1] + ([base] if base else []))
            # `from package import module` runs the package's __init__, but that is how a
            # package is made, not a dependency of the module on its siblings' package
            for alias in node.names:
                found.add(f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base)
    return {name for name in found if name in known and name != module}


def graph(root: Path) -> dict[str, set[str]]:
    known = module_names(root)
    return {module: imported(module, path, known) for module, path in known.items()}


def loops(edges: dict[str, set[str]]) -> list[list[str]]:
    """Every strongly connected group of more than one module (Tarjan)."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in edges.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                group.append(w)
                if w == v:
                    break
            if len(group) > 1:
                found.append(sorted(group))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return found


def upward(edges: dict[str, set[str]]) -> list[str]:
    return sorted(f"{a} -> {b}" for a, targets in edges.items() for b in targets if floor(b) > floor(a))


def test_no_import_loop():
    assert loops(graph(REPO)) == []


def test_no_module_imports_from_a_floor_above_its_own():
    assert upward(graph(REPO)) == []


def test_the_checks_see_a_loop_and_an_upward_import(tmp_path):
    """The two checks above on a made-up tree that has both faults, including a loop closed
    by an import inside a function and one written relatively."""
    for package in ("data_tools", "pretrain", "finetune", "launch"):
        (tmp_path / package).mkdir()
        (tmp_path / package / "__init__.py").write_text("")
    (tmp_path / "data_tools" / "a.py").write_text("from data_tools import b\n")
    (tmp_path / "data_tools" / "b.py").write_text("def f():\n    from . import a\n")
    (tmp_path / "data_tools" / "c.py").write_text("import pretrain.d\n")
    (tmp_path / "pretrain" / "d.py").write_text("")
    edges = graph(tmp_path)
    assert loops(edges) == [["data_tools.a", "data_tools.b"]]
    assert upward(edges) == ["data_tools.c -> pretrain.d"]
