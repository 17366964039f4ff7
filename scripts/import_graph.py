"""The import graph of harness/, built with ``ast`` (no module is imported), and its layering.

``python scripts/import_graph.py [harness]`` prints modules, packages, circles and imports that go
up the layering; ``tests/test_layering.py`` fails on any circle or upward import. Every import
counts, also one inside a function or under ``TYPE_CHECKING``: a lazy import is still an arrow.
"""

from __future__ import annotations

import ast
import sys
from collections import Counter
from pathlib import Path

# The layers of harness/, top first (docs/architecture.md): a module may import its own package
# and any layer below its own, never one above it, never a sibling on the same layer.
LAYERS: list[tuple[str, ...]] = [
    ("__main__",),
    ("cli", "commands"),
    ("backends",),
    ("reproduce",),
    ("run",),
    ("capture",),
    ("images",),
    ("runtime", "analysis"),
    ("store", "project"),
    ("manifest_cache",),
    ("manifest",),
    ("loaded_manifest",),
    ("lockfile",),
    ("util", "errors", "track", ""),
]
RANK = {name: len(LAYERS) - i for i, names in enumerate(LAYERS) for name in names}


def module_name(root: Path, path: Path) -> str:
    """``harness/run/runner.py`` -> ``harness.run.runner``; a package's ``__init__`` is the package."""
    parts = list(path.relative_to(root.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def import_graph(root: Path) -> dict[str, set[str]]:
    """Every module of the package at ``root`` and the modules of that package it imports."""
    paths = {module_name(root, p): p for p in sorted(root.rglob("*.py"))}
    graph: dict[str, set[str]] = {name: set() for name in paths}
    for name, path in paths.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join([*parts, base] if base else parts)
                targets = [base] + [f"{base}.{alias.name}" for alias in node.names]
            else:
                continue
            for named in targets:
                target = named
                while target and target not in paths:
                    target = target.rpartition(".")[0]
                # `from harness import __version__` names the root package: no arrow to a layer
                if target and target != name and target != root.name:
                    graph[name].add(target)
    return graph


def layer_of(module: str) -> str:
    """The layer name of a module: its first package below the root (``""`` for the root itself)."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected groups of more than one module (Tarjan's algorithm, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    for start in graph:
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
                    work.append((child, iter(sorted(graph[child]))))
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
                    found.append(sorted(group))
    return found


def layering_problems(graph: dict[str, set[str]]) -> list[str]:
    """Imports that go up the layers or sideways to a sibling layer, and modules in no layer."""
    problems = []
    for module in sorted(graph):
        layer = layer_of(module)
        if layer not in RANK:
            problems.append(f"{module}: its layer {layer!r} is in no row of LAYERS")
            continue
        for target in sorted(graph[module]):
            other = layer_of(target)
            if other == layer:
                continue
            if other not in RANK:
                problems.append(f"{target}: its layer {other!r} is in no row of LAYERS")
            elif RANK[other] >= RANK[layer]:
                problems.append(f"{module} imports {target}: {other!r} is not below {layer!r}")
    return problems


def main(argv: list[str]) -> int:
    """Print the figures of the import graph; exit 1 when it has circles or layering problems."""
    root = Path(argv[0] if argv else "harness")
    graph = import_graph(root)
    packages = sorted(p.name for p in root.iterdir() if (p / "__init__.py").is_file())
    top = sorted(m for m in graph if m.count(".") == 1 and layer_of(m) not in packages)
    lines: Counter[str] = Counter()
    for path in root.rglob("*.py"):
        lines[layer_of(module_name(root, path)) or "(root)"] += len(path.read_text(encoding="utf-8").splitlines())
    found = circles(graph)
    problems = layering_problems(graph)
    print(
        f"modules {len(graph)}, imports {sum(map(len, graph.values()))}, packages {len(packages)}, top-level modules {len(top)}"
    )
    print(f"circles {len(found)}, layering problems {len(problems)}")
    for group in found:
        print("  circle:", " ".join(group))
    for problem in problems:
        print("  ", problem)
    print("lines per package:", ", ".join(f"{k} {v}" for k, v in lines.most_common()))
    return 1 if found or problems else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
