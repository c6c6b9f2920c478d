"""The import rules of polytask's layers, checked on the source (``make lint``).

Layers, bottom to top (docs/architecture.md): each file imports polytask modules of its own
layer or of layers below, never above; no two files import each other, directly or in a
cycle; and no polytask import hides inside a function body, except in ``cli.py`` (which
imports each command's machinery when that command runs, to start quickly). Exit status 1 and
one line per violation when a rule is broken.

``python tools/check_layers.py --report`` also prints the file-level import arrows.
"""

from __future__ import annotations

import ast
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "src" / "polytask"

#: Bottom to top. A module belongs to the first layer with a prefix matching it.
LAYERS: list[tuple[str, tuple[str, ...]]] = [
    (
        "base",
        (
            "polytask._version",
            "polytask.errors",
            "polytask.catalog",
            "polytask.state_io",
            "polytask.safe_read",
            "polytask.config_errors",
            "polytask.registry",
            "polytask.plugins",
            "polytask.devices",
            "polytask.distributed",
            "polytask.console",
            "polytask.progress",
        ),
    ),
    ("tasks", ("polytask.tasks",)),
    ("data", ("polytask.data",)),
    ("models", ("polytask.models",)),
    ("balance, losses, evaluate", ("polytask.balance", "polytask.losses", "polytask.evaluate")),
    ("train", ("polytask.train",)),
    ("config", ("polytask.config", "polytask.config_reference")),
    ("run", ("polytask.run",)),
    ("studies", ("polytask.studies",)),
    (
        "report, cli",
        (
            "polytask.report",
            "polytask.export",
            "polytask.cli",
            "polytask.demo",
            "polytask.pareto",
            "polytask.distill",
            "polytask.serve",
            "polytask.sklearn",
            "polytask.scaffold",
            "polytask.__main__",
            "polytask",
        ),
    ),
]

#: Files allowed to import polytask modules inside functions (why: see the module docstring).
LAZY_ALLOWED = frozenset({"polytask.cli"})


def layer_of(module: str) -> int:
    for index, (_, prefixes) in enumerate(LAYERS):
        if any(module == p or module.startswith(p + ".") for p in prefixes):
            return index
    raise ValueError(f"{module}: in no layer; add it to tools/check_layers.py LAYERS")


def modules(package: Path = PACKAGE) -> dict[str, Path]:
    """Every module of the package by dotted name (a package by its own name)."""
    found: dict[str, Path] = {}
    for path in sorted(package.rglob("*.py")):
        parts = list(path.relative_to(package.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        found[".".join(parts)] = path
    return found


@dataclass(frozen=True)
class Arrow:
    source: str
    target: str
    line: int
    in_function: bool


@dataclass
class Graph:
    arrows: list[Arrow] = field(default_factory=list)

    def edges(self) -> dict[str, set[str]]:
        out: dict[str, set[str]] = {}
        for a in self.arrows:
            out.setdefault(a.source, set()).add(a.target)
        return out


def _resolve(name: str, known: dict[str, Path]) -> str | None:
    while name:
        if name in known:
            return name
        name = name.rpartition(".")[0]
    return None


def _function_imports(tree: ast.AST) -> set[int]:
    inside: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda):
            inside.update(
                id(sub) for sub in ast.walk(node) if isinstance(sub, ast.Import | ast.ImportFrom)
            )
    return inside


def _targets(node: ast.Import | ast.ImportFrom, module: str, is_package: bool) -> Iterator[str]:
    if isinstance(node, ast.Import):
        yield from (alias.name for alias in node.names)
        return
    base = node.module or ""
    if node.level:
        parts = module.split(".") if is_package else module.split(".")[:-1]
        parts = parts[: len(parts) - node.level + 1]
        base = ".".join(parts + ([node.module] if node.module else []))
    # ``from a.b import c``: c may be a module (a.b.c) or a name in a.b.
    yield from (f"{base}.{alias.name}" for alias in node.names)


def build_graph(package: Path = PACKAGE) -> Graph:
    known = modules(package)
    graph = Graph()
    for module, path in known.items():
        tree = ast.parse(path.read_text(encoding="utf-8"))
        lazy = _function_imports(tree)
        for node in ast.walk(tree):
            if not isinstance(node, ast.Import | ast.ImportFrom):
                continue
            for target in _targets(node, module, path.name == "__init__.py"):
                if not target.startswith("polytask"):
                    continue
                resolved = _resolve(target, known)
                if resolved is None or resolved == module:
                    continue
                graph.arrows.append(Arrow(module, resolved, node.lineno, id(node) in lazy))
    return graph


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one file (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    counter = [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in sorted(edges.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return found


def violations(graph: Graph) -> list[str]:
    """One line per broken rule."""
    problems: list[str] = []
    for a in sorted(set(graph.arrows), key=lambda a: (a.source, a.line, a.target)):
        # Every submodule import runs the package's __init__ first; that is no arrow of the
        # importing file's making. An explicit ``from polytask import x`` is one.
        src, dst = layer_of(a.source), layer_of(a.target)
        if dst > src:
            problems.append(
                f"{a.source}:{a.line}: imports {a.target} ({LAYERS[dst][0]}), "
                f"a layer above its own ({LAYERS[src][0]})"
            )
        if a.in_function and a.source not in LAZY_ALLOWED:
            problems.append(f"{a.source}:{a.line}: imports {a.target} inside a function")
    for component in cycles(graph.edges()):
        problems.append(f"import cycle between files: {' -> '.join(component)}")
    return problems


def main(argv: list[str]) -> int:
    graph = build_graph()
    if "--report" in argv:
        edges = graph.edges()
        up = sum(1 for a in graph.arrows if layer_of(a.target) > layer_of(a.source))
        lazy = sum(1 for a in graph.arrows if a.in_function)
        print(f"files: {len(modules())}, import arrows: {sum(len(v) for v in edges.values())}")
        print(f"upward arrows: {up}, imports inside functions: {lazy}")
        print(f"cycles: {len(cycles(edges))}")
    problems = violations(graph)
    for line in problems:
        print(line)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
