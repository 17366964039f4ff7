"""`harness init`: a starting manifest (and a new image) that validates and smoke-runs as it is."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tests.conftest import REPO


def project_with_images(tmp_path: Path, *names: str) -> Path:
    for name in names:
        shutil.copytree(REPO / "images" / name, tmp_path / "images" / name)
        (tmp_path / "lockfiles").mkdir(exist_ok=True)
        shutil.copy(REPO / "lockfiles" / f"{name}.txt", tmp_path / "lockfiles")
    return tmp_path


@pytest.mark.docker
def test_init_on_the_noop_image_validates_and_smoke_runs(noop_image, store_home, tmp_path, cli):
    project = project_with_images(tmp_path, "noop")
    made = cli("init", "first-try", "--image", "noop", cwd=project)
    assert made.returncode == 0, made.stderr
    assert "wrote manifests/first-try.yaml" in made.stdout and "manifests/first-try.yaml: ok" in made.stdout
    assert cli("validate", "manifests/first-try.yaml", cwd=project).returncode == 0
    run = cli("run", "manifests/first-try.yaml", "--smoke", cwd=project)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "first-try-" in run.stdout and ": completed in " in run.stdout


def test_init_on_the_rl_and_lm_images_validates(tmp_path, cli):
    project = project_with_images(tmp_path, "rl", "lm")
    for image in ("rl", "lm"):
        assert cli("init", f"my-{image}", "--image", image, cwd=project).returncode == 0
    result = cli("validate", "manifests/my-rl.yaml", "manifests/my-lm.yaml", cwd=project)
    assert result.returncode == 0 and "my-rl, 3 runs" in result.stdout


@pytest.mark.docker
def test_init_new_makes_a_locked_image_that_smoke_runs(base_image, store_home, tmp_path, cli):
    made = cli("init", "walk", "--image", "new", cwd=tmp_path)
    assert made.returncode == 0, made.stderr
    for part in (
        "images/walk/Dockerfile",
        "images/walk/requirements.in",
        "images/walk/workload/main.py",
        "lockfiles/walk.txt",
        "manifests/walk.yaml",
    ):
        assert (tmp_path / part).is_file(), part
    assert "numpy==" in (tmp_path / "lockfiles/walk.txt").read_text()
    assert cli("lock", "--check", cwd=tmp_path).returncode == 0
    run = cli("run", "manifests/walk.yaml", "--smoke", "--seed", "1", cwd=tmp_path)
    try:
        assert run.returncode == 0, run.stdout + run.stderr
        assert "charts/mean: last" in run.stdout
    finally:
        from harness.runtime.engine import docker_client

        client = docker_client()
        for image in client.images.list(name="harness/walk"):
            client.images.remove(image.id, force=True)


@pytest.mark.parametrize(
    "args, message",
    [
        (["Bad_Name"], "NAME 'Bad_Name': use lower-case"),
        (["noop", "--image", "noop"], "manifests/noop.yaml: exists"),
        (["noop", "--image", "new"], "manifests/noop.yaml: exists"),
    ],
)
def test_init_bad_input_is_one_line_and_exit_2(tmp_path, cli, args, message):
    project = project_with_images(tmp_path, "noop")
    (project / "manifests").mkdir()
    shutil.copy(REPO / "manifests" / "noop.yaml", project / "manifests")
    result = cli("init", *args, cwd=project)
    assert result.returncode == 2 and result.stderr.strip().splitlines() == [f"error: {result.stderr.strip()[7:]}"]
    assert message in result.stderr
    assert not (project / "images" / "Bad_Name").exists()


def test_init_new_refuses_an_existing_image_folder(tmp_path, cli):
    project = project_with_images(tmp_path, "noop")
    result = cli("init", "noop", "--image", "new", "--force", cwd=project)
    assert result.returncode == 2 and "images/noop: exists" in result.stderr
    assert not (project / "manifests" / "noop.yaml").exists()
