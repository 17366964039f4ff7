"""What the commands print for scripts (``--json``, shapes in docs/cli-json.md) and the examples
at the end of every ``--help``."""

from __future__ import annotations

import json
from typing import Any

import click


def emit_json(data: Any) -> None:
    """One JSON document on stdout (sorted keys, so the output diffs cleanly)."""
    click.echo(json.dumps(data, indent=2, sort_keys=True, default=str))


def examples(*lines: str) -> str:
    """An ``epilog`` for ``--help``: the example lines, kept as typed (Click's ``\\b``)."""
    return "\b\nExamples:\n" + "\n".join(f"  {line}" for line in lines)
