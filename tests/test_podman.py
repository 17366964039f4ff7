"""The Podman runtime with real parts: rootless Podman as the unprivileged user that the set-up
creates (``harness-podman``), driven through its Docker-compatible API; images from the Docker
engine or from a real registry by digest; the DQN smoke run bit-identical to Docker's; a Slurm sweep
on Podman."""

from __future__ import annotations

import json
import os
import pwd
import shlex
import shutil
import subprocess
import sys
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


def test_a_podman_socket_that_never_answers_is_one_line_in_seconds(open_store, cli):
    """A service that accepts connections and never answers (hung): a bounded wait, one line."""
    import socket

    path = open_store.parent / "hung.sock"
    with socket.socket(socket.AF_UNIX) as hung:
        hung.bind(str(path))
        hung.listen(8)
        started = time.monotonic()
        ran = cli(
            "run", "manifests/noop.yaml", "--runtime", "podman", "--smoke", env={"HARNESS_PODMAN_SOCKET": str(path)}
        )
        waited = time.monotonic() - started
    assert ran.returncode == 2 and "Traceback" not in ran.stderr, ran.stderr[-2000:]
    assert ran.stderr.strip().splitlines() == [
        f"error: HARNESS_PODMAN_SOCKET={path}: no Podman service answers there in 5s "
        "(start one with `podman system service --time=0 unix://<path>`, or unset it)"
    ]
    assert waited < 120


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


PLAIN_USER = os.environ.get("HARNESS_PLAIN_USER", "harness-plain")


@pytest.fixture
def plain_user(podman_facts) -> pwd.struct_passwd:
    """The ordinary user of scripts/setup-podman.sh (no login session: no XDG_RUNTIME_DIR, and no
    /run/user/<uid> unless something made one), with its subordinate id ranges."""
    try:
        entry = pwd.getpwnam(PLAIN_USER)
    except KeyError:
        need("an ordinary user", f"no user {PLAIN_USER} (scripts/setup.sh --with-podman)")
    for file in ("/etc/subuid", "/etc/subgid"):
        ranges = Path(file).read_text() if Path(file).exists() else ""
        if not any(line.startswith(f"{PLAIN_USER}:") for line in ranges.splitlines()):
            need("an ordinary user", f"{PLAIN_USER} has no range in {file} (scripts/setup.sh --with-podman)")
    if os.geteuid() != 0:
        need("an ordinary user", "the test switches to it, so it runs as root")
    return entry


def _closed_folder(path: Path) -> Path | None:
    """The first folder above ``path`` that other users cannot enter (root's 0700 home)."""
    for folder in [*reversed(path.parents), path]:
        if not folder.stat().st_mode & 0o001:
            return folder
    return None


def as_user(
    user: pwd.struct_passwd, args: list[str], cwd: Path, env: dict[str, str], timeout: float = 600
) -> subprocess.CompletedProcess:
    """``python -m harness ARGS`` as ``user``, started as a batch job starts it: a bare environment
    (no XDG_RUNTIME_DIR), no login session, no supplementary groups (so no docker group).

    This host's Python may sit under a folder that only root can enter (a pyenv in root's home);
    the command then runs in a mount namespace of its own where that folder is a world-readable
    tmpfs that holds only the Python installation: the user's rights are otherwise its own."""
    python = Path(sys.base_prefix).resolve()
    closed = _closed_folder(python)
    program = [sys.executable, "-m", "harness", *args]
    environment = {
        "HOME": user.pw_dir,
        "USER": user.pw_name,
        "LOGNAME": user.pw_name,
        "PATH": f"{Path(sys.executable).parent}:/usr/sbin:/usr/bin:/sbin:/bin",
        "LANG": "C.UTF-8",
        **env,
    }
    switch = ["setpriv", f"--reuid={user.pw_uid}", f"--regid={user.pw_gid}", "--clear-groups", "env", "-i"]
    switch += [f"{key}={value}" for key, value in environment.items()]
    command = [*switch, *program]
    if closed is not None:
        kept = Path(tempfile.mkdtemp(prefix="harness-python-"))
        inner = python.relative_to(closed).parts[0]
        script = " && ".join(
            [
                f"mount --bind {shlex.quote(str(closed / inner))} {shlex.quote(str(kept))}",
                f"mount -t tmpfs -o mode=0755 tmpfs {shlex.quote(str(closed))}",
                f"mkdir {shlex.quote(str(closed / inner))}",
                f"mount --move {shlex.quote(str(kept))} {shlex.quote(str(closed / inner))}",
                f"exec {shlex.join(command)}",
            ]
        )
        command = ["unshare", "--mount", "--propagation", "private", "sh", "-c", script]
    try:
        return subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=timeout, env={})
    finally:
        if closed is not None:
            kept.rmdir()


def user_processes(uid: int) -> list[str]:
    """Command lines of the processes ``uid`` still runs (zombies waiting for a reaper aside)."""
    import psutil

    found = []
    for process in psutil.process_iter(["uids", "status", "cmdline"]):
        try:
            if process.info["uids"].real == uid and process.info["status"] != psutil.STATUS_ZOMBIE:
                found.append(" ".join(process.info["cmdline"] or []))
        except psutil.Error:
            continue
    return found


def test_ordinary_user_without_login_session_runs_rootless_podman(plain_user, base_image, docker_engine, registry, cli):
    """A user with no XDG_RUNTIME_DIR and no /run/user/<uid> (``su``, a batch job): the harness
    takes Podman's own fallback under the temp dir, runs an image by digest that its Podman pulls,
    and leaves no process behind; a recipe it cannot build (no Docker engine for it) is one line."""
    uid = plain_user.pw_uid
    login_dir = Path(f"/run/user/{uid}")
    had_login_dir = login_dir.exists()
    root = Path(tempfile.mkdtemp(prefix="harness-plain-test-", dir="/tmp"))
    try:
        root.chmod(0o755)
        manifest, ref, image_id = registry_manifest(docker_engine, registry, root, "plain-user")
        store = root / "store"
        store.mkdir()
        os.chown(store, uid, plain_user.pw_gid)
        env = {"HARNESS_HOME": str(store), "PYTHONPATH": str(REPO)}
        if os.environ.get("CI"):
            env["CI"] = os.environ["CI"]

        built = as_user(plain_user, ["run", "manifests/noop.yaml", "--smoke", "--runtime", "podman"], REPO, env)
        assert built.returncode == 2, built.stdout[-2000:] + built.stderr[-2000:]
        assert "Traceback" not in built.stderr and built.stderr.strip().splitlines()[-1].startswith("error: ")
        assert "use image.ref by digest" in built.stderr

        ran = as_user(plain_user, ["run", str(manifest), "--smoke", "--runtime", "podman"], manifest.parent.parent, env)
        assert ran.returncode == 0, ran.stdout[-2000:] + ran.stderr[-2000:]
        (record,) = LocalStore(store).records()
        assert record["status"] == "completed" and record["runtime"] == "podman"
        assert record["sandbox"]["rootless"] is True and record["sandbox"]["user"] == PLAIN_USER
        assert record["image"]["id"] == image_id and record["image"]["registry_ref"] == ref
        assert had_login_dir or not login_dir.exists()  # nothing made where only a login session may
        runtime_dir = login_dir if had_login_dir else Path(f"/tmp/podman-run-{uid}")
        assert runtime_dir.stat().st_uid == uid and runtime_dir.stat().st_mode & 0o777 == 0o700
        assert user_processes(uid) == []  # the service and the pause process it brought up are gone
    finally:
        shutil.rmtree(root, ignore_errors=True)


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
