"""``harness init``: scaffold a manifest (and optionally a new image) for a submission."""

from __future__ import annotations

from pathlib import Path

import click

from harness.commands.output import examples
from harness.project.scaffold import IMAGES


@click.command(
    epilog=examples("harness init ppo-cartpole", "harness init my-study --image new", "harness init tiny --image noop")
)
@click.argument("name")
@click.option(
    "--image",
    type=click.Choice(IMAGES),
    default="noop",
    show_default=True,
    help="Start on an existing image (rl, lm, noop) or make a new one (new: images/NAME/, locked).",
)
@click.option("--force", is_flag=True, help="Overwrite an existing manifests/NAME.yaml.")
def init(name: str, image: str, force: bool) -> None:
    """Write manifests/NAME.yaml, a valid starting point that smoke-runs as it is.

    With --image new, also images/NAME/ (Dockerfile, requirements.in, workload/main.py), locked
    into lockfiles/NAME.txt with `harness lock`. Run it in the project's root."""
    from harness.images.lock import compile_lockfile
    from harness.manifest import load_manifest
    from harness.project.scaffold import scaffold
    from harness.util import terminal

    root = Path.cwd()
    written = scaffold(root, name, image, force=force)
    for path in written:
        click.echo(f"wrote {path.relative_to(root)}")
    if image == "new":
        with terminal.status(f"locking images/{name} (pip-compile)"):
            lockfile = compile_lockfile(root / "images" / name)
        click.echo(f"wrote {lockfile.relative_to(root.resolve())}")
    manifest = Path("manifests") / f"{name}.yaml"
    load_manifest(manifest)
    click.echo(
        f"{manifest}: ok. Next: edit it, `harness run {manifest} --smoke`, then "
        "`scripts/verify-submission.sh` and open a pull request (CONTRIBUTING.md)."
    )
