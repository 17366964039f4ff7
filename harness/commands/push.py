"""``harness push``: an image to a registry, recorded by its registry digest."""

from __future__ import annotations

from pathlib import Path

import click

from harness.commands.options import json_option
from harness.commands.output import emit_json, examples


@click.command(
    epilog=examples(
        "harness push manifests/dqn-cartpole.yaml --registry 127.0.0.1:5000/lab",
        "harness push dqn-cartpole-3f2a --registry registry.example.org/lab --json",
        "HARNESS_REGISTRY=127.0.0.1:5000 harness push dqn-cartpole-3f2a --quiet",
    )
)
@click.argument("target")
@click.option("--registry", help="host:port[/prefix] (default: HARNESS_REGISTRY)")
@click.option("--quiet", is_flag=True, help="Print only the registry reference.")
@json_option
def push(target: str, registry: str | None, quiet: bool, as_json: bool) -> None:
    """Push the image of MANIFEST (built if needed) or of RUN_ID (or a unique prefix) to a registry.

    For a run, the registry reference (name@sha256:…) is added to its record, so `publish` carries
    it and `reproduce` runs that exact image. For a manifest, put the reference in image.ref.
    Credentials: HARNESS_REGISTRY_USER / HARNESS_REGISTRY_PASSWORD, or `docker login`.
    """
    from harness.images.push import push_manifest, push_run
    from harness.images.registry import configured_registry

    chosen = configured_registry(registry)
    log = (lambda line: None) if quiet or as_json else (lambda line: click.echo(f"  {line}", err=True))
    path = Path(target)
    if target.endswith((".yaml", ".yml")) or path.is_file():
        result = push_manifest(path, chosen, log=log)
        said = [
            f"{target}: pushed image {result.image_id} as {result.registry_ref}",
            f"  use it in the manifest:  image: {{ref: {result.registry_ref}}}",
        ]
    else:
        from harness.commands.runids import resolve_run_id
        from harness.store.local import LocalStore

        store = LocalStore()
        result = push_run(resolve_run_id(store, target), chosen, store=store, log=log)
        said = [
            f"{result.run_id}: pushed image {result.image_id} as {result.registry_ref} (recorded as image.registry_ref)"
        ]
    if as_json:
        emit_json({"registry_ref": result.registry_ref, "image_id": result.image_id, "run_id": result.run_id})
    elif quiet:
        click.echo(result.registry_ref)
    else:
        for line in said:
            click.echo(line)
