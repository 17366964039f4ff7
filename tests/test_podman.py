"""The Podman runtime with real parts: rootless Podman as the unprivileged user that the set-up
creates (``harness-podman``), driven through its Docker-compatible API; images from the Docker
engine or from a real registry by digest; the DQN smoke run bit-identical to Docker's; a Slurm sweep
on Podman."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from harness.store.local import LocalStore
from tests.conftest import need
from tests.registryserver import registry

__all__ = ["registry"]  # fixture

pytestmark = pytest.mark.docker
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def podman_facts() -> dict:
    """Podman's facts on this host (starts and stops a service once); skips where Podman is missing."""
    from harness.errors import HarnessError

    if shutil.which("podman") is None:
        need("podman", "not installed (scripts/setup.sh --with-podman)")
    from harness.runtime.podman import podman_api, podman_facts, podman_user, stop_podman_service

    try:
        podman_user()
        facts = podman_facts(podman_api())
    except HarnessError as exc:
        need("podman", str(exc))
    finally:
        stop_podman_service()
    return facts


@pytest.fixture
def open_store(monkeypatch) -> Iterator[Path]:
    """A results store that the rootless Podman user can reach (pytest's own tmp folders are 0700)."""
    root = Path(tempfile.mkdtemp(prefix="harness-podman-test-", dir="/tmp"))
    root.chmod(0o755)
    monkeypatch.setenv("HARNESS_HOME", str(root / "store"))
    yield root / "store"
    shutil.rmtree(root, ignore_errors=True)


V1_ROOTLESS = {
    "engine": "podman",
    "version": "4.3.1",
    "rootless": True,
    "cgroup_version": "v1",
    "limits_enforced": {"memory": False, "cpus": False, "pids": False},
    "user": None,
}


def test_unenforced_limits_are_left_out_said_and_refusable(tmp_path):
    from harness.errors import HarnessError
    from harness.runtime.job import JobRequest
    from harness.runtime.podman import PodmanJob, check_limits

    request = JobRequest(
        run_id="r",
        command=["true"],
        environment={},
        out_dir=tmp_path,
        log_path=tmp_path / "log",
        cpus=1.0,
        memory_bytes=2**28,
        gpus=0,
        timeout_seconds=60,
    )
    job = PodmanJob.__new__(PodmanJob)  # the create request only: no engine
    job.facts, job.package_dir = V1_ROOTLESS, None
    host = job.config("sha256:" + "0" * 64, request)["HostConfig"]
    assert not {"Memory", "MemorySwap", "NanoCpus", "PidsLimit"} & host.keys()
    assert host["NetworkMode"] == "none" and host["ReadonlyRootfs"] and host["CapDrop"] == ["ALL"]
    assert job.sample_by_pid
    v2 = {**V1_ROOTLESS, "cgroup_version": "v2", "limits_enforced": {"memory": True, "cpus": True, "pids": False}}
    job.facts = v2
    host = job.config("sha256:" + "0" * 64, request)["HostConfig"]
    assert host["Memory"] == 2**28 and host["NanoCpus"] == 10**9 and "PidsLimit" not in host and not job.sample_by_pid
    assert "memory, cpus, pids limit(s) NOT enforced" in (check_limits(V1_ROOTLESS, require=False) or "")
    with pytest.raises(HarnessError, match="--require-limits"):
        check_limits(V1_ROOTLESS, require=True)
    assert (
        check_limits({**V1_ROOTLESS, "limits_enforced": dict.fromkeys(("memory", "cpus", "pids"), True)}, True) is None
    )


def test_store_out_of_reach_of_the_podman_user_is_named(open_store):
    from harness.errors import HarnessError
    from harness.runtime.podman import PodmanUser, check_reachable

    closed = open_store.parent / "closed"
    (closed / "store").mkdir(parents=True)
    closed.chmod(0o700)
    with pytest.raises(HarnessError, match=f"{closed}: user nobody-like"):
        check_reachable(closed / "store", PodmanUser("nobody-like", 65533, 65533, "/"))
    closed.chmod(0o755)
    check_reachable(closed / "store", PodmanUser("nobody-like", 65533, 65533, "/"))


def podman_services() -> list[str]:
    """Command lines of the Podman services the harness started (none once it has exited)."""
    found = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True).stdout.splitlines()
    return [line for line in found if "system service" in line and "harness-podman-" in line]


def test_noop_sandbox_under_rootless_podman(podman_facts, base_image, docker_engine, open_store, cli):
    ran = cli("run", "manifests/noop.yaml", "--runtime", "podman", "--smoke")
    assert ran.returncode == 0, ran.stdout[-2000:] + ran.stderr[-2000:]
    (record,) = LocalStore(open_store).records()
    sandbox = record["sandbox"]
    assert record["runtime"] == "podman" and record["hermetic"] is True and record["status"] == "completed"
    assert sandbox["engine"] == "podman" and sandbox["rootless"] is (os.environ.get("HARNESS_PODMAN_USER") != "root")
    if sandbox["rootless"] and sandbox["cgroup_version"] == "v1":
        assert sandbox["limits_enforced"] == {"memory": False, "cpus": False, "pids": False}
        assert "NOT enforced" in ran.stderr  # said before the run
    # the same image bits as under Docker: the id of the content-addressed tag in the engine
    assert record["image"]["id"] == docker_engine.images.get(record["image"]["tag"]).id
    # the sandbox, seen from inside: the probe reports it into out/, which the harness reads back
    inside = json.loads((LocalStore(open_store).run_dir(record["run_id"]) / "out" / "sandbox.json").read_text())
    assert inside["uid"] == 65534 and inside["network"] is False and inside["root_writable"] is False
    assert inside["cap_eff"] == "0000000000000000" and inside["no_new_privs"] == "1"
    assert record["metrics_summary"]["probe/value"]["count"] >= 1
    import pyarrow.parquet as pq

    names = set(
        pq.read_table(LocalStore(open_store).run_dir(record["run_id"]) / "system.parquet").column("name").to_pylist()
    )
    assert {"memory/used_bytes", "pids/current"} <= names
    assert LocalStore(open_store).verify(record["run_id"]) == []
    assert podman_services() == []  # the service the harness started is gone
    doctor = cli("doctor")
    assert "podman" in doctor.stdout and f"cgroup {sandbox['cgroup_version']}" in doctor.stdout

    if not all(sandbox["limits_enforced"].values()):
        refused = cli("run", "manifests/noop.yaml", "--runtime", "podman", "--smoke", "--rerun", "--require-limits")
        assert refused.returncode == 2 and "--require-limits" in refused.stderr and refused.stderr.count("\n") == 1


