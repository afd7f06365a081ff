"""The project's modules all import, and no two of them import each other, even indirectly.

The graph is built from the ``import`` statements of every module under ``codec/``, ``models/``,
``bitstream/`` and ``eval/`` (and ``cli.py`` and the root ``__init__.py``), all under the
import root ``nicodec``, read from their syntax trees, not by running them.
Function-local imports count as much as top-level ones: a cycle through a deferred import still
ties the modules together (the VQ family's ``codec -> ladder -> train -> prior_train -> codec``
circle was made of them). An import of ``a.b.c`` also counts as an import of the packages ``a``
and ``a.b``, whose ``__init__`` runs first (except the importer's own packages, which are
already running). Modules loaded by name at run time (the registry's
``ModelInfo.module``) are not edges: they are checked by loading every shipped model elsewhere.
"""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("codec", "models", "bitstream", "eval")


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(("nicodec", *(parts[:-1] if parts[-1] == "__init__" else parts)))


MODULES = {_module_name(p): p
           for package in PACKAGES for p in sorted((ROOT / package).rglob("*.py"))}
MODULES["nicodec.cli"] = ROOT / "cli.py"
MODULES["nicodec"] = ROOT / "__init__.py"


def _imports(name: str, path: Path) -> set[str]:
    """The project modules that ``name`` imports anywhere in its file (and their packages)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    parts = name.split(".")
    own = {".".join(parts[:i]) for i in range(1, len(parts) + 1)}  # itself, its packages
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: from the package, up level - 1
                parent = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(parent + ([base] if base else []))
            # ``from a import b`` imports the module a.b when there is one, else a name of a
            targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in MODULES else base
                       for alias in node.names]
        else:
            continue
        for target in targets:
            parts = target.split(".")
            found.update(".".join(parts[:i]) for i in range(1, len(parts) + 1)
                         if ".".join(parts[:i]) in MODULES)
    return found - own


GRAPH = {name: _imports(name, path) for name, path in MODULES.items()}


def _cycle() -> list[str] | None:
    """One import cycle among the project modules, as a closed path, or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(GRAPH[node]):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        path.pop()
        state[node] = 2
        return None

    for node in sorted(GRAPH):
        if node not in state and (found := visit(node)):
            return found
    return None


def test_no_import_cycle():
    cycle = _cycle()
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


@pytest.mark.parametrize("name", sorted(MODULES))
def test_every_module_imports(name):
    importlib.import_module(name)
