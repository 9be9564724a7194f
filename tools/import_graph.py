"""The import graph of the ``ecnreid`` and ``camstyle`` packages, and its cycles.

Two graphs are read from the source with ``ast`` (nothing is imported):

- modules: ``a.b.c`` imports ``a.b.d`` (module-level and function-level imports alike, since a lazy import is
  still a dependency; imports under ``if TYPE_CHECKING:`` are left out, as they never run);
- packages: the same edges with every module collapsed to the package that holds it (``ecnreid.engine.loop``
  counts as ``ecnreid.engine``; a top-level module such as ``ecnreid.config`` stays itself), so that two
  sub-packages which import each other through different modules show as a cycle too.

Usage: ``python tools/import_graph.py [ROOT]`` prints each cycle (one strongly connected component and one
closed path through it) and exits 1 when there is any.
"""

from __future__ import annotations

import ast
import sys
from collections.abc import Iterable
from pathlib import Path

PACKAGES = ("ecnreid", "camstyle")


def module_files(root: Path, packages: Iterable[str] = PACKAGES) -> dict[str, Path]:
    """Dotted module name → file, for every ``.py`` file under the packages (``__init__`` names its package)."""
    modules: dict[str, Path] = {}
    for package in packages:
        for path in sorted((root / package).rglob("*.py")):
            parts = list(path.relative_to(root).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            modules[".".join(parts)] = path
    return modules


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _imports(tree: ast.AST) -> Iterable[ast.Import | ast.ImportFrom]:
    """Every import statement except those in the body of an ``if TYPE_CHECKING:``."""
    stack = [tree]
    while stack:
        node = stack.pop()
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            stack.extend(node.orelse)
            continue
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node
        stack.extend(ast.iter_child_nodes(node))


def _resolve(name: str, modules: dict[str, Path]) -> str | None:
    """The longest known module that ``name`` starts with (``a.b.func`` → ``a.b``), or None if foreign."""
    parts = name.split(".")
    while parts:
        candidate = ".".join(parts)
        if candidate in modules:
            return candidate
        parts.pop()
    return None


def module_graph(root: Path) -> dict[str, set[str]]:
    """Module → the package modules it imports."""
    modules = module_files(root)
    graph: dict[str, set[str]] = {name: set() for name in modules}
    for name, path in modules.items():
        is_package = path.name == "__init__.py"
        for node in _imports(ast.parse(path.read_text(), filename=str(path))):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            else:
                base = node.module or ""
                if node.level:
                    anchor = name.split(".") if is_package else name.split(".")[:-1]
                    anchor = anchor[: len(anchor) - (node.level - 1)]
                    base = ".".join([*anchor, base] if base else anchor)
                targets = [f"{base}.{alias.name}" for alias in node.names]
            for target in targets:
                resolved = _resolve(target, modules)
                if resolved is not None and resolved != name:
                    graph[name].add(resolved)
    return graph


def package_of(module: str, graph: dict[str, set[str]]) -> str:
    """The package that holds ``module``: a package itself, else its parent; modules directly in a top-level
    package (``ecnreid.config``) count as packages of their own."""
    if any(other.startswith(module + ".") for other in graph):
        return module
    parent = module.rpartition(".")[0]
    return parent if "." in parent else module


def package_graph(graph: dict[str, set[str]]) -> dict[str, set[str]]:
    """The module graph with each module replaced by its package (self-edges dropped)."""
    packages: dict[str, set[str]] = {}
    for module, targets in graph.items():
        source = package_of(module, graph)
        edges = packages.setdefault(source, set())
        for target in targets:
            collapsed = package_of(target, graph)
            packages.setdefault(collapsed, set())
            if collapsed != source:
                edges.add(collapsed)
    return packages


def strongly_connected(graph: dict[str, set[str]]) -> list[list[str]]:
    """The components of more than one node (Tarjan's algorithm, iterative), each sorted, sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    components: list[list[str]] = []
    counter = 0
    for start in sorted(graph):
        if start in index:
            continue
        work = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = counter
        counter += 1
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            advanced = False
            for child in children:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                    advanced = True
                    break
                if child in on_stack:
                    low[node] = min(low[node], index[child])
            if advanced:
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    components.append(sorted(component))
    return sorted(components)


def closed_path(graph: dict[str, set[str]], component: list[str]) -> list[str]:
    """One shortest cycle through the component's first node (breadth-first inside the component)."""
    members = set(component)
    start = component[0]
    parents: dict[str, str] = {}
    frontier = [start]
    while frontier:
        following = []
        for node in frontier:
            for child in sorted(graph[node] & members):
                if child == start:
                    path = [node]
                    while path[-1] != start:
                        path.append(parents[path[-1]])
                    return [*reversed(path), start]
                if child not in parents:
                    parents[child] = node
                    following.append(child)
        frontier = following
    return [start]


def cycles(root: Path) -> dict[str, list[list[str]]]:
    """``{"modules": [...], "packages": [...]}``: one closed path per strongly connected component."""
    modules = module_graph(root)
    packages = package_graph(modules)
    return {
        kind: [closed_path(graph, component) for component in strongly_connected(graph)]
        for kind, graph in (("modules", modules), ("packages", packages))
    }


def main(argv: list[str]) -> int:
    root = Path(argv[0]) if argv else Path(__file__).resolve().parent.parent
    found = cycles(root)
    for kind, paths in found.items():
        print(f"{kind}: {len(paths)} cycle(s)")
        for path in paths:
            print("  " + " -> ".join(path))
    return 1 if any(found.values()) else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
