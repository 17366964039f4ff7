"""Options that several commands share, declared once."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import click

RUNTIMES = ("docker", "podman", "process")

json_option = click.option("--json", "as_json", is_flag=True, help="Print the result as JSON (for scripts).")
runtime_option = click.option(
    "--runtime", type=click.Choice(RUNTIMES), default="docker", show_default=True,
    help="docker: the sandboxed container; podman: the same sandbox through (rootless) Podman; "
         "process: on this host, marked non-hermetic.",
)
ca_bundle_option = click.option(
    "--ca-bundle", type=click.Path(path_type=Path),
    help="Extra CA bundle for the build (default: SSL_CERT_FILE, PIP_CERT, REQUESTS_CA_BUNDLE).",
)
endpoint_option = click.option("--endpoint", help="Hub URL (default: HF_ENDPOINT or https://huggingface.co)")


def console() -> Any:
    """A rich console for this process's stdout: wide plain lines when piped (scripts, CI logs)."""
    from rich.console import Console

    return Console(highlight=False, width=None if sys.stdout.isatty() else 200)
