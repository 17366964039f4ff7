"""Options that several commands share, declared once."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import click

RUNTIMES = ("docker", "podman", "process")

json_option = click.option(
    "--json",
    "as_json",
    is_flag=True,
    help="Print the result as JSON on stdout (shapes: docs/cli-json.md); progress goes to stderr.",
)
runtime_option = click.option(
    "--runtime",
    type=click.Choice(RUNTIMES),
    default="docker",
    show_default=True,
    help="docker: the sandboxed container; podman: the same sandbox through (rootless) Podman; "
    "process: on this host, marked non-hermetic.",
)
ca_bundle_option = click.option(
    "--ca-bundle",
    type=click.Path(path_type=Path),
    help="Extra CA bundle for the build (default: SSL_CERT_FILE, PIP_CERT, REQUESTS_CA_BUNDLE).",
)
endpoint_option = click.option("--endpoint", help="Hub URL (default: HF_ENDPOINT or https://huggingface.co)")


def console(stderr: bool = False) -> Any:
    """A rich console for this process's stdout (or stderr): wide plain lines when piped (scripts,
    CI logs), unless COLUMNS says how wide."""
    import os

    from rich.console import Console

    stream = sys.stderr if stderr else sys.stdout
    columns = os.environ.get("COLUMNS", "")
    width = None if stream.isatty() else int(columns) if columns.isdigit() else 200
    return Console(highlight=False, stderr=stderr, width=width)
