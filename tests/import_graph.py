"""The package's import graph, read from its source (no import is executed).

Every `import`/`from … import` anywhere in a module counts, including the ones deferred into a function body
(a deferred import hides a circle from the interpreter but not from the reader), and so does every string that
names a module of the package ("concept_edit.methods.uce.fit", "concept_edit.worlds.shapes.judge:Class"): the
lazy re-exports and registries import what they name. What is found at run time by discovery (the worlds'
subpackages by `pkgutil`, entry points, module names built in f-strings) is, by design, not an edge: a plug-in
is imported by the registry that finds it without the registry naming it.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = "concept_edit"
SRC = Path(__file__).resolve().parents[1] / "src"


def module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted((SRC / PACKAGE).rglob("*.py"))}


def _resolve(known: dict[str, Path], name: str) -> str | None:
    """The package module that `name` is, or that holds it (for `from pkg.mod import attr`)."""
    while name:
        if name in known:
            return name
        name = name.rpartition(".")[0]
    return None


def imports(name: str, path: Path, known: dict[str, Path]) -> set[str]:
    is_package = path.name == "__init__.py"
    package = name if is_package else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                stem = ".".join(base + ([node.module] if node.module else []))
            else:
                stem = node.module or ""
            targets = [f"{stem}.{alias.name}" for alias in node.names] + [stem]
            # `from pkg import sub` names the submodule; `from pkg.mod import attr` only the module
            targets = [t for t in targets[:-1] if t in known] or [stem]
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value.startswith(PACKAGE + "."):
            named = node.value.partition(":")[0]
            targets = [named] if named in known else []
        else:
            continue
        for target in targets:
            resolved = _resolve(known, target)
            if resolved and resolved != name:
                found.add(resolved)
    return found


def graph() -> dict[str, set[str]]:
    known = modules()
    return {name: imports(name, path, known) for name, path in known.items()}


def ancestors(name: str) -> list[str]:
    parts = name.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts))]


def climbs(edges: dict[str, set[str]]) -> list[tuple[str, str]]:
    """Imports of a package that holds the importing module (its `__init__`, e.g. `from concept_edit import x`)."""
    return sorted((a, b) for a, targets in edges.items() for b in targets if b in ancestors(a))


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one member (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in edges.get(node, ()):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(edges):
        if node not in index:
            visit(node)
    return found


PLUGINS = f"{PACKAGE}.worlds"  # each world is a plug-in of its own, above the registry that finds it


def fold(name: str) -> str:
    """The part of the package a module belongs to: its top-level package (`concept_edit.evaluation`), or its
    world (`concept_edit.worlds.shapes`; the registry and `worlds.base` are `concept_edit.worlds`)."""
    parts = name.split(".")
    if name.startswith(PLUGINS + ".") and len(parts) > 2 and parts[2] != "base":
        return ".".join(parts[:3])
    return ".".join(parts[:2])


def package_edges(edges: dict[str, set[str]]) -> dict[str, set[str]]:
    """The graph with every module folded into its part of the package (`fold`)."""

    folded: dict[str, set[str]] = {}
    for a, targets in edges.items():
        if a == PACKAGE:  # the package root's __init__ re-exports; it sits above everything
            continue
        folded.setdefault(fold(a), set()).update(fold(b) for b in targets if fold(b) != fold(a))
    return folded
