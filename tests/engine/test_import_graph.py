"""The engine's modules import each other without a circle, and so do its sub-packages.

The graph is read from the source (AST), not by importing, and counted two ways:

- at load time: an edge is an import executed when a module loads, i.e. at module level.
  Imports inside functions (deferred until called) and under ``if TYPE_CHECKING:`` (never
  executed) are left out.
- every import, as import-linter and grimp count them: any import statement anywhere in the
  module, function bodies and ``TYPE_CHECKING`` blocks included. A deferred import still
  makes the module depend on its target; a circle of them is a circle in the design.

Importing ``a.b.c`` also loads the packages ``a.b`` and ``a``, so an edge to a module adds
edges to its enclosing packages' ``__init__`` (except the packages the importing module is
itself in: they are loading already). Counting every import, ``from pkg import name`` also
counts ``pkg`` itself, even when it is the importing module's own package, as some tools
resolve it.
"""

from __future__ import annotations

import ast
from pathlib import Path

ENGINE = Path(__file__).resolve().parents[2] / "engine"
ROOT = "rankly.engine"


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ENGINE).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join([ROOT, *parts])


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _module_level_imports(tree: ast.Module) -> list[ast.Import | ast.ImportFrom]:
    """Imports run when the module loads: top level, and inside module-level if/try/with."""
    found: list[ast.Import | ast.ImportFrom] = []
    todo: list[ast.stmt] = list(tree.body)
    while todo:
        node = todo.pop()
        if isinstance(node, ast.Import | ast.ImportFrom):
            found.append(node)
        elif isinstance(node, ast.If):
            if not _is_type_checking(node.test):
                todo += node.body
            todo += node.orelse
        elif isinstance(node, ast.Try):
            todo += node.body + node.orelse + node.finalbody
            for handler in node.handlers:
                todo += handler.body
        elif isinstance(node, ast.With):
            todo += node.body
    return found


def _every_import(tree: ast.Module) -> list[ast.Import | ast.ImportFrom]:
    """Every import statement of the module, wherever it is (functions, TYPE_CHECKING, ...)."""
    return [node for node in ast.walk(tree) if isinstance(node, ast.Import | ast.ImportFrom)]


def import_graph(every_import: bool = False) -> dict[str, set[str]]:
    """Module name -> the engine modules it loads at import time (or, with ``every_import``,
    the engine modules any of its import statements names)."""
    sources = {module_name(p): p for p in ENGINE.rglob("*.py")}
    graph: dict[str, set[str]] = {name: set() for name in sources}

    def add(src: str, target: str) -> None:
        # loading a.b.c runs a.b and a first, unless they are src's own packages (already
        # loading); the engine's own package is left out: every module imports it, and it
        # imports nothing of the engine at load time
        while target.startswith(ROOT + ".") and target != src:
            if target in sources and not src.startswith(target + "."):
                graph[src].add(target)
            target = target.rpartition(".")[0]

    for name, path in sources.items():
        is_pkg = path.name == "__init__.py"
        package = name if is_pkg else name.rpartition(".")[0]
        tree = ast.parse(path.read_text(), str(path))
        for node in (_every_import if every_import else _module_level_imports)(tree):
            if isinstance(node, ast.Import):
                for alias in node.names:
                    add(name, alias.name)
                continue
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            add(name, target)
            if every_import and target in sources and target not in (name, ROOT):
                graph[name].add(target)  # `from . import sibling` counted as the package too
            for alias in node.names:  # `from pkg import module`
                add(name, f"{target}.{alias.name}")
    return graph


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one node, or with a self-loop (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1 or v in graph.get(v, ()):
                found.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def part_of(module: str) -> str:
    """The sub-package a module belongs to, or the module itself at the engine's top level."""
    parts = module.split(".")
    return ".".join(parts[:3])


def package_graph(graph: dict[str, set[str]]) -> dict[str, set[str]]:
    """Edges between the engine's sub-packages (top-level host modules are left out: the
    runtime and the CLI assemble the parts, and the parts use the host's values)."""
    subpackages = {part_of(m) for m in graph if (ENGINE / part_of(m).split(".")[-1]).is_dir()}
    out: dict[str, set[str]] = {p: set() for p in subpackages}
    for src, targets in graph.items():
        a = part_of(src)
        for t in targets:
            b = part_of(t)
            if a != b and a in subpackages and b in subpackages:
                out[a].add(b)
    return out


def describe(graph: dict[str, set[str]], found: list[list[str]]) -> str:
    """Each circle with the edges that close it, one per line, for the failure message."""
    lines = []
    for circle in found:
        members = set(circle)
        lines.append(f"circle of {len(circle)}: {', '.join(circle)}")
        lines += [f"    {src} -> {dst}" for src in circle for dst in sorted(graph[src] & members)]
    return "\n".join(lines)


def test_engine_modules_import_without_a_circle() -> None:
    graph = import_graph()
    assert len(graph) > 40  # the walk found the engine
    found = circles(graph)
    assert found == [], describe(graph, found)


def test_engine_modules_import_without_a_circle_counting_every_import() -> None:
    graph = import_graph(every_import=True)
    found = circles(graph)
    for line in describe(graph, found).splitlines():
        print(line)
    assert found == [], describe(graph, found)


def test_engine_subpackages_import_without_a_circle() -> None:
    graph = package_graph(import_graph())
    found = circles(graph)
    assert found == [], describe(graph, found)


def test_every_import_counts_deferred_and_type_checking_imports() -> None:
    loaded = import_graph()
    named = import_graph(every_import=True)
    assert all(loaded[m] <= named[m] for m in loaded)
    # the pipeline's modules name the runtime only for annotations
    assert f"{ROOT}.runtime" not in loaded[f"{ROOT}.pipeline.cache"]
    assert f"{ROOT}.runtime" in named[f"{ROOT}.pipeline.cache"]


def test_types_and_the_store_interface_are_leaves() -> None:
    """Every part may import them, so they import nothing of the engine, not even to annotate."""
    graph = import_graph(every_import=True)
    assert graph[f"{ROOT}.types"] == set()
    assert graph[f"{ROOT}.storage.store"] == set()


def test_the_cycle_finder_finds_a_circle() -> None:
    assert circles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert circles({"a": {"a"}}) == [["a"]]
    assert circles({"a": {"b"}, "b": set()}) == []


#: The engine's top level is the host (issue 17): everything else lives in sub-packages.
MAX_TOP_LEVEL_MODULES = 12


def test_the_engine_top_level_holds_only_the_host() -> None:
    top = sorted(p.name for p in ENGINE.glob("*.py"))
    assert len(top) <= MAX_TOP_LEVEL_MODULES, top
