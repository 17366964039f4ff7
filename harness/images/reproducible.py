"""Bit-reproducible image builds: the same recipe, lockfile and base give the same image id.

Docker 20.10's builder stamps the build time into the image config and its history, and the time
of each file into every layer, so a rebuild gets a new id. Here the staged context is built with
podman (buildah) with every timestamp clamped to the epoch (``--timestamp 0``, which also clamps
file times in the layers) and without its identity label, in a private podman store under the
harness cache; the image is then saved as a docker archive and loaded into Docker, which keeps its
id (the digest of the config, which does not change on the way). The run path stays Docker's.

The recipes help: their builder stage removes ``__pycache__`` (``.pyc`` headers carry times),
pip runs without a cache, and only ``/opt/venv`` is copied into the final stage.

:func:`check_build` builds twice from scratch and, when the ids differ, names the first layer
that differs and its first differing files (a walk over both layer tarballs).
"""

from __future__ import annotations

import collections
import hashlib
import json
import shutil
import subprocess
import tarfile
import tempfile
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness.errors import EngineError, HarnessError
from harness.util.fsutil import cache_root

BUILDER = "podman-reproducible"  # ImageInfo.builder of an image made here
MAX_DIFFERENCES = 10  # differing files named per layer


@dataclass
class CheckResult:
    """Two builds from scratch of one recipe: their ids, and where they differ when they do."""

    first: str
    second: str
    differences: list[str] = field(default_factory=list)  # one line each: the layer or config, then files

    @property
    def reproducible(self) -> bool:
        """Whether both builds gave the same image id."""
        return self.first == self.second


def _store() -> Path:
    return cache_root() / "podman-build"


def _podman_argv(*args: str) -> list[str]:
    """podman on the harness's private build store, with ``args``."""
    if shutil.which("podman") is None:
        raise HarnessError(
            "podman is not installed: `apt-get install -y podman` (needed for reproducible builds; "
            "image.reproducible: false or `harness build --no-reproducible` builds with Docker's builder)"
        )
    store = _store()
    return [
        "podman",
        "--root",
        str(store / "root"),
        "--runroot",
        str(store / "run"),
        "--storage-driver",
        "overlay",
        "--cgroup-manager",
        "cgroupfs",
        "--events-backend",
        "none",
        *args,
    ]


def podman(*args: str, log: Callable[[str], None] = lambda line: None, stdin: Any = None) -> str:
    """Run podman on the harness's private build store; its stdout, or EngineError with the
    last line of what it said."""
    result = subprocess.run(_podman_argv(*args), stdin=stdin, capture_output=True, text=True)
    for line in result.stderr.splitlines():
        if line.strip():
            log(line.rstrip())
    if result.returncode != 0:
        tail = (result.stderr.strip().splitlines() or ["(no output)"])[-1]
        raise EngineError(f"podman {args[0]} failed: {tail}")
    return result.stdout


def podman_streamed(*args: str, log: Callable[[str], None]) -> None:
    """Run podman with everything it says handed to ``log`` line by line as it comes (a build's
    ``STEP 3/7: RUN ...`` lines are what its progress line shows); EngineError with its last line."""
    tail: collections.deque[str] = collections.deque(maxlen=1)
    with subprocess.Popen(
        _podman_argv(*args), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, errors="replace"
    ) as process:
        assert process.stdout is not None
        for line in process.stdout:
            if line.strip():
                tail.append(line.strip())
                log(line.rstrip())
    if process.returncode != 0:
        raise EngineError(f"podman {args[0]} failed: {tail[0] if tail else '(no output)'}")


def _podman_image_id(name: str) -> str | None:
    try:
        return "sha256:" + podman("image", "inspect", "--format", "{{.Id}}", name).strip()
    except EngineError:
        return None


def ensure_base(name: str, image_id: str, log: Callable[[str], None]) -> None:
    """Copy Docker's ``name`` (id ``image_id``) into the build store unless it holds that id already."""
    if _podman_image_id(name) == image_id:
        return
    from harness.runtime.engine import docker_client

    log(f"copying {name} from Docker into the reproducible build store")
    with tempfile.TemporaryDirectory(prefix="harness-base-") as tmp:
        archive = Path(tmp) / "base.tar"
        with open(archive, "wb") as handle:
            for chunk in docker_client(timeout=3600).api.get_image(name):
                handle.write(chunk)
        podman("load", "--input", str(archive), log=log)
    if _podman_image_id(name) != image_id:
        raise EngineError(f"{name}: the copy in the reproducible build store is not image {image_id[:19]}")


@dataclass(frozen=True)
class Built:
    """An image in the build store: its id and the name only this build gave it (so that removing
    it never touches a concurrent build of the same recipe)."""

    id: str
    name: str


