"""Lockfiles and content-addressed images on the real engine."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import pytest

from harness.images.build import BUILD_STAGING, base_images, build_image, content_hash
from harness.images.lock import compile_lockfile, stale_lockfiles
from harness.lockfile import lockfile_problems, parse_lockfile
from harness.runtime.engine import docker_client
from tests.conftest import REPO


def copy_recipe(tmp_path: Path, name: str = "noop") -> tuple[Path, Path]:
    image_dir = tmp_path / "images" / name
    shutil.copytree(REPO / "images" / "noop", image_dir)
    lockfile = tmp_path / "lockfiles" / f"{name}.txt"
    lockfile.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(REPO / "lockfiles" / "noop.txt", lockfile)
    return image_dir, lockfile


def test_shipped_lockfiles_are_pinned_hashed_and_fresh():
    assert stale_lockfiles(REPO) == []
    for lockfile in (REPO / "lockfiles").glob("*.txt"):
        requirements, problems = parse_lockfile(lockfile)
        assert problems == [] and requirements, lockfile
        text = lockfile.read_text()
        assert "--find-links" not in text and "file://" not in text and "/opt/" not in text
        assert all(line.startswith("--extra-index-url https://") for line in text.splitlines() if line.startswith("-"))


def test_lockfile_checks_catch_each_problem(tmp_path):
    bad = tmp_path / "bad.txt"
    bad.write_text(
        "six==1.16.0 \\\n    --hash=sha256:" + "a" * 64 + "\nnumpy>=1\n--index-url file:///srv/mirror/simple\n"
        "--find-links ./wheels\nrequests==2.0\n"
    )
    problems = lockfile_problems(bad)
    assert any("numpy" in p and "not pinned" in p for p in problems)
    assert any("--index-url" in p and "public https" in p for p in problems)
    assert any("--find-links" in p for p in problems)
    assert any("requests==2.0" in p and "no --hash" in p for p in problems)


def test_lock_check_reports_a_stale_lockfile(tmp_path, cli):
    image_dir, _lockfile = copy_recipe(tmp_path)
    assert cli("lock", "--check", cwd=tmp_path).returncode == 0
    (image_dir / "requirements.in").write_text("six==1.16.0\nidna\n")
    result = cli("lock", "--check", cwd=tmp_path)
    assert result.returncode == 1 and "noop: requirements.in changed" in result.stderr


def test_lock_compiles_with_hashes_and_no_machine_paths(tmp_path):
    image_dir, lockfile = copy_recipe(tmp_path, "tiny")
    lockfile.unlink()
    output = compile_lockfile(image_dir)
    assert output == lockfile
    text = lockfile.read_text()
    assert "six==1.16.0" in text and "--hash=sha256:" in text
    assert "find-links" not in text and "index-url" not in text and str(tmp_path) not in text
    assert stale_lockfiles(tmp_path) == []


def test_content_hash_follows_inputs_not_build_helpers(tmp_path):
    image_dir, lockfile = copy_recipe(tmp_path)
    bases = {"harness/base:bookworm": "sha256:" + "1" * 64}
    first = content_hash(image_dir, lockfile, bases)
    (image_dir / BUILD_STAGING).mkdir()
    (image_dir / BUILD_STAGING / "ca.pem").write_text("a CA bundle")
    assert content_hash(image_dir, lockfile, bases) == first
    (image_dir / "workload" / "probe.py").write_text("print('changed')\n")
    assert content_hash(image_dir, lockfile, bases) != first
    assert content_hash(
        REPO / "images" / "noop", REPO / "lockfiles" / "noop.txt", {"harness/base:bookworm": "sha256:" + "2" * 64}
    ) != content_hash(REPO / "images" / "noop", REPO / "lockfiles" / "noop.txt", bases)


def test_base_images_follow_arg_defaults():
    assert base_images(REPO / "images" / "rl" / "Dockerfile") == ["harness/base:bookworm", "harness/base:bookworm"]


@pytest.mark.docker
def test_build_forwards_the_ca_bundle_without_keeping_it(base_image, tmp_path):
    image_dir, lockfile = copy_recipe(tmp_path, "catest")
    ca = tmp_path / "extra-ca.pem"
    ca.write_text(
        Path("/etc/ssl/certs/ca-certificates.crt").read_text()
        if Path("/etc/ssl/certs/ca-certificates.crt").exists()
        else "# none\n"
    )
    (image_dir / "Dockerfile").write_text(
        (image_dir / "Dockerfile")
        .read_text()
        .replace(
            "RUN python3 -m venv",
            "RUN test -s /harness-build/ca.pem && grep -q cert /harness-build/pip.conf && python3 -m venv",
        )
    )
    info = build_image(image_dir, lockfile, ca_bundle=ca, force=True)
    client = docker_client()
    try:
        listing = client.containers.run(
            info.id,
            ["sh", "-c", "ls -a / /opt/venv; test ! -e /harness-build && echo clean"],
            remove=True,
            network_mode="none",
        ).decode()
        assert "clean" in listing and "ca.pem" not in listing
        history = " ".join(layer.get("CreatedBy", "") for layer in client.api.history(info.id))
        assert "ca.pem" not in history
        again = build_image(image_dir, lockfile, ca_bundle=None)
        assert again.cached and again.id == info.id  # the CA bundle is not part of the content hash
    finally:
        client.images.remove(info.id, force=True)


@pytest.mark.docker
def test_warm_build_does_not_call_the_engine(noop_image, cli):
    started = time.perf_counter()
    info = build_image(REPO / "images" / "noop", REPO / "lockfiles" / "noop.txt")
    # the tag's current image: a reproduction earlier in the session may have rebuilt it (new id, same tag)
    assert info.cached and info.ref == noop_image.ref
    assert time.perf_counter() - started < 60  # a build would take minutes; on a quiet machine this is < 1 s
    result = cli("build", str(REPO / "manifests" / "noop.yaml"), "--quiet")
    assert result.returncode == 0 and "cached, no build" in result.stdout


@pytest.mark.docker
def test_image_ref_by_digest(noop_image, store_home, cli, tmp_path):
    manifest = tmp_path / "manifests" / "byref.yaml"
    manifest.parent.mkdir()
    text = (
        (REPO / "manifests" / "noop.yaml")
        .read_text()
        .replace("image: {build: images/noop, lockfile: lockfiles/noop.txt}", f"image: {{ref: '{noop_image.id}'}}")
    )
    manifest.write_text(text)
    result = cli("run", str(manifest), "--param", "mode=ok")
    assert result.returncode == 0, result.stderr
    from harness.store.local import LocalStore

    record = next(LocalStore(store_home).records())
    assert record["image"]["id"] == noop_image.id and record["image"]["ref"] == noop_image.id
    missing = text.replace(noop_image.id, "sha256:" + "0" * 64)
    manifest.write_text(missing)
    result = cli("run", str(manifest))
    assert result.returncode == 2 and "could not be pulled" in result.stderr


def test_gpu_runs_get_a_device_request_and_the_sandbox(tmp_path):
    from harness.runtime.docker import container_config, sandbox_options
    from harness.runtime.job import JobRequest

    request = JobRequest(
        run_id="r",
        command=["true"],
        environment={},
        out_dir=tmp_path,
        log_path=tmp_path / "log",
        cpus=2,
        memory_bytes=2**30,
        gpus=1,
        timeout_seconds=10,
    )
    options = sandbox_options(request)
    (device,) = options["DeviceRequests"]
    assert device["Count"] == 1 and device["Capabilities"] == [["gpu"]]
    assert options["NetworkMode"] == "none" and options["ReadonlyRootfs"] and options["CapDrop"] == ["ALL"]
    assert options["SecurityOpt"] == ["no-new-privileges"] and options["NanoCpus"] == 2 * 10**9
    assert options["Memory"] == options["MemorySwap"] == 2**30
    assert container_config("sha256:x", request)["User"] == "65534:65534"
    request.gpus = 0
    assert "DeviceRequests" not in sandbox_options(request)


@pytest.mark.docker
def test_bootstrap_imports_a_kept_tarball_without_mmdebstrap(base_image, tmp_path, monkeypatch):
    import harness.images.build as images

    client = docker_client()
    container = client.containers.create(base_image.id, ["true"], network_mode="none")
    tarball = tmp_path / "cache" / "base.tar"
    tarball.parent.mkdir()
    try:
        with open(tarball, "wb") as handle:
            for chunk in container.export():
                handle.write(chunk)
    finally:
        container.remove(force=True)

    def no_mmdebstrap(*args, **kwargs):
        raise AssertionError("mmdebstrap ran although the tarball was there")

    monkeypatch.setattr(images, "_mmdebstrap", no_mmdebstrap)
    name = "harness/base-test:from-tarball"
    try:
        info = images.bootstrap_base(name, tarball=tarball)
        assert not info.cached and info.packages == base_image.packages and tarball.is_file()
        # loaded with a fixed creation time: the same tarball gives the same id again
        client.images.remove(name, force=True)
        again = images.bootstrap_base(name, tarball=tarball)
        assert not again.cached and again.id == info.id
        assert client.images.get(name).attrs["Created"].startswith("2023-11-14")  # the default epoch
    finally:
        client.images.remove(name, force=True)
