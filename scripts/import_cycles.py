"""Find the import circles among the modules of ``src/personalign``.

    python scripts/import_cycles.py [--src src] [--type-checking] [--json]

Builds the graph "module A imports module B" from the source with :mod:`ast` (nothing is
imported): every ``import personalign.x`` and ``from personalign.x import y`` counts, at
module level or inside a function (a lazy import that only dodges a circle is still a
circle); relative imports are resolved. ``from package import name`` points at
``package.name`` when that is a module, else at ``package``. Imports under
``if TYPE_CHECKING:`` are left out (they never run) unless ``--type-checking`` is given.

Prints each strongly connected component of more than one module (a set of modules that
import each other, directly or round a loop) and exits 1 if there is any, 0 if none. With
``--json`` the last line is ``{"import_cycles": N, "modules_in_cycles": M}``.
"""

from __future__ import annotations

import argparse
import ast
import json
import sys
from pathlib import Path

PACKAGE = "personalign"


def module_names(src: Path) -> dict[str, Path]:
    """Every module of the package under ``src``, by dotted name (a package by its own)."""
    modules: dict[str, Path] = {}
    for path in sorted((src / PACKAGE).rglob("*.py")):
        parts = list(path.relative_to(src).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        modules[".".join(parts)] = path
    return modules


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _imports(tree: ast.AST, type_checking: bool) -> list[ast.Import | ast.ImportFrom]:
    """The import statements of ``tree``, at any depth (under ``if TYPE_CHECKING:`` only
    with ``type_checking``)."""
    found: list[ast.Import | ast.ImportFrom] = []

    def visit(node: ast.AST) -> None:
        if not type_checking and isinstance(node, ast.If) and _is_type_checking(node.test):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import | ast.ImportFrom):
            found.append(node)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    return found


def _resolve(module: str, is_package: bool, node: ast.ImportFrom) -> str | None:
    """The absolute name a ``from`` import names, relative ones resolved."""
    if node.level == 0:
        return node.module
    base = module.split(".")
    if not is_package:
        base = base[:-1]
    if node.level > 1:
        base = base[: len(base) - (node.level - 1)]
    if node.module:
        base = [*base, *node.module.split(".")]
    return ".".join(base) or None


def _known(name: str, modules: dict[str, Path]) -> str | None:
    """``name`` or the longest prefix of it that is a module of the package."""
    parts = name.split(".")
    while parts:
        candidate = ".".join(parts)
        if candidate in modules:
            return candidate
        parts.pop()
    return None


def import_graph(src: Path, type_checking: bool = False) -> dict[str, set[str]]:
    """Module name -> the package modules it imports (itself left out)."""
    modules = module_names(src)
    graph: dict[str, set[str]] = {name: set() for name in modules}
    for name, path in modules.items():
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        is_package = path.name == "__init__.py"
        for node in _imports(tree, type_checking):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            else:
                base = _resolve(name, is_package, node)
                if base is None:
                    continue
                for alias in node.names:
                    sub = f"{base}.{alias.name}"
                    targets.append(sub if sub in modules else base)
            for target in targets:
                if not (target == PACKAGE or target.startswith(PACKAGE + ".")):
                    continue
                known = _known(target, modules)
                if known is not None and known != name:
                    graph[name].add(known)
    return graph


def strongly_connected(graph: dict[str, set[str]]) -> list[list[str]]:
    """Tarjan's strongly connected components (iterative), each sorted, largest first."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    components: list[list[str]] = []
    counter = 0
    for root in sorted(graph):
        if root in index:
            continue
        work: list[tuple[str, list[str]]] = [(root, sorted(graph[root]))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, pending = work[-1]
            if pending:
                nxt = pending.pop(0)
                if nxt not in index:
                    index[nxt] = low[nxt] = counter
                    counter += 1
                    stack.append(nxt)
                    on_stack.add(nxt)
                    work.append((nxt, sorted(graph[nxt])))
                elif nxt in on_stack:
                    low[node] = min(low[node], index[nxt])
                continue
            work.pop()
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                components.append(sorted(component))
    return sorted(components, key=lambda c: (-len(c), c))


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module."""
    return [c for c in strongly_connected(graph) if len(c) > 1]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--src", type=Path, default=Path(__file__).resolve().parent.parent / "src")
    parser.add_argument(
        "--type-checking", action="store_true", help="count imports under TYPE_CHECKING too"
    )
    parser.add_argument("--json", action="store_true", help="end with a JSON summary line")
    args = parser.parse_args(argv)
    graph = import_graph(args.src, args.type_checking)
    found = cycles(graph)
    for number, component in enumerate(found, 1):
        members = set(component)
        print(f"circle {number} ({len(component)} modules):")
        for module in component:
            inside = sorted(graph[module] & members)
            print(f"  {module} -> {', '.join(inside)}")
    if not found:
        print("no import circles")
    if args.json:
        summary = {"import_cycles": len(found), "modules_in_cycles": sum(map(len, found))}
        print(json.dumps(summary))
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