def _build(staging: Path, labels: dict[str, str], network: bool, log: Callable[[str], None]) -> Built:
    """One podman build of the staged context from scratch, every time clamped to the epoch."""
    name = f"localhost/harness-build/{uuid.uuid4().hex}:latest"
    with tempfile.TemporaryDirectory(prefix="harness-iid-") as tmp:
        iidfile = Path(tmp) / "iid"
        args = [
            "build",
            "--tag",
            name,
            "--timestamp",
            "0",
            "--identity-label=false",
            "--no-cache",
            "--pull=never",
            "--layers=false",
            "--network",
            "host" if network else "none",
            "--iidfile",
            str(iidfile),
        ]
        for key, value in sorted(labels.items()):
            args += ["--label", f"{key}={value}"]
        podman_streamed(*args, str(staging), log=log)
        text = iidfile.read_text().strip()
    return Built(text if text.startswith("sha256:") else "sha256:" + text, name)


def load_into_docker(built: Built, tag: str) -> None:
    """Load a build into Docker as ``tag``, id unchanged."""
    from harness.runtime.engine import docker_client

    client = docker_client(timeout=3600)
    with tempfile.TemporaryDirectory(prefix="harness-load-") as tmp:
        archive = Path(tmp) / "image.tar"
        # saved by id: the archive carries no name, so Docker gets only ``tag``
        podman("save", "--format", "docker-archive", "--output", str(archive), built.id.removeprefix("sha256:"))
        with open(archive, "rb") as handle:
            client.api.load_image(handle)
    image = client.images.get(built.id)
    repository, _, name = tag.rpartition(":")
    image.tag(repository, name)
    if image.id != built.id:  # the engine computed another config digest: not the image that was built
        raise EngineError(f"{tag}: Docker loaded the image as {image.id[:19]}, not {built.id[:19]}")


def remove(built: Built) -> None:
    """Drop a build from the build store (not from Docker); the base images stay."""
    try:
        podman("rmi", built.name)
    except EngineError:
        pass  # already gone: nothing to free


def build(
    staging: Path,
    tag: str,
    base_ids: dict[str, str],
    labels: dict[str, str],
    network: bool,
    log: Callable[[str], None],
) -> str:
    """Build the staged context reproducibly and load it into Docker as ``tag``; its image id."""
    for name, image_id in base_ids.items():
        ensure_base(name, image_id, log)
    built = _build(staging, labels, network, log)
    try:
        load_into_docker(built, tag)
    finally:
        remove(built)
    return built.id


def check_build(
    staging: Path,
    tag: str,
    base_ids: dict[str, str],
    labels: dict[str, str],
    network: bool,
    log: Callable[[str], None],
) -> CheckResult:
    """Build the staged context twice from scratch and compare the ids; the first build is loaded
    into Docker as ``tag``. On a difference, names the first differing layer and files."""
    for name, image_id in base_ids.items():
        ensure_base(name, image_id, log)
    first = _build(staging, labels, network, log)
    try:
        second = _build(staging, labels, network, log)
        try:
            result = CheckResult(first.id, second.id)
            if not result.reproducible:
                result.differences = _differences(first.id, second.id)
        finally:
            remove(second)
        load_into_docker(first, tag)
    finally:
        remove(first)
    return result


# -- the base image ------------------------------------------------------------------------------


