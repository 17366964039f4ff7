"""Podman and registry figures, each against a baseline measured in the same run (noisy machines).

1. ``harness run --runtime podman`` of the no-op manifest vs a bare rootless ``podman run --rm`` of
   the same image with the same sandbox flags, as the same unprivileged user. Two harness figures:
   with the service the harness starts (and stops) itself, and with a service already running
   (``HARNESS_PODMAN_SOCKET``). Interleaved, median of N.
2. ``harness reproduce`` of a run whose record names a registry image (pulled by digest, no build)
   vs ``harness reproduce --rebuild`` (a build from the recipe), with a recipe of its own (the noop
   recipe plus one file) so its image can be removed from the engine before each registry timing.

    python benchmarks/bench_podman.py [--repeats 5]

Needs the Docker engine, the base image, podman and docker-registry (``scripts/setup.sh --with-podman``);
run as root (Podman runs as ``harness-podman``) or as the Podman user itself.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import uuid
from pathlib import Path

from bench_core import SANDBOX_FLAGS, timed  # the same baseline flags and timer

REPO = Path(__file__).resolve().parents[1]
MANIFEST = REPO / "manifests" / "noop.yaml"


def podman_overhead(repeats: int, root: Path) -> dict[str, float]:
    """Medians of: harness run (own service), harness run (running service), bare podman run."""
    from harness.runtime.podman import _pid_alive, _read_pid, podman_user

    pause_file = podman_user().runtime_dir / "libpod" / "tmp" / "pause.pid"
    pause_before = _read_pid(pause_file) if _pid_alive(_read_pid(pause_file)) else None
    try:
        return _podman_overhead(repeats, root)
    finally:
        # the bare `podman run`s bring up the user's pause process: end it if this script made it
        pause = _read_pid(pause_file)
        if pause is not None and pause != pause_before and _pid_alive(pause):
            os.kill(pause, 15)


def _podman_overhead(repeats: int, root: Path) -> dict[str, float]:
    from harness.runtime.podman import PodmanService, podman_user

    harness = [sys.executable, "-m", "harness"]
    env = {"HARNESS_HOME": str(root / "store")}
    run = [*harness, "run", str(MANIFEST), "--runtime", "podman", "--param", "mode=noop", "--quiet"]
    timed(run, env)  # the image reaches Podman once (docker save -> podman load), outside the timings
    user = podman_user()
    image_id = next(
        iter(
            json.loads((root / "store" / "runs" / p / "record.json").read_text())["image"]["id"]
            for p in os.listdir(root / "store" / "runs")
        )
    )
    out = root / "bare-out"
    out.mkdir(mode=0o777)
    out.chmod(0o777)
    sandbox = [
        *SANDBOX_FLAGS,
        "-v",
        f"{out}:/harness/out:rw",
        "-e",
        "HARNESS_OUT=/harness/out",
        "-v",
        f"{REPO / 'harness'}:/opt/harness/harness:ro",
        "-e",
        "PYTHONPATH=/opt/harness",
    ]
    as_user = ["runuser", "-u", user.name, "--"] if user.uid != os.geteuid() else []
    bare = [
        *as_user,
        "env",
        *(f"{k}={v}" for k, v in user.environment().items()),
        "podman",
        "run",
        "--rm",
        *sandbox,
        image_id,
        "python",
        "/workload/probe.py",
        "--mode",
        "noop",
    ]
    timed(bare)
    service = PodmanService(user)
    service.start()
    try:
        own, running, bare_times = [], [], []
        for _ in range(repeats):
            own.append(timed([*run, "--rerun"], env))
            running.append(timed([*run, "--rerun"], {**env, "HARNESS_PODMAN_SOCKET": str(service.socket)}))
            bare_times.append(timed(bare))
    finally:
        service.stop()
    return {
        "harness_own_service_s": statistics.median(own),
        "harness_running_service_s": statistics.median(running),
        "bare_podman_run_s": statistics.median(bare_times),
    }


def reproduce_times(repeats: int, root: Path) -> dict[str, float]:
    """Medians of: reproduce with the registry image (pulled by digest), reproduce --rebuild."""
    import docker

    sys.path.insert(0, str(REPO))
    from tests.registryserver import RegistryServer

    client = docker.from_env(timeout=600)
    project = root / "project"
    shutil.copytree(REPO / "images" / "noop", project / "images" / "noop")
    shutil.copytree(REPO / "lockfiles", project / "lockfiles")
    (project / "images" / "noop" / "workload" / "variant.txt").write_text(uuid.uuid4().hex)
    (project / "manifests").mkdir()
    shutil.copy(MANIFEST, project / "manifests" / "noop.yaml")
    env = {"HARNESS_HOME": str(root / "reproduce-store")}
    harness = [sys.executable, "-m", "harness"]
    timed([*harness, "run", "manifests/noop.yaml", "--smoke", "--quiet"], env, cwd=project)  # metrics to compare
    (record_path,) = (root / "reproduce-store" / "runs").glob("*/record.json")
    record = json.loads(record_path.read_text())
    with RegistryServer(root / "registry") as registry:
        timed(
            [*harness, "push", record["run_id"], "--registry", f"{registry.address}/bench", "--quiet"], env, cwd=project
        )
        registry_ref = json.loads(record_path.read_text())["image"]["registry_ref"]
        with_registry, with_rebuild = [], []
        try:
            for _ in range(repeats):
                for name in (record["image"]["tag"], registry_ref, record["image"]["id"]):
                    try:
                        client.images.remove(name, force=True)
                    except docker.errors.DockerException:
                        pass
                with_registry.append(timed([*harness, "reproduce", record["run_id"]], env, cwd=project))
                with_rebuild.append(timed([*harness, "reproduce", record["run_id"], "--rebuild"], env, cwd=project))
        finally:
            for name in (record["image"]["tag"], registry_ref):
                try:
                    client.images.remove(name, force=True)
                except docker.errors.DockerException:
                    pass
    return {
        "reproduce_registry_image_s": statistics.median(with_registry),
        "reproduce_rebuild_s": statistics.median(with_rebuild),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--skip-reproduce", action="store_true")
    args = parser.parse_args()
    sys.path.insert(0, str(REPO))
    root = Path(tempfile.mkdtemp(prefix="harness-bench-podman-", dir="/tmp"))
    root.chmod(0o755)  # rootless Podman's user mounts the run folders below it
    try:
        figures = podman_overhead(args.repeats, root)
        print(f"harness run --runtime podman (starts its own service): {figures['harness_own_service_s']:.2f} s")
        print(f"harness run --runtime podman (service running):        {figures['harness_running_service_s']:.2f} s")
        print(f"bare rootless podman run --rm, same image and flags:    {figures['bare_podman_run_s']:.2f} s")
        print(
            f"ratio (own service / bare): {figures['harness_own_service_s'] / figures['bare_podman_run_s']:.2f}x; "
            f"(running service / bare): {figures['harness_running_service_s'] / figures['bare_podman_run_s']:.2f}x"
        )
        if not args.skip_reproduce:
            times = reproduce_times(args.repeats, root)
            print(
                f"reproduce with the registry image (pull by digest, no build): {times['reproduce_registry_image_s']:.2f} s"
            )
            print(f"reproduce --rebuild (build from the recipe):                  {times['reproduce_rebuild_s']:.2f} s")
            print(
                f"ratio (registry / rebuild): {times['reproduce_registry_image_s'] / times['reproduce_rebuild_s']:.2f}x"
            )
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
