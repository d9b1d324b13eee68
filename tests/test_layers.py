"""The package reads in layers, each standing on those below it, and no module uses another's private names.

From the bottom: the foundation (errors, config, files, runtime, run folders);
the core stages (engine, models, data, metrics, losses, reports, figures); each
study's training; the inference layer that opens and uses a trained run; each
study's evaluation and analysis of a trained run; the services on top of
inference (the Python API, ``cnnlab serve``, export); the command line. An
import that points up is listed here with the reason it stays, or the test
fails naming it. Read from the source with ``ast``, as tests/test_imports.py
reads the graph: an import inside a function counts.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from tests.test_imports import PACKAGE, SRC, base_of, package_modules

# Lowest first. A module belongs to the layer of the longest name here that is it or a package above it.
LAYERS: list[tuple[str, tuple[str, ...]]] = [
    ("foundation", ("cnnlab", "cnnlab.errors", "cnnlab.config", "cnnlab.recipes", "cnnlab.files", "cnnlab.runtime",
                    "cnnlab.run")),
    ("core", ("cnnlab.engine", "cnnlab.models", "cnnlab.data", "cnnlab.metrics", "cnnlab.losses", "cnnlab.report",
              "cnnlab.viz")),
    ("study training", ("cnnlab.cifar", "cnnlab.faces", "cnnlab.search")),
    ("inference", ("cnnlab.inference",)),
    ("study analysis", ("cnnlab.cifar.evaluate", "cnnlab.cifar.compare", "cnnlab.faces.evaluate",
                        "cnnlab.faces.analyze", "cnnlab.faces.compare")),
    ("services", ("cnnlab.api", "cnnlab.serve", "cnnlab.export")),
    ("commands", ("cnnlab.commands", "cnnlab.__main__")),
]

# The imports that point up, each with the reason it stays.
UPWARD_ALLOWED = {
    ("cnnlab.config", "cnnlab.models.blocks"):
        "a CIFAR config checks its block spec with the registry that defines the blocks",
    ("cnnlab.config", "cnnlab.models.basecnn"):
        "a CIFAR config refuses a width below the one at which the network still scales, which the network defines",
    ("cnnlab.config", "cnnlab.models.siamese"):
        "a face config checks its backbone against the backbones the models know",
}


def layer_of(module: str) -> int:
    """The index in :data:`LAYERS` of ``module``'s layer; a KeyError for a module no layer holds."""
    best, index = "", None
    for i, (_, names) in enumerate(LAYERS):
        for name in names:
            # The root package is a layer's module only as itself: everything lies under it.
            inside = module == name or (name != PACKAGE and module.startswith(name + "."))
            if inside and len(name) > len(best):
                best, index = name, i
    if index is None:
        raise KeyError(module)
    return index


