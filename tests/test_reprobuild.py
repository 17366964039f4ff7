"""Bit-reproducible builds (harness.reprobuild) with the real podman and Docker engine: the noop
recipe rebuilds to the same image id after the image is removed from Docker, the result runs
sandboxed, and ``--check`` names the layer and file of a recipe that is not reproducible."""

from __future__ import annotations

import json
import shutil

import pytest

from harness.images import build_image
from tests.conftest import REPO, need, noop_project, run_cli

pytestmark = pytest.mark.docker


@pytest.fixture(autouse=True)
def podman_installed():
    if shutil.which("podman") is None:
        need("podman", "not installed (scripts/setup.sh --with-podman installs it)")


@pytest.mark.slow
def test_noop_rebuilds_to_the_same_id_and_runs(base_image, docker_engine, tmp_path):
    project = noop_project(tmp_path)
    manifest = project / "manifests" / "noop.yaml"
    manifest.write_text(
        (REPO / "manifests" / "noop.yaml")
        .read_text()
        .replace("lockfile: lockfiles/noop.txt", "lockfile: lockfiles/noop.txt, reproducible: true")
    )

    checked = run_cli("build", "--check", "--json", str(manifest), cwd=project)
    assert checked.returncode == 0, checked.stderr
    first = json.loads(checked.stdout)
    assert first["check"]["reproducible"] and first["check"]["ids"] == [first["id"], first["id"]]
    assert first["builder"] == "podman-reproducible"

    docker_engine.images.remove(first["tag"], force=True)  # a fresh start: the image is gone from Docker
    rebuilt = run_cli("build", "--json", str(manifest), cwd=project)
    assert rebuilt.returncode == 0, rebuilt.stderr
    again = json.loads(rebuilt.stdout)
    assert (again["id"], again["cached"]) == (first["id"], False)

    image = docker_engine.images.get(first["tag"])
    assert image.attrs["Created"].startswith("1970-01-01")
    output = docker_engine.containers.run(
        first["tag"],
        ["python", "-c", "import six, os; print(six.__version__, os.path.exists('/harness-build'))"],
        remove=True,
        network_mode="none",
        read_only=True,
        cap_drop=["ALL"],
        user="65534:65534",
    )
    assert output.decode().split() == ["1.16.0", "False"]  # neither the wheels nor the CA reach the image


def test_check_names_the_layer_and_files_that_differ(base_image, tmp_path):
    recipe = tmp_path / "images" / "stamped"
    recipe.mkdir(parents=True)
    (recipe / "Dockerfile").write_text(
        "FROM harness/base:bookworm\nRUN mkdir /stamp && date +%s%N > /stamp/now && echo same > /stamp/same\n"
    )
    results = []
    info = build_image(recipe, None, check=results.append)
    (result,) = results
    assert not result.reproducible and info.id == result.first
    assert len(result.differences) == 1, result.differences
    line = result.differences[0]
    assert line.startswith("layer 2 (") and "date +%s%N" in line
    assert line.endswith("differs in 1 entries: stamp/now (content)")
