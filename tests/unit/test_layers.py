"""The package layering holds, and no two files import each other in a circle.

Layers, top to bottom: ``ops`` → ``training`` → ``clients`` → ``streams`` → ``state``
and ``encoder`` → ``core``. A lower layer that imports a higher one (say ``encoder``
reaching into ``streams`` for a helper) drags Kafka and Faust into code that must
run offline; a circle between two files makes their import order matter and their
code impossible to read alone. Both creep in through function-local imports, so every
``import`` statement counts wherever it sits (module level, a function, ``if
TYPE_CHECKING``), read with :mod:`ast` rather than by importing anything.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

ALLOWED: dict[str, frozenset[str]] = {
    "core": frozenset(),
    "encoder": frozenset({"core"}),
    "state": frozenset({"core", "encoder"}),
    "streams": frozenset({"core", "encoder", "state"}),
    "clients": frozenset({"core", "encoder"}),
    "training": frozenset({"core", "encoder", "state", "streams"}),
    "ops": frozenset({"core", "encoder", "state", "streams", "clients", "training"}),
}
"""Which of our other packages each package may import (its own files it always may)."""

@dataclass(frozen=True)
class Edge:
    """One import statement: ``source`` (a file's module) imports ``target`` (one of ours) at ``line``."""

    source: str
    target: str
    line: int

    def __str__(self) -> str:
        return f"{self.source} -> {self.target} ({module_path(self.source)}:{self.line})"


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def module_path(module: str) -> str:
    """The file of ``module`` relative to the repository (a package's ``__init__.py``)."""
    base = ROOT / Path(*module.split("."))
    path = base / "__init__.py" if base.is_dir() else base.with_suffix(".py")
    return str(path.relative_to(ROOT))


def modules(packages: tuple[str, ...]) -> dict[str, Path]:
    """Every module file of ``packages``, by dotted name."""
    return {module_name(p): p for pkg in packages for p in sorted((ROOT / pkg).rglob("*.py"))}


def imported_names(tree: ast.AST, module: str, is_package: bool) -> Iterator[tuple[str, int]]:
    """(dotted name, line) of everything ``module`` imports, anywhere in the file.

    ``from a import b`` yields ``a.b``: :func:`resolve` maps it to the submodule ``a.b``
    if there is one, else to ``a``. Relative imports are resolved against ``module``'s package.
    """
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, node.lineno
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                package = module.split(".") if is_package else module.split(".")[:-1]
                package = package[: len(package) - (node.level - 1)]
                base = ".".join([*package, base] if base else package)
            for alias in node.names:
                yield f"{base}.{alias.name}", node.lineno


def resolve(name: str, known: dict[str, Path]) -> str | None:
    """The module of ours that importing ``name`` loads: its longest known prefix (None: not ours)."""
    parts = name.split(".")
    for end in range(len(parts), 0, -1):
        candidate = ".".join(parts[:end])
        if candidate in known:
            return candidate
    return None


def import_graph(packages: tuple[str, ...]) -> list[Edge]:
    """Every import between two different files of ``packages`` (one edge per statement and target)."""
    known = modules(packages)
    edges: set[Edge] = set()
    for module, path in known.items():
        tree = ast.parse(path.read_text(), filename=str(path))
        for name, line in imported_names(tree, module, path.name == "__init__.py"):
            target = resolve(name, known)
            if target is not None and target != module:
                edges.add(Edge(module, target, line))
    return sorted(edges, key=lambda e: (e.source, e.target, e.line))


def layer_violations(edges: list[Edge]) -> list[Edge]:
    """Imports from a package to one it may not depend on (a higher layer, or clients → streams)."""
    out = []
    for edge in edges:
        src, dst = edge.source.split(".")[0], edge.target.split(".")[0]
        if src != dst and dst not in ALLOWED[src]:
            out.append(edge)
    return out


def cycles(edges: list[Edge]) -> list[list[str]]:
    """The strongly connected components of more than one file (Tarjan), each sorted."""
    graph: dict[str, set[str]] = {}
    for edge in edges:
        graph.setdefault(edge.source, set()).add(edge.target)
        graph.setdefault(edge.target, set())
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(graph[node]):
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

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return sorted(found)


def describe_cycle(component: list[str], edges: list[Edge]) -> str:
    """The component's files and the import statements that tie them together."""
    members = set(component)
    inside = [str(e) for e in edges if e.source in members and e.target in members]
    return "circle between " + ", ".join(component) + ":\n    " + "\n    ".join(inside)


PACKAGES = tuple(ALLOWED)


def test_no_import_from_a_lower_layer_to_a_higher_one() -> None:
    edges = import_graph(PACKAGES)
    assert len(edges) > 100, "the import walk found almost nothing: is ROOT right?"
    bad = layer_violations(edges)
    assert not bad, "imports against the layering (allowed: see ALLOWED):\n  " + "\n  ".join(map(str, bad))


def test_no_import_circle_between_files() -> None:
    edges = import_graph(PACKAGES)
    bad = cycles(edges)
    assert not bad, "import circles:\n  " + "\n  ".join(describe_cycle(c, edges) for c in bad)


def test_the_checks_catch_what_they_are_for() -> None:
    """A forbidden import and a planted circle are both found."""
    edges = import_graph(PACKAGES)
    planted = [Edge("encoder.model", "streams.worker", 1), Edge("core.settings", "ops.cli", 1)]
    assert layer_violations(planted) == planted
    assert layer_violations([Edge("clients.ranker", "streams.updater", 1)]), "clients may not use streams"
    loop = [Edge("core.metrics", "core.topics", 1), Edge("core.topics", "core.metrics", 2)]
    assert ["core.metrics", "core.topics"] in cycles(edges + loop)
    back = [Edge("streams.context", "streams.worker", 1)]  # the Worker type importing its builder back
    assert any({"streams.context", "streams.worker"} <= set(c) for c in cycles(edges + back))


def test_test_modules_import_no_other_test_module() -> None:
    """Shared helpers live in tests/support (or tests/corpus), so each test file stands alone."""
    tests = ROOT / "tests"
    bad = []
    for path in sorted(tests.rglob("*.py")):
        module = module_name(path)
        tree = ast.parse(path.read_text(), filename=str(path))
        for name, line in imported_names(tree, module, path.name == "__init__.py"):
            parts = name.split(".")
            if parts[0] == "tests" and any(p.startswith("test_") or p == "conftest" for p in parts[1:]):
                bad.append(f"{path.relative_to(ROOT)}:{line} imports {name}")
    assert not bad, "test modules importing test modules or conftest (move the helper to tests/support):\n  " + (
        "\n  ".join(bad)
    )
