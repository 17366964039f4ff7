"""Shared fixtures: the real Docker engine, the bootstrapped base image, the project's images,
an isolated results store, and a helper that runs the real CLI in a subprocess."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"


def need(service: str, reason: str) -> None:
    """Fail under CI (the service must be there), skip elsewhere."""
    message = f"{service} unavailable: {reason}"
    if os.environ.get("CI"):
        pytest.fail(message)
    pytest.skip(message)


@pytest.fixture(scope="session")
def docker_engine():
    """A docker SDK client of the real engine."""
    from harness.errors import EngineError
    from harness.runtime.engine import docker_client

    try:
        return docker_client(timeout=300)
    except EngineError as exc:
        need("Docker engine", str(exc))


@pytest.fixture(scope="session")
def base_image(docker_engine):
    """The base image made from Debian packages (bootstrapped once if missing)."""
    from harness.images.build import bootstrap_base

    return bootstrap_base()


@pytest.fixture(scope="session")
def noop_image(base_image):
    """The tiny probe image of images/noop."""
    from harness.images.build import build_image

    return build_image(REPO / "images" / "noop", REPO / "lockfiles" / "noop.txt")


@pytest.fixture(scope="session")
def rl_image(base_image):
    """The RL image of images/rl (torch + gymnasium)."""
    from harness.images.build import build_image

    return build_image(REPO / "images" / "rl", REPO / "lockfiles" / "rl.txt")


@pytest.fixture
def store_home(tmp_path, monkeypatch) -> Path:
    """An empty results store in a temporary folder, as $HARNESS_HOME."""
    home = tmp_path / "store"
    monkeypatch.setenv("HARNESS_HOME", str(home))
    return home


def run_cli(
    *args: str, env: dict[str, str] | None = None, cwd: Path = REPO, timeout: float = 900
) -> subprocess.CompletedProcess:
    """Run ``python -m harness ARGS`` as a user would, capturing its output."""
    return subprocess.run(
        [sys.executable, "-m", "harness", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
    )


@pytest.fixture
def cli():
    return run_cli


def copy_project(target: Path, *parts: str) -> Path:
    """Copy ``parts`` of this repository (folders or files, e.g. ``images/noop``) into ``target``
    at the same relative paths, without bytecode caches; returns ``target``."""
    import shutil

    for part in parts:
        source, destination = REPO / part, target / part
        destination.parent.mkdir(parents=True, exist_ok=True)
        if source.is_dir():
            shutil.copytree(source, destination, ignore=shutil.ignore_patterns("__pycache__"), dirs_exist_ok=True)
        else:
            shutil.copy(source, destination)
    (target / "manifests").mkdir(exist_ok=True)
    return target


def noop_project(target: Path) -> Path:
    """A project folder with the noop image recipe, its lockfile and an empty manifests/ folder."""
    return copy_project(target, "images/noop", "lockfiles/noop.txt")


def noop_variant(tmp_path: Path, old: str = "", new: str = "", extra: str = "") -> str:
    """A copy of the noop project whose manifest has ``old`` replaced by ``new`` and ``extra``
    appended (same recipe and lockfile, so the same image); returns the manifest's path."""
    noop_project(tmp_path)
    manifest = tmp_path / "manifests" / "variant.yaml"
    text = (REPO / "manifests" / "noop.yaml").read_text()
    assert old in text
    manifest.write_text(text.replace(old, new) + extra)
    return str(manifest)


HUB_TOKEN = "hf_testTOKENvalue0123456789abcdef"


@pytest.fixture
def hub(tmp_path, monkeypatch):
    """The project's test Hub on a free loopback port, with the huggingface_hub client pointed at it
    (``HF_ENDPOINT``, ``HF_TOKEN`` = :data:`HUB_TOKEN`), Xet off (the server speaks the classic LFS
    API) and no progress bars."""
    from huggingface_hub import constants

    from tests.hubserver import HubServer

    monkeypatch.setattr(constants, "HF_HUB_DISABLE_XET", True)
    monkeypatch.setenv("HF_HUB_DISABLE_XET", "1")
    monkeypatch.setenv("HF_TOKEN", HUB_TOKEN)
    monkeypatch.setenv("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    with HubServer(tmp_path / "hub", token=HUB_TOKEN) as server:
        monkeypatch.setenv("HF_ENDPOINT", server.url)
        yield server
