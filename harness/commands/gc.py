"""``harness gc``: remove the engine images the harness made and nothing needs any more."""

from __future__ import annotations

from pathlib import Path

import click

from harness.commands.options import json_option
from harness.commands.output import emit_json, examples


@click.command(
    epilog=examples(
        "harness gc --dry-run",
        "harness gc",
        "harness gc --recipe rl --json",
    )
)
@click.option("--dry-run", is_flag=True, help="List what would be removed; remove nothing.")
@click.option(
    "--project",
    type=click.Path(path_type=Path, file_okay=False),
    default=Path("."),
    show_default=True,
    help="Project whose manifests/ keep their images.",
)
@click.option("--recipe", "recipes", multiple=True, help="Only images of this recipe (images/<name>); repeatable.")
@json_option
def gc(dry_run: bool, project: Path, recipes: tuple[str, ...], as_json: bool) -> None:
    """Remove the harness's dangling builder images, and harness/* images that no record of the
    store and no manifest of the project references; say how much space came back.

    Images the harness did not build are never touched, whatever their name.
    """
    from harness.images.gc import find_garbage, human_bytes, referenced_images, remove_garbage
    from harness.runtime.engine import docker_client
    from harness.store.local import LocalStore

    client = docker_client(timeout=600)
    notes: list[str] = []
    referenced = referenced_images(LocalStore(), project, notes.append)
    has_project = (project / "manifests").is_dir()
    if not has_project:
        notes.append(
            f"{project}: no manifests/ here, so tagged harness/* images are kept (another project's manifests "
            "may name them) and only dangling ones go; run gc in the project, or give --project"
        )
    result = find_garbage(client, referenced, set(recipes) or None, tagged=has_project)
    if not dry_run:
        remove_garbage(client, result)
    for note in notes:
        click.echo(f"note: {note}", err=True)
    if as_json:
        emit_json(result.to_dict(dry_run))
        return
    for c in result.candidates:
        name = ", ".join(c.tags) or c.id.split(":")[-1][:12]
        state = "would remove" if dry_run else ("removed" if c.id in result.removed else "kept")
        click.echo(f"{state:12} {name}  ({c.reason}{f', {c.recipe}' if c.recipe else ''}, {human_bytes(c.size)})")
    for image_id, why in result.skipped:
        click.echo(f"skipped      {image_id.split(':')[-1][:12]}: {why}", err=True)
    if dry_run:
        click.echo(
            f"{len(result.candidates)} image(s), about {human_bytes(result.estimated_bytes)} would come back; "
            f"{result.kept_referenced} referenced harness image(s) kept"
        )
    else:
        click.echo(
            f"removed {len(result.removed)} image(s), {human_bytes(result.reclaimed_bytes)} came back; "
            f"{result.kept_referenced} referenced harness image(s) kept"
        )
