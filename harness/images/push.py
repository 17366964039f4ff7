"""Pushing what the harness built to a registry: a manifest's image, or the image a run ran (its
record then names the registry reference by digest)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harness.images.prepare import prepare_image
from harness.images.registry import Registry, RegistryError, push_image, repository_and_tag
from harness.manifest import load_manifest
from harness.runtime.engine import docker_client
from harness.store.local import LocalStore


@dataclass
class PushResult:
    """What a push did: the registry reference by digest and the run record it was written to."""

    registry_ref: str
    image_id: str
    run_id: str | None = None


def push_manifest(path: Path, registry: Registry, log: Any = lambda line: None) -> PushResult:
    """Build (or find) a manifest's image and push it; its ``image.ref`` can then be the result."""
    loaded = load_manifest(path)
    info = prepare_image(loaded, log=log)
    name, tag = repository_and_tag(info.tag or info.ref, info.id.split(":")[-1][:16])
    ref = push_image(docker_client(timeout=3600), info.id, registry, name, tag, log)
    return PushResult(ref, info.id)


def push_run(run_id: str, registry: Registry, store: Any = None, log: Any = lambda line: None) -> PushResult:
    """Push the image a run ran (by its id, from the Docker engine) and add the registry reference to
    the run's record as ``image.registry_ref`` (record.json is outside the checksummed files)."""
    store = store or LocalStore()
    record = store.load(run_id)
    image = record.get("image") or {}
    if not image.get("id"):
        raise RegistryError(f"run {run_id} ran without an image ({record.get('runtime')} runtime): nothing to push")
    name, tag = repository_and_tag(
        str(image.get("tag") or image.get("ref") or record.get("name") or "image"), str(image["id"]).split(":")[-1][:16]
    )
    ref = push_image(docker_client(timeout=3600), str(image["id"]), registry, name, tag, log)
    image["registry_ref"] = ref
    record["image"] = image
    store.save(record)
    return PushResult(ref, str(image["id"]), run_id)
