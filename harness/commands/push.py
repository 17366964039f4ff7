"""``harness push``: an image to a registry, recorded by its registry digest."""

from __future__ import annotations

from pathlib import Path

import click


@click.command()
@click.argument("target")
@click.option("--registry", help="host:port[/prefix] (default: HARNESS_REGISTRY)")
@click.option("--quiet", is_flag=True, help="Print only the registry reference.")
def push(target: str, registry: str | None, quiet: bool) -> None:
    """Push the image of MANIFEST (built if needed) or of RUN_ID to a registry.

    For a run, the registry reference (name@sha256:…) is added to its record, so `publish` carries
    it and `reproduce` runs that exact image. For a manifest, put the reference in image.ref.
    Credentials: HARNESS_REGISTRY_USER / HARNESS_REGISTRY_PASSWORD, or `docker login`.
    """
    from harness.registry import configured_registry, push_manifest, push_run

    chosen = configured_registry(registry)
    log = (lambda line: None) if quiet else (lambda line: click.echo(f"  {line}", err=True))
    path = Path(target)
    if target.endswith((".yaml", ".yml")) or path.is_file():
        result = push_manifest(path, chosen, log=log)
        if quiet:
            click.echo(result.registry_ref)
            return
        click.echo(f"{target}: pushed image {result.image_id} as {result.registry_ref}")
        click.echo(f"  use it in the manifest:  image: {{ref: {result.registry_ref}}}")
        return
    result = push_run(target, chosen, log=log)
    if quiet:
        click.echo(result.registry_ref)
        return
    click.echo(f"{target}: pushed image {result.image_id} as {result.registry_ref} (recorded as image.registry_ref)")
