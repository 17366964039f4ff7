"""``harness import``: another tool's published Hub runs as a manifest, a recipe, a lockfile and records."""

from __future__ import annotations

from pathlib import Path

import click

from harness.commands.options import endpoint_option, json_option
from harness.commands.output import emit_json, examples


@click.command(
    "import",
    epilog=examples(
        "harness import cleanrl/CartPole-v1-dqn-seed1 cleanrl/CartPole-v1-dqn-seed2 cleanrl/CartPole-v1-dqn-seed3",
        "harness import cleanrl/CartPole-v1-dqn-seed1@4b8e0f... --name dqn-cartpole-cleanrl --json",
    ),
)
@click.argument("repos", nargs=-1, required=True)
@click.option("--name", help="name of the manifest, image and lockfile [default: from the repo names]")
@click.option(
    "--project",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("."),
    show_default=True,
    help="project folder that gets images/, lockfiles/ and manifests/",
)
@click.option("--force", is_flag=True, help="replace project files of that name that hold other content")
@endpoint_option
@json_option
def import_cmd(
    repos: tuple[str, ...], name: str | None, project: Path, force: bool, endpoint: str | None, as_json: bool
) -> None:
    """Import published Hub model repos (the seeds of one experiment; CleanRL's format) as a
    manifest, an image recipe, a hashed lockfile and read-only records with status imported.

    Each REPO is org/name or org/name@revision; the commit it resolves to is pinned. Weights are
    never downloaded; the script runs only in the sandbox, with `harness reproduce`.
    """
    from harness.reproduce.importing import import_repos

    result = import_repos(
        list(repos), project, endpoint=endpoint, name=name, force=force, echo=lambda line: click.echo(line, err=True)
    )
    if as_json:
        emit_json(result.to_dict())
        return
    first = result.runs[0]
    for run_id, run in zip(result.run_ids, result.runs):
        click.echo(f"{run_id}\timported\tseed {run.seed}\tfrom {run.repo}@{run.revision[:12]}")
    for path in result.written:
        click.echo(f"wrote {path}")
    if first.dropped:
        click.echo(f"dropped from the command: {', '.join(first.dropped)}")
    for note in first.notes:
        click.echo(f"note: {note}")
    click.echo(f"next: harness reproduce {result.name}   (imported in {result.seconds:.1f} s)")