def test_registry_image_by_digest_in_podman_and_docker(
    podman_facts, base_image, docker_engine, registry, open_store, cli
):
    manifest, ref, image_id = registry_manifest(docker_engine, registry, open_store.parent, "podman-test")
    project = manifest.parent.parent
    ran = cli("run", str(manifest), "--runtime", "podman", "--smoke", "--quiet", cwd=project)
    assert ran.returncode == 0, ran.stderr[-2000:]
    ran = cli("run", str(manifest), "--runtime", "docker", "--smoke", "--quiet", "--rerun", cwd=project)
    assert ran.returncode == 0, ran.stderr[-2000:]
    records = {r["runtime"]: r for r in LocalStore(open_store).records()}
    assert records["podman"]["image"]["id"] == records["docker"]["image"]["id"] == image_id
    assert records["podman"]["image"]["registry_ref"] == ref
    assert podman_services() == []


@pytest.mark.slow
def test_dqn_smoke_bit_identical_under_podman_and_docker(podman_facts, rl_image, open_store, cli):
    from harness.reproduce.compare import compare_runs

    stores = {runtime: open_store.parent / runtime for runtime in ("docker", "podman")}
    for runtime, home in stores.items():
        ran = cli(
            "run",
            "manifests/dqn-cartpole.yaml",
            "--smoke",
            "--runtime",
            runtime,
            "--quiet",
            env={"HARNESS_HOME": str(home)},
        )
        assert ran.returncode == 0, ran.stderr[-3000:]
    (docker_run,) = LocalStore(stores["docker"]).records()
    (podman_run,) = LocalStore(stores["podman"]).records()
    assert docker_run["image"]["id"] == podman_run["image"]["id"]
    verdict = compare_runs(
        LocalStore(stores["docker"]).run_dir(docker_run["run_id"]),
        LocalStore(stores["podman"]).run_dir(podman_run["run_id"]),
    )
    assert verdict.verdict == "identical", verdict.to_dict()
    assert (
        docker_run["metrics_summary"]["charts/episodic_return"]
        == podman_run["metrics_summary"]["charts/episodic_return"]
    )


def registry_manifest(docker_engine, registry, root: Path, tag: str) -> tuple[Path, str, str]:
    """The noop image pushed to ``registry``, and a project whose manifest names it by digest:
    (manifest, registry reference, image id)."""
    from harness.images.build import build_image
    from harness.images.registry import Registry, push_image

    noop = build_image(REPO / "images" / "noop", REPO / "lockfiles" / "noop.txt")
    ref = push_image(docker_engine, noop.id, Registry(registry.address, "lab"), "harness/noop", tag)
    project = root / "project"
    shutil.copytree(REPO / "images" / "noop", project / "images" / "noop")
    manifest = project / "manifests" / "noop-ref.yaml"
    manifest.parent.mkdir()
    text = (REPO / "manifests" / "noop.yaml").read_text()
    manifest.write_text(
        text.replace("image: {build: images/noop, lockfile: lockfiles/noop.txt}", f"image: {{ref: {ref}}}")
    )
    return manifest, ref, noop.id


@pytest.mark.slurm
def test_slurm_sweep_with_podman_pulling_by_digest(podman_facts, base_image, docker_engine, registry, open_store, cli):
    try:
        answers = subprocess.run(["sinfo", "-h"], capture_output=True, timeout=20).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        answers = False
    if not answers:
        need("Slurm", "no cluster answers (scripts/start-slurm.sh)")
    manifest, ref, image_id = registry_manifest(docker_engine, registry, open_store.parent, "slurm-test")
    submitted = cli(
        "run",
        str(manifest),
        "--smoke",
        "--seed",
        "0",
        "--seed",
        "1",
        "--backend",
        "slurm",
        "--runtime",
        "podman",
        cwd=manifest.parent.parent,
    )
    assert submitted.returncode == 0, submitted.stdout[-2000:] + submitted.stderr[-2000:]
    deadline = time.monotonic() + 600
    while True:
        status = cli("status", "--json")
        assert status.returncode == 0, status.stderr
        progress = json.loads(status.stdout)
        if progress["finished"]:
            break
        assert time.monotonic() < deadline, progress
        time.sleep(3)
    assert progress["done"] == 2, progress
    records = list(LocalStore(open_store).records())
    assert len(records) == 2 and {r["runtime"] for r in records} == {"podman"}
    assert all(r["status"] == "completed" and r["sandbox"]["engine"] == "podman" for r in records)
    assert {r["image"]["id"] for r in records} == {image_id} and {r["image"]["registry_ref"] for r in records} == {ref}
    # each task stops the service it started once its record is sealed, as it exits
    deadline = time.monotonic() + 60
    while podman_services() and time.monotonic() < deadline:
        time.sleep(1)
    assert podman_services() == []
