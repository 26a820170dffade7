"""The package's imports flow one way (shared/DESIGN.md, "Architecture"), read statically from the source.

Every ``import`` counts, at module level, inside functions and under ``TYPE_CHECKING``: a lazy import hides a
cycle from the interpreter, not from the reader. ``from P import n`` is an edge to the module ``P.n`` when that
is a module, and always to ``P`` too (its ``__init__`` runs and is consulted), so a package whose
``__init__`` re-exports its modules must not be imported by name from inside itself.
"""

from __future__ import annotations

import ast
import functools
from collections.abc import Iterable, Mapping
from pathlib import Path

import sammil_deploy

PACKAGE_ROOT = Path(sammil_deploy.__file__).parent

# Layers of top-level units (a subpackage, or a module directly under sammil_deploy/), written down as the
# units each one may import. "<root>" is sammil_deploy/__init__.py (the version).
_BASE = {"<root>", "errors", "config", "io_atomic", "_deps", "environment", "registry"}
_MIDDLE = {"tissue", "patching", "segment", "features", "mil", "runtime", "export", "slide"}
ALLOWED_IMPORTS: dict[str, set[str]] = {
    "<root>": set(),
    "errors": set(),
    "config": {"errors"},
    "io_atomic": {"errors"},
    "_deps": {"errors"},
    "registry": {"errors"},
    "environment": {"<root>"},  # versions and machine facts: stdlib and the version only
    "slide": _BASE,
    "tissue": _BASE | {"slide"},
    "patching": _BASE | {"slide", "tissue"},
    "segment": _BASE | {"slide", "runtime"},
    "runtime": _BASE,  # loads artifacts only: never model-building code
    "features": _BASE | {"slide", "tissue", "patching", "runtime"},
    "mil": _BASE | {"features", "runtime"},
    "export": _BASE | {"slide", "segment", "features", "mil", "runtime"},
    "preprocessing": _BASE | {"tissue", "patching", "segment", "features"},
    "viz": _BASE | {"slide", "tissue", "patching"},
    "bundle": _BASE | {"preprocessing", "features", "mil", "runtime"},
    "pipeline": _BASE | _MIDDLE | {"preprocessing", "bundle", "viz"},
    "bench": _BASE | _MIDDLE | {"preprocessing", "bundle", "pipeline"},
    "demo": _BASE | _MIDDLE | {"preprocessing", "bundle", "viz", "pipeline", "bench"},
    "cli": _BASE | _MIDDLE | {"preprocessing", "bundle", "viz", "pipeline", "bench", "demo"},
    "__main__": {"cli"},
}
# Edges tolerated until another change lands; each names what removes it.
PENDING_EDGES: set[tuple[str, str]] = set()


def _module_names() -> dict[str, Path]:
    names = {}
    for path in PACKAGE_ROOT.rglob("*.py"):
        parts = ["sammil_deploy", *path.relative_to(PACKAGE_ROOT).with_suffix("").parts]
        if parts[-1] == "__init__":
            parts.pop()
        names[".".join(parts)] = path
    return names


def _imported(module: str, node: ast.Import | ast.ImportFrom, modules: dict[str, Path]) -> list[str]:
    """The package modules one import statement loads (see the module docstring)."""
    if isinstance(node, ast.Import):
        targets = [alias.name for alias in node.names]
    else:
        base = node.module or ""
        if node.level:
            package = module.split(".")
            if modules[module].name != "__init__.py":
                package.pop()
            package = package[: len(package) - node.level + 1]
            base = ".".join([*package, *([node.module] if node.module else [])])
        targets = [base, *(f"{base}.{alias.name}" for alias in node.names)]
    found = []
    for target in targets:
        while target and target not in modules and target.startswith("sammil_deploy."):
            target = target.rsplit(".", 1)[0]
        if target in modules:
            found.append(target)
    return found


@functools.cache
def import_graph() -> dict[str, frozenset[str]]:
    """Module → the package modules it imports anywhere in its source (read once per test session)."""
    modules = _module_names()
    graph: dict[str, set[str]] = {name: set() for name in modules}
    for name, path in modules.items():
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                graph[name].update(t for t in _imported(name, node, modules) if t != name)
    return {name: frozenset(targets) for name, targets in graph.items()}


def strongly_connected(graph: Mapping[str, Iterable[str]]) -> list[list[str]]:
    """Groups of nodes that reach each other (Tarjan, iterative), largest first; singletons left out."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    groups: list[list[str]] = []
    for start in sorted(graph):
        if start in index:
            continue
        work = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph.get(child, ())))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                group = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    group.append(member)
                    if member == node:
                        break
                if len(group) > 1:
                    groups.append(sorted(group))
    return sorted(groups, key=len, reverse=True)


def unit_of(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "<root>"


def test_graph_reader_sees_all_import_forms():
    graph = import_graph()
    assert "sammil_deploy.bundle.checks" in graph["sammil_deploy.bundle.load"]  # function level
    assert "sammil_deploy.errors" in graph["sammil_deploy.slide.base"]  # module level
    assert "sammil_deploy.cli" in graph["sammil_deploy.__main__"]


def test_cycle_finder_finds_cycles():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a", "d"}, "d": set(), "e": {"e2"}, "e2": {"e"}}
    assert strongly_connected(graph) == [["a", "b", "c"], ["e", "e2"]]


def test_no_module_cycles():
    cycles = strongly_connected(import_graph())
    assert not cycles, "modules that import each other (directly or around a loop):\n" + "\n".join(
        " <-> ".join(group) for group in cycles
    )


def test_layering_is_acyclic_and_complete():
    units = {unit_of(m) for m in import_graph()}
    assert units == set(ALLOWED_IMPORTS), "give every unit a layer in ALLOWED_IMPORTS"
    assert not strongly_connected({u: set(d) for u, d in ALLOWED_IMPORTS.items()})


def test_package_edges_follow_the_layering():
    wrong: dict[tuple[str, str], list[str]] = {}
    for module, imported in import_graph().items():
        for target in imported:
            edge = (unit_of(module), unit_of(target))
            if edge[0] != edge[1] and edge[1] not in ALLOWED_IMPORTS[edge[0]] and edge not in PENDING_EDGES:
                wrong.setdefault(edge, []).append(f"{module} -> {target}")
    assert not wrong, "imports against DESIGN.md's layering:\n" + "\n".join(
        f"{a} -> {b}: {', '.join(sorted(found))}" for (a, b), found in sorted(wrong.items())
    )


def test_pending_edges_still_exist():
    """A pending edge that is gone must leave the list, so it cannot come back unnoticed."""
    edges = {(unit_of(m), unit_of(t)) for m, targets in import_graph().items() for t in targets}
    assert edges >= PENDING_EDGES
