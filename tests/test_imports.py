"""The package's import graph has no cycle, and every study loads without a fallback.

The graph is read from the source with ``ast``, so an import inside a function
counts as much as one at the top: a lazy import only hides a circle until the
day someone moves it up.
"""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = "cnnlab"
SRC = Path(__file__).resolve().parents[1] / "src" / PACKAGE


def _module_name(path: Path, root: Path) -> str:
    parts = (PACKAGE, *path.relative_to(root).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def package_modules(root: Path = SRC) -> dict[str, Path]:
    """Every module of the package by dotted name (a package is its ``__init__``)."""
    return {_module_name(p, root): p for p in sorted(root.rglob("*.py"))}


def _with_parents(name: str) -> list[str]:
    """Importing ``a.b.c`` runs ``a``, ``a.b`` and ``a.b.c``."""
    parts = name.split(".")
    return [".".join(parts[: i + 1]) for i in range(len(parts))]


def base_of(node: ast.ImportFrom, module: str, is_package: bool) -> str:
    if not node.level:
        return node.module or ""
    here = module.split(".") if is_package else module.split(".")[:-1]
    anchor = here[: len(here) - (node.level - 1)]
    return ".".join(anchor + ([node.module] if node.module else []))


def imported_modules(path: Path, module: str, known: set[str]) -> set[str]:
    """The package modules ``path`` imports, at any depth of its syntax tree."""
    tree = ast.parse(path.read_text(), filename=str(path))
    is_package = path.name == "__init__.py"
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                found.update(_with_parents(alias.name))
        elif isinstance(node, ast.ImportFrom):
            base = base_of(node, module, is_package)
            found.update(_with_parents(base))
            # ``from cnnlab.cifar import train``: ``train`` may be a submodule, not a name.
            found.update(f"{base}.{alias.name}" for alias in node.names)
    return {m for m in found if m in known and m != module}


def import_graph(root: Path = SRC) -> dict[str, set[str]]:
    modules = package_modules(root)
    known = set(modules)
    return {name: imported_modules(path, name, known) for name, path in modules.items()}


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One cycle per strongly connected component that has one (Tarjan), as ``[a, b, ..., a]``."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[set[str]] = []

    def connect(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                connect(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = set()
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.add(w)
                if w == v:
                    break
            if len(component) > 1 or v in graph.get(v, ()):
                components.append(component)

    for v in sorted(graph):
        if v not in index:
            connect(v)
    return [_cycle_in(graph, c) for c in components]


def _cycle_in(graph: dict[str, set[str]], component: set[str]) -> list[str]:
    """A shortest path from the component's first module back to itself (breadth-first)."""
    start = min(component)
    came_from: dict[str, str] = {}
    frontier = [start]
    while frontier:
        nxt = []
        for v in frontier:
            for w in sorted(graph[v] & component):
                if w == start:
                    path = [v]
                    while path[-1] != start:
                        path.append(came_from[path[-1]])
                    return [start, *reversed(path[:-1]), start] if len(path) > 1 else [start, start]
                if w not in came_from:
                    came_from[w] = v
                    nxt.append(w)
        frontier = nxt
    raise AssertionError(f"no cycle in {component}")  # pragma: no cover - components come from Tarjan


# --- the checker itself --------------------------------------------------------------


def _write_package(root: Path, files: dict[str, str]) -> Path:
    pkg = root / PACKAGE
    for rel, text in files.items():
        (pkg / rel).parent.mkdir(parents=True, exist_ok=True)
        (pkg / rel).write_text(text)
    return pkg


def test_graph_reads_every_kind_of_import(tmp_path):
    pkg = _write_package(tmp_path, {
        "__init__.py": "",
        "a.py": "from . import b\nfrom .sub import c\n",
        "b.py": "def f():\n    import cnnlab.sub.d\n",
        "sub/__init__.py": "from .c import x\n",
        "sub/c.py": "x = 1\nfrom .. import a as _a\n",
        "sub/d.py": "from cnnlab.sub import c\nfrom cnnlab import b, not_a_module\nimport os\n",
    })
    graph = import_graph(pkg)
    assert graph["cnnlab.a"] == {"cnnlab", "cnnlab.b", "cnnlab.sub", "cnnlab.sub.c"}
    assert graph["cnnlab.b"] == {"cnnlab", "cnnlab.sub", "cnnlab.sub.d"}  # inside a function
    assert graph["cnnlab.sub"] == {"cnnlab", "cnnlab.sub.c"}  # relative import from an __init__
    assert graph["cnnlab.sub.c"] == {"cnnlab", "cnnlab.a"}
    assert graph["cnnlab.sub.d"] == {"cnnlab", "cnnlab.sub", "cnnlab.sub.c", "cnnlab.b"}


def test_find_cycles_names_each_circle():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"d"}, "e": {"a"}, "f": set()}
    assert sorted(find_cycles(graph)) == [["a", "b", "c", "a"], ["d", "d"]]
    assert find_cycles({"a": {"b"}, "b": set()}) == []


# --- the package ---------------------------------------------------------------------


def test_no_import_cycles():
    graph = import_graph()
    assert len(graph) > 30 and "cnnlab.commands.main" in graph  # the walk found the package
    cycles = find_cycles(graph)
    assert not cycles, "import cycles:\n" + "\n".join("  " + " -> ".join(c) for c in cycles)


def test_help_lists_both_studies():
    # A fresh interpreter: nothing a previous test imported can stand in for a study.
    out = subprocess.run([sys.executable, "-m", PACKAGE, "--help"], capture_output=True, text=True, check=True,
                         env={**os.environ, "PYTHONPATH": str(SRC.parent)}).stdout
    assert "cifar" in out and "faces" in out
    for study in ("cifar", "faces"):
        r = subprocess.run([sys.executable, "-m", PACKAGE, study, "--help"], capture_output=True, text=True,
                           env={**os.environ, "PYTHONPATH": str(SRC.parent)})
        assert r.returncode == 0, r.stderr


@pytest.mark.parametrize("command", ["cifar", "faces", "serve"])
def test_a_command_module_stands_alone(command):
    """A command module is built from the shared options alone, never from the root that composes it."""
    graph = import_graph()
    assert "cnnlab.commands.main" not in graph[f"cnnlab.commands.{command}"]
