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
    from harness.images import bootstrap_base

    return bootstrap_base()


@pytest.fixture(scope="session")
def noop_image(base_image):
    """The tiny probe image of images/noop."""
    from harness.images import build_image

    return build_image(REPO / "images" / "noop", REPO / "lockfiles" / "noop.txt")


@pytest.fixture(scope="session")
def rl_image(base_image):
    """The RL image of images/rl (torch + gymnasium)."""
    from harness.images import build_image

    return build_image(REPO / "images" / "rl", REPO / "lockfiles" / "rl.txt")


@pytest.fixture
def store_home(tmp_path, monkeypatch) -> Path:
    """An empty results store in a temporary folder, as $HARNESS_HOME."""
    home = tmp_path / "store"
    monkeypatch.setenv("HARNESS_HOME", str(home))
    return home


def run_cli(*args: str, env: dict[str, str] | None = None, cwd: Path = REPO, timeout: float = 900) -> subprocess.CompletedProcess:
    """Run ``python -m harness ARGS`` as a user would, capturing its output."""
    return subprocess.run(
        [sys.executable, "-m", "harness", *args], cwd=cwd, capture_output=True, text=True, timeout=timeout,
        env={**os.environ, **(env or {})},
    )


@pytest.fixture
def cli():
    return run_cli


def noop_variant(tmp_path: Path, old: str = "", new: str = "", extra: str = "") -> str:
    """A copy of the noop project whose manifest has ``old`` replaced by ``new`` and ``extra``
    appended (same recipe and lockfile, so the same image); returns the manifest's path."""
    import shutil

    for part in ("images/noop", "lockfiles/noop.txt"):
        source, target = REPO / part, tmp_path / part
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copytree(source, target) if source.is_dir() else shutil.copy(source, target)
    manifest = tmp_path / "manifests" / "variant.yaml"
    manifest.parent.mkdir(exist_ok=True)
    text = (REPO / "manifests" / "noop.yaml").read_text()
    assert old in text
    manifest.write_text(text.replace(old, new) + extra)
    return str(manifest)
