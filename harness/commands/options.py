"""Options that several commands share, declared once."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from harness.store.record import DEFAULT_METRIC

Decorator = Callable[[Any], Any]

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
ray_address_option = click.option(
    "--address", help="Ray: the cluster's Jobs API, e.g. http://HEAD:8265 [default: $HARNESS_RAY_ADDRESS]."
)
endpoint_option = click.option("--endpoint", help="Hub URL (default: HF_ENDPOINT or https://huggingface.co)")

# -- analysis: the same option means the same thing in compare, plot and thc ------------------------

last_option = click.option(
    "--last",
    "last_n",
    type=click.IntRange(min=1),
    default=10,
    show_default=True,
    help="Final score = mean of the last N points.",
)


def metric_option(verb: str, fallback: bool = True) -> Decorator:
    """``--metric``: the metric the command works on (``verb``: what it does with it)."""
    default = f", else {DEFAULT_METRIC}" if fallback else ""
    return click.option("--metric", help=f"Metric to {verb} (default: the runs' primary metric{default}).")


def by_option(help: str = "Group runs by manifest or param:NAME.") -> Decorator:
    """``--by``: how runs are grouped (manifest, or param:NAME)."""
    return click.option("--by", default="manifest", show_default=True, help=help)


def env_key_option(help: str = "Param that names the environment.") -> Decorator:
    """``--env-key``: the param whose value is the environment."""
    return click.option("--env-key", default="env_id", show_default=True, help=help)


def smooth_option(help: str = "Rolling-mean window in points (1: none).") -> Decorator:
    """``--smooth``: a rolling-mean window, at least 1."""
    return click.option("--smooth", type=click.IntRange(min=1), default=1, show_default=True, help=help)


def points_option(default: int, help: str) -> Decorator:
    """``--points``: points of a common grid along the curves, at least 2."""
    return click.option("--points", type=click.IntRange(min=2), default=default, show_default=True, help=help)


def reps_option(help: str = "Bootstrap resamples.") -> Decorator:
    """``--reps``: bootstrap resamples, at least 1."""
    return click.option("--reps", type=click.IntRange(min=1), default=2000, show_default=True, help=help)


def boot_seed_option(help: str = "Bootstrap seed (same seed, same CIs).") -> Decorator:
    """``--boot-seed``: the bootstrap's seed (``--seed`` is a run's seed in ``harness run``; the old
    spelling is still accepted here)."""
    return click.option("--boot-seed", "--seed", "boot_seed", type=int, default=0, show_default=True, help=help)


def console(stderr: bool = False) -> Any:
    """A rich console for this process's stdout (or stderr): wide plain lines when piped (scripts,
    CI logs), unless COLUMNS says how wide."""
    import os

    from rich.console import Console

    stream = sys.stderr if stderr else sys.stdout
    columns = os.environ.get("COLUMNS", "")
    width = None if stream.isatty() else int(columns) if columns.isdigit() else 200
    return Console(highlight=False, stderr=stderr, width=width)