def load_rootfs(tarball: Path, name: str, epoch: int, changes: dict[str, Any], history: str) -> str:
    """Load a root file system tarball into Docker as the one-layer image ``name``; its id.

    ``docker import`` stamps the import time into the config; here the config is written with
    ``created`` at ``epoch`` and loaded as a docker archive, so the same tarball gives the same id
    on any engine. ``changes`` is the image's runtime config (Env, Cmd)."""
    import datetime
    import io
    import platform

    from harness.runtime.engine import docker_client

    digest = hashlib.sha256()
    with open(tarball, "rb") as handle:
        while block := handle.read(1 << 20):
            digest.update(block)
    created = datetime.datetime.fromtimestamp(epoch, datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    machine = platform.machine().lower()
    config = {
        "architecture": {"x86_64": "amd64", "aarch64": "arm64"}.get(machine, machine),
        "os": "linux",
        "created": created,
        "config": changes,
        "rootfs": {"type": "layers", "diff_ids": [f"sha256:{digest.hexdigest()}"]},
        "history": [{"created": created, "created_by": history}],
    }
    config_bytes = json.dumps(config, sort_keys=True, separators=(",", ":")).encode()
    image_id = "sha256:" + hashlib.sha256(config_bytes).hexdigest()
    manifest = [{"Config": f"{image_id[7:]}.json", "RepoTags": [name], "Layers": ["layer/layer.tar"]}]
    with tempfile.TemporaryDirectory(prefix="harness-base-") as tmp:
        archive = Path(tmp) / "image.tar"
        with tarfile.open(archive, "w") as out:
            for member_name, data in (
                (f"{image_id[7:]}.json", config_bytes),
                ("manifest.json", json.dumps(manifest).encode()),
            ):
                info = tarfile.TarInfo(member_name)
                info.size = len(data)
                out.addfile(info, io.BytesIO(data))
            out.add(tarball, arcname="layer/layer.tar")
        with open(archive, "rb") as handle:
            docker_client(timeout=3600).api.load_image(handle)
    loaded = str(docker_client().images.get(name).id)
    if loaded != image_id:
        raise EngineError(f"{name}: Docker loaded the base as {loaded[:19]}, not {image_id[:19]}")
    return loaded


# -- what differs ---------------------------------------------------------------------------------


def _saved(image_id: str, folder: Path) -> tuple[dict[str, Any], list[Path]]:
    """The image's config and its layer tarballs, in order, saved from the build store."""
    podman("save", "--format", "docker-dir", "--output", str(folder), image_id.removeprefix("sha256:"))
    manifest = json.loads((folder / "manifest.json").read_text())
    config = json.loads((folder / manifest["config"]["digest"].removeprefix("sha256:")).read_text())
    layers = [folder / layer["digest"].removeprefix("sha256:") for layer in manifest["layers"]]
    return config, layers


def _members(layer: Path) -> Iterator[tuple[str, tuple[Any, ...]]]:
    """(name, what identifies it) for every entry of a layer tarball, content by sha256."""
    with tarfile.open(layer, "r:*") as archive:
        for member in archive:
            digest = ""
            if member.isfile():
                extracted = archive.extractfile(member)
                if extracted is not None:
                    hasher = hashlib.sha256()
                    while block := extracted.read(1 << 20):
                        hasher.update(block)
                    digest = hasher.hexdigest()
            yield (
                member.name,
                (member.mode, member.uid, member.gid, int(member.mtime), member.type, member.linkname, digest),
            )


def _describe(name: str, a: tuple[Any, ...] | None, b: tuple[Any, ...] | None) -> str:
    if a is None or b is None:
        return f"{name} only in the {'second' if a is None else 'first'} build"
    fields = ("mode", "uid", "gid", "mtime", "type", "link", "content")
    return f"{name} ({', '.join(f for f, x, y in zip(fields, a, b) if x != y)})"


def _differences(first: str, second: str) -> list[str]:
    """Lines naming what differs between two builds: the config fields, then the first layer
    that differs and its first differing files."""
    lines: list[str] = []
    with tempfile.TemporaryDirectory(prefix="harness-check-") as tmp:
        config_a, layers_a = _saved(first, Path(tmp) / "a")
        config_b, layers_b = _saved(second, Path(tmp) / "b")
        diff_ids = (config_a.get("rootfs", {}).get("diff_ids", []), config_b.get("rootfs", {}).get("diff_ids", []))
        keys = sorted(k for k in set(config_a) | set(config_b) if k != "rootfs" and config_a.get(k) != config_b.get(k))
        if keys:
            lines.append(f"image config differs in {', '.join(keys)}")
        for index, (a, b) in enumerate(zip(*diff_ids)):
            if a == b:
                continue
            step = _history_step(config_a, index)
            members_a, members_b = dict(_members(layers_a[index])), dict(_members(layers_b[index]))
            differing = [
                _describe(name, members_a.get(name), members_b.get(name))
                for name in sorted(set(members_a) | set(members_b))
                if members_a.get(name) != members_b.get(name)
            ]
            lines.append(
                f"layer {index + 1} ({step}) differs in {len(differing)} entries: "
                + "; ".join(differing[:MAX_DIFFERENCES])
                + (" ..." if len(differing) > MAX_DIFFERENCES else "")
            )
            break
        if len(diff_ids[0]) != len(diff_ids[1]):
            lines.append(f"the builds have {len(diff_ids[0])} and {len(diff_ids[1])} layers")
    return lines


def _history_step(config: dict[str, Any], layer_index: int) -> str:
    """The Dockerfile steps that made the layer at ``layer_index``: the history entries up to the
    one that carries that layer (podman commits a stage's steps as one layer)."""
    groups: list[list[str]] = [[]]
    for entry in config.get("history", []):
        step = str(entry.get("created_by", "")).removeprefix("/bin/sh -c ").removeprefix("#(nop) ").strip()
        if step and not step.startswith("LABEL "):
            groups[-1].append(step)
        if not entry.get("empty_layer"):
            groups.append([])
    steps = groups[layer_index] if layer_index < len(groups) else []
    text = "; ".join(steps) or "?"
    return text if len(text) <= 160 else text[:157] + "..."