def imports_of(path: Path, module: str, known: set[str]) -> list[tuple[str, int]]:
    """The package modules ``path`` imports (the module each statement names, not the packages above it), with
    the line of the statement."""
    tree = ast.parse(path.read_text(), filename=str(path))
    is_package = path.name == "__init__.py"
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(alias.name, node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = base_of(node, module, is_package)
            # ``from cnnlab.cifar import train``: a submodule; ``from cnnlab.data.images import decode_rgb``: a name.
            found += [(f"{base}.{a.name}" if f"{base}.{a.name}" in known else base, node.lineno) for a in node.names]
    return [(m, line) for m, line in found if m in known and m != module]


def upward_imports(root: Path = SRC) -> dict[tuple[str, str], str]:
    """Every import from a module up to a module of a higher layer: (importer, imported) -> where it is."""
    modules = package_modules(root)
    known = set(modules)
    out = {}
    for name, path in modules.items():
        for target, line in imports_of(path, name, known):
            if layer_of(target) > layer_of(name):
                out[(name, target)] = f"{path.relative_to(root.parent)}:{line}"
    return out


def test_every_module_has_a_layer():
    unplaced = [m for m in package_modules() if not _placed(m)]
    assert not unplaced, f"modules in no layer (add them to LAYERS): {unplaced}"


def _placed(module: str) -> bool:
    try:
        layer_of(module)
    except KeyError:
        return False
    return True


def test_imports_point_down_but_for_the_few_listed():
    up = upward_imports()
    unexpected = {k: v for k, v in up.items() if k not in UPWARD_ALLOWED}
    assert not unexpected, "imports pointing up a layer:\n" + "\n".join(
        f"  {v}: {a} ({LAYERS[layer_of(a)][0]}) imports {b} ({LAYERS[layer_of(b)][0]})"
        for (a, b), v in sorted(unexpected.items()))
    gone = set(UPWARD_ALLOWED) - set(up)
    assert not gone, f"no longer imported upward (drop them from UPWARD_ALLOWED): {sorted(gone)}"
    assert len(UPWARD_ALLOWED) <= 5


def test_the_commands_sit_on_top():
    assert layer_of("cnnlab.commands.faces") == len(LAYERS) - 1
    assert layer_of("cnnlab.inference.faces") < layer_of("cnnlab.serve.faces") < layer_of("cnnlab.commands.serve")
    assert layer_of("cnnlab.faces.train") < layer_of("cnnlab.inference.runs") < layer_of("cnnlab.faces.evaluate")


# --- private names -------------------------------------------------------------------


def _is_private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def _own_names(tree: ast.AST) -> set[str]:
    """The private names a module defines: functions, classes, assigned names and attributes it stores."""
    own = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            own.add(node.name)
        elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
            own.add(node.id)
        elif isinstance(node, ast.Attribute) and isinstance(node.ctx, (ast.Store, ast.Del)):
            own.add(node.attr)
    return {n for n in own if _is_private(n)}


def _foreign_names(tree: ast.AST) -> set[str]:
    """Names bound to other packages' modules and objects (``argparse``, ``torch``): their private names are
    their own business."""
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update((a.asname or a.name).split(".")[0] for a in node.names if not a.name.startswith(PACKAGE))
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module or "").split(".")[0] != PACKAGE:
            names.update(a.asname or a.name for a in node.names)
    return names


def _root(node: ast.expr) -> str | None:
    """The name an attribute chain starts from (``a`` of ``a.b._c``), or None."""
    while isinstance(node, ast.Attribute):
        node = node.value
    return node.id if isinstance(node, ast.Name) else None


def private_uses(path: Path, module: str) -> list[str]:
    """Where the module at ``path`` uses a private name of another module: imports one (``from cnnlab.x import
    _y``), or reads or sets a private attribute of another object that it does not define itself
    (``cnnlab.x._y``, ``obj._y``; ``self._y`` is the object's own)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    own, foreign = _own_names(tree), _foreign_names(tree)
    found: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            base = base_of(node, module, path.name == "__init__.py")
            if base.split(".")[0] == PACKAGE and base != module:
                hidden = any(_is_private(part) for part in base.split("."))
                found += [(node.lineno, f"from {base} import {a.name}") for a in node.names
                          if hidden or _is_private(a.name)]
        elif isinstance(node, ast.Import):
            found += [(node.lineno, f"import {a.name}") for a in node.names
                      if any(_is_private(part) for part in a.name.split("."))]
        elif isinstance(node, ast.Attribute) and _is_private(node.attr) and node.attr not in own \
                and _root(node) not in foreign | {"self", "cls"}:  # an object's own attributes, inherited too
            found.append((node.lineno, ast.unparse(node)))
    return [f"line {line}: {text}" for line, text in sorted(found)]


def test_the_checker_finds_private_uses(tmp_path):
    (tmp_path / "m.py").write_text(
        "from cnnlab.faces import _gallery\n"          # another module's private name
        "import argparse\n"
        "import cnnlab.data.images\n"
        "from ._local import x\n"                       # a private module
        "class A:\n"
        "    def __init__(self, fv):\n"
        "        self._mine = 1\n"                      # its own: fine
        "        self._mine += fv._run.x\n"             # another object's
        "        cnnlab.data.images._to_rgb(None)\n"    # another module's, by attribute
        "        argparse._SubParsersAction\n"         # another package's: its own business
        "def _helper():\n"
        "    return _helper\n")
    found = private_uses(tmp_path / "m.py", "cnnlab.m")
    assert found == ["line 1: from cnnlab.faces import _gallery", "line 4: from cnnlab._local import x",
                     "line 8: fv._run", "line 9: cnnlab.data.images._to_rgb"], found


@pytest.mark.parametrize("module", sorted(package_modules()))
def test_no_module_uses_another_modules_private_names(module):
    found = private_uses(package_modules()[module], module)
    assert not found, f"{module} uses private names of other modules:\n  " + "\n  ".join(found)
