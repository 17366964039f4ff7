"""A manifest's image, ready in the engine that will run it: built from its recipe
(content-addressed, cached) or resolved by digest, in Docker or in Podman.

Within one process (a sweep) the same recipe is resolved once: its runs share the image.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from harness.errors import EngineError
from harness.images.build import ImageInfo, build_image, resolve_ref
from harness.runtime.engine import docker_client

if TYPE_CHECKING:
    from harness.loaded_manifest import LoadedManifest

_prepared_images: dict[tuple[Any, ...], ImageInfo] = {}
_prepared_lock = threading.Lock()


def prepare_image(
    loaded: LoadedManifest,
    ca_bundle: Path | None = None,
    force_build: bool = False,
    log: Callable[[str], None] = lambda line: None,
    runtime: str = "docker",
    reproducible: bool | None = None,
) -> ImageInfo:
    """A manifest's image: built from its recipe (content-addressed, cached) or resolved by digest,
    in the engine of ``runtime`` (``podman``: see :func:`prepare_podman_image`). The build is
    bit-reproducible (harness.images.reproducible) or Docker's as ``reproducible`` says, else as
    the manifest's ``image.reproducible`` says, else reproducible where podman is installed.

    Within one process (a sweep) the same recipe is resolved once: its runs share the image."""
    if runtime == "podman":
        return prepare_podman_image(loaded, ca_bundle, force_build, log)
    if reproducible is None:
        reproducible = loaded.view.image.reproducible
    key = (
        loaded.view.image.ref,
        str(loaded.build_dir),
        loaded.lockfile and loaded.lockfile.read_bytes(),
        loaded.view.image.network,
        reproducible,
    )
    if not force_build:
        with _prepared_lock:
            if key in _prepared_images:
                return _prepared_images[key]
    if loaded.view.image.ref:
        info = resolve_ref(docker_client(), loaded.view.image.ref)
    else:
        assert loaded.build_dir is not None
        info = build_image(
            loaded.build_dir,
            loaded.lockfile,
            ca_bundle=ca_bundle,
            force=force_build,
            log=log,
            network=loaded.view.image.network,
            reproducible=reproducible,
        )
    with _prepared_lock:
        _prepared_images[key] = info
    return info


_prepared_podman: dict[tuple[Any, ...], ImageInfo] = {}


def prepare_podman_image(
    loaded: LoadedManifest,
    ca_bundle: Path | None = None,
    force_build: bool = False,
    log: Callable[[str], None] = lambda line: None,
) -> ImageInfo:
    """A manifest's image in Podman: pulled by digest from its registry, or built by the Docker
    engine (content-addressed, as for ``docker``) and copied into Podman when it lacks that id."""
    key = (
        loaded.view.image.ref,
        str(loaded.build_dir),
        loaded.lockfile and loaded.lockfile.read_bytes(),
        loaded.view.image.network,
    )
    with _prepared_lock:
        if key in _prepared_podman and not force_build:
            return _prepared_podman[key]
    # only a Podman run loads these (the registry client brings urllib.request and http.client)
    from harness.images.podman import podman_resolve_ref, transfer_from_docker
    from harness.runtime.podman import podman_api

    api = podman_api()
    ref = loaded.view.image.ref
    if ref:
        info = podman_resolve_ref(api, ref, log)
    else:
        try:
            info = prepare_image(loaded, ca_bundle, force_build, log)
        except EngineError as exc:
            raise EngineError(
                f"{exc}; with --runtime podman and no Docker engine to build with, push the image "
                "from a machine that has one (`harness push`) and use image.ref by digest"
            ) from None
        if api.image_id(info.id) is None:
            log(f"copying {info.tag or info.id} from the Docker engine into Podman")
            transfer_from_docker(api, info.tag or info.id)
            if api.image_id(info.id) is None:
                raise EngineError(f"image {info.id} did not reach Podman intact (its id differs after `podman load`)")
    with _prepared_lock:
        _prepared_podman[key] = info
    return info
