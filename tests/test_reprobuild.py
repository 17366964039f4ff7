"""Bit-reproducible builds (harness.images.reproducible) with the real podman and Docker engine: the noop
recipe rebuilds to the same image id after the image is removed from Docker, the result runs
sandboxed, and ``--check`` names the layer and file of a recipe that is not reproducible."""

from __future__ import annotations

import json
import shutil

import pytest

from harness.images.build import build_image
from harness.manifest import load_manifest
from harness.reproduce.reproduction import as_published, compare_images
from harness.store.local import LocalStore
from tests.conftest import REPO, need, noop_project, run_cli


@pytest.fixture
def podman_installed():
    if shutil.which("podman") is None:
        need("podman", "not installed (scripts/setup.sh --with-podman installs it)")


@pytest.mark.slow
@pytest.mark.docker
@pytest.mark.usefixtures("podman_installed")
def test_noop_rebuilds_to_the_same_id_and_runs(base_image, docker_engine, tmp_path):
    project = noop_project(tmp_path)
    manifest = project / "manifests" / "noop.yaml"
    manifest.write_text((REPO / "manifests" / "noop.yaml").read_text())  # no image.reproducible: the default

    checked = run_cli("build", "--check", "--json", str(manifest), cwd=project)
    assert checked.returncode == 0, checked.stderr
    first = json.loads(checked.stdout)
    assert first["check"]["reproducible"] and first["check"]["ids"] == [first["id"], first["id"]]
    assert first["builder"] == "podman-reproducible"

    docker_engine.images.remove(first["tag"], force=True)  # a fresh start: the image is gone from Docker
    plain = run_cli("build", "--json", "--no-reproducible", str(manifest), cwd=project)  # the opt-out
    assert plain.returncode == 0, plain.stderr
    docker_built = json.loads(plain.stdout)
    assert docker_built["builder"] == "docker" and docker_built["tag"] != first["tag"]
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

    # a run on it, reproduced with --rebuild: the rebuilt image is the published one
    home = {"HARNESS_HOME": str(tmp_path / "store")}
    ran = run_cli("run", str(manifest), "--smoke", "--quiet", env=home, cwd=project)
    assert ran.returncode == 0, ran.stderr
    (record,) = LocalStore(tmp_path / "store").records()
    assert record["image"]["id"] == first["id"] and record["image"]["builder"] == "podman-reproducible"
    reproduced = run_cli(
        "reproduce", record["run_id"], "--rebuild", "--out", str(tmp_path / "v"), env=home, cwd=project
    )
    assert reproduced.returncode == 0, reproduced.stdout[-2000:] + reproduced.stderr[-2000:]
    assert f"image: rebuilt to the published digest ({first['id'][:19]})" in reproduced.stdout
    verdict = json.loads((tmp_path / "v" / "verdict.json").read_text())
    assert verdict["image"]["same_image"] is True and verdict["image"]["source"] == "rebuilt"
    (reproduction,) = [r for r in LocalStore(tmp_path / "store").records() if r.get("reproduces")]
    assert reproduction["reproduction"]["image"]["same_image"] is True


def test_a_rebuild_says_why_it_is_not_the_published_image():
    published = {"id": "sha256:" + "a" * 64, "content_hash": "1" * 64, "builder": "podman-reproducible"}
    same = compare_images(published, dict(published), "rebuilt")
    assert same == {
        "published_id": published["id"],
        "same_image": True,
        "image_note": "rebuilt to the published digest (sha256:aaaaaaaaaaaa)",
    }
    other = {"id": "sha256:" + "b" * 64, "content_hash": "1" * 64, "builder": "podman-reproducible"}
    assert "the build did not reproduce here" in compare_images(published, other, "rebuilt")["image_note"]
    new_base = {**other, "content_hash": "2" * 64}
    assert "the base image here is not the one" in compare_images(published, new_base, "rebuilt")["image_note"]
    docker_built = {**published, "builder": "docker"}
    note = compare_images(docker_built, other, "rebuilt")["image_note"]
    assert "Docker's builder" in note and "image.reproducible: false" in note
    without_podman = {**new_base, "builder": "docker"}
    assert "podman is not installed here" in compare_images(published, without_podman, "rebuilt")["image_note"]


def test_a_rebuild_uses_the_builder_of_the_published_image(tmp_path):
    project = noop_project(tmp_path)
    manifest = project / "manifests" / "noop.yaml"
    manifest.write_text((REPO / "manifests" / "noop.yaml").read_text())
    for published, expected in (
        ({"builder": "docker"}, False),
        ({}, False),  # a record from before the builder was recorded: Docker's
        ({"builder": "podman-reproducible"}, shutil.which("podman") is not None),
    ):
        loaded = load_manifest(manifest)
        as_published(loaded, published)
        assert loaded.manifest.image.reproducible is expected, published
    manifest.write_text(
        manifest.read_text().replace("lockfile: lockfiles/noop.txt", "lockfile: lockfiles/noop.txt, reproducible: true")
    )
    loaded = load_manifest(manifest)
    as_published(loaded, {"builder": "docker"})
    assert loaded.manifest.image.reproducible is True  # what the manifest says stands


@pytest.mark.docker
@pytest.mark.usefixtures("podman_installed")
def test_check_names_the_layer_and_files_that_differ(base_image, docker_engine, tmp_path):
    recipe = tmp_path / "images" / "stamped"
    recipe.mkdir(parents=True)
    (recipe / "Dockerfile").write_text(
        "FROM harness/base:bookworm\nRUN mkdir /stamp && date +%s%N > /stamp/now && echo same > /stamp/same\n"
    )
    results = []
    info = build_image(recipe, None, check=results.append)
    docker_engine.images.remove(info.tag, force=True)  # a new image each time: not kept
    (result,) = results
    assert not result.reproducible and info.id == result.first
    assert len(result.differences) == 1, result.differences
    line = result.differences[0]
    assert line.startswith("layer 2 (") and "date +%s%N" in line
    assert line.endswith("differs in 1 entries: stamp/now (content)")
