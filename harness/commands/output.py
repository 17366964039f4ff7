"""What the commands print for scripts: ``--json`` (shapes in docs/cli-json.md) and examples
for ``--help``."""

from __future__ import annotations

import json
from typing import Any, Callable

import click

JSON_HELP = "Print the result as JSON on stdout (shape: docs/cli-json.md); progress goes to stderr."


def json_option(function: Callable[..., Any]) -> Callable[..., Any]:
    """The ``--json`` flag, passed to the command as ``as_json``."""
    return click.option("--json", "as_json", is_flag=True, help=JSON_HELP)(function)


def emit_json(data: Any) -> None:
    """One JSON document on stdout (sorted keys, so the output diffs cleanly)."""
    click.echo(json.dumps(data, indent=2, sort_keys=True, default=str))


def examples(*lines: str) -> str:
    """An ``epilog`` for ``--help``: the example lines, kept as typed (Click's ``\\b``)."""
    return "\b\nExamples:\n" + "\n".join(f"  {line}" for line in lines)
