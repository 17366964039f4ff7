"""What a Python script imports when it runs as published, read from its syntax tree (never run).

Imports at module level, in functions and in the ``if __name__ == "__main__":`` block count;
imports under any other ``if`` (``if args.track: import wandb``) are optional features that the
imported manifest turns off, so they do not count.
"""

from __future__ import annotations

import ast

from harness.errors import HarnessError

MAX_SCRIPT_BYTES = 4 << 20


def _is_main_guard(node: ast.If) -> bool:
    test = node.test
    return (
        isinstance(test, ast.Compare)
        and isinstance(test.left, ast.Name)
        and test.left.id == "__name__"
        and len(test.comparators) == 1
        and isinstance(test.comparators[0], ast.Constant)
        and test.comparators[0].value == "__main__"
    )


def script_imports(source: bytes, shown: str) -> list[str]:
    """The dotted module names ``source`` imports unconditionally, sorted; HarnessError when it
    is not Python this interpreter can parse."""
    if len(source) > MAX_SCRIPT_BYTES:
        raise HarnessError(f"{shown}: larger than {MAX_SCRIPT_BYTES} bytes; not a single-file script")
    try:
        tree = ast.parse(source, filename=shown)
    except (SyntaxError, ValueError, RecursionError, MemoryError) as exc:
        raise HarnessError(f"{shown}: not a Python script this harness can read ({type(exc).__name__})") from None
    found: set[str] = set()
    stack: list[ast.AST] = [tree]
    while stack:
        node = stack.pop()
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
            continue
        if isinstance(node, ast.ImportFrom):
            if node.level == 0 and node.module:
                found.add(node.module)
            continue
        if isinstance(node, ast.If) and node is not tree:
            if _is_main_guard(node):
                stack.extend(node.body)
            continue
        stack.extend(ast.iter_child_nodes(node))
    return sorted(found)
