"""The Ray backend against a real three-node Ray cluster (head + 2 workers, each in its own network
namespace, started by scripts/start-ray.sh) and the real Docker engine."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import subprocess
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from harness.backends import run_sweep, sweep_progress
from harness.backends.ray import copy_run, result_of
from harness.backends.ray_task import result_line
from harness.backends.sweeps import load_state
from harness.errors import HarnessError
from harness.manifest import load_manifest
from harness.run.plan import expand
from harness.store.local import LocalStore
from tests.conftest import REPO, need, noop_variant, run_cli

ADDRESS = os.environ.get("HARNESS_RAY_ADDRESS", "http://198.18.0.10:8265")


def answers(address: str) -> bool:
    """Whether the cluster's Jobs API answers."""
    try:
        from ray.job_submission import JobSubmissionClient

        JobSubmissionClient(address).list_jobs()
    except (OSError, RuntimeError, ValueError):
        return False
    return True


@pytest.fixture(scope="session")
def ray_cluster() -> str:
    """The Jobs API address of the three-node cluster; starts it when nothing answers."""
    if shutil.which("ray") is None:
        need("ray", "not installed (pip install 'harness[ray]')")
    if not answers(ADDRESS) and os.geteuid() == 0 and "HARNESS_RAY_ADDRESS" not in os.environ:
        subprocess.run([str(REPO / "scripts" / "start-ray.sh")], capture_output=True, timeout=600)
    if not answers(ADDRESS):
        need("ray", f"no Ray cluster answers at {ADDRESS} (scripts/start-ray.sh starts one)")
    return ADDRESS


def metric_values(store: LocalStore, run_id: str) -> list[tuple[str, int, float]]:
    """A run's metric points, without their wall-clock times."""
    rows = pq.read_table(store.run_dir(run_id) / "metrics.parquet").to_pylist()
    return [(row["name"], row["step"], row["value"]) for row in rows]


def test_sweep_over_three_nodes_matches_the_local_backend(tmp_path: Path, noop_image, ray_cluster: str) -> None:
    manifest = noop_variant(tmp_path / "project", "seeds: [0]", "seeds: [0, 1, 2, 3]")
    specs = expand(load_manifest(manifest), smoke=True)
    on_ray, here = LocalStore(tmp_path / "ray-store"), LocalStore(tmp_path / "local-store")

    lines: list[str] = []
    outcome = run_sweep(specs, backend="ray", address=ray_cluster, store=on_ray, echo=lines.append)
    local = run_sweep(specs, backend="local", jobs=2, store=here, echo=lambda line: None)

    assert outcome.ok and local.ok, lines
    assert sorted(r["run_id"] for r in outcome.records) == sorted(s.run_id for s in specs)
    for spec in specs:
        record = on_ray.load(spec.run_id)
        assert record["status"] == "completed"
        assert record["ray"]["job_id"].startswith(f"harness-{spec.run_id}-")
        assert record["ray"]["files_came"].startswith("by path")  # the nodes share this file system
        assert on_ray.verify(spec.run_id) == []  # every file as the node checksummed it
        assert metric_values(on_ray, spec.run_id) == metric_values(here, spec.run_id)
        assert record["metrics_summary"] == here.load(spec.run_id)["metrics_summary"]
    # harness status reads the sweep back: every run done, the Ray job ids listed, nothing running
    progress = sweep_progress(load_state(on_ray, outcome.plan.sweep_id), on_ray)
    assert (progress["backend"], progress["done"], progress["running"]) == ("ray", 4, 0)
    assert len(progress["ray_job_ids"]) == 4


def test_gpu_manifest_is_refused_before_anything_is_submitted(tmp_path: Path, ray_cluster: str) -> None:
    from ray.job_submission import JobSubmissionClient

    manifest = noop_variant(tmp_path / "project", "accelerator: cpu, gpus: 0", "accelerator: cuda, gpus: 1")
    before = len(JobSubmissionClient(ray_cluster).list_jobs())
    result = run_cli(
        "run", manifest, "--backend", "ray", "--address", ray_cluster, env={"HARNESS_HOME": str(tmp_path / "store")}
    )
    assert result.returncode == 2, result.stderr
    error = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(error) == 1 and "GPUs" in error[0] and "largest: 0" in error[0], result.stderr
    assert "Traceback" not in result.stderr
    assert len(JobSubmissionClient(ray_cluster).list_jobs()) == before


def test_no_address_is_one_line(tmp_path: Path) -> None:
    env = {"HARNESS_HOME": str(tmp_path / "store"), "HARNESS_RAY_ADDRESS": "", "RAY_ADDRESS": ""}
    result = run_cli("run", str(REPO / "manifests" / "noop.yaml"), "--backend", "ray", env=env)
    assert result.returncode == 2
    assert "--address" in result.stderr and "Traceback" not in result.stderr


def node_run(node_store: Path, run_id: str = "tiny-0123456789ab") -> dict:
    """A sealed run folder in a node's store, as ray_task leaves it; the result it prints."""
    folder = node_store / "runs" / run_id
    (folder / "out").mkdir(parents=True)
    (folder / "out" / "a.txt").write_text("payload\n")
    files = {"out/a.txt": hashlib.sha256(b"payload\n").hexdigest()}
    record = {"run_id": run_id, "status": "completed", "files": files}
    (folder / "record.json").write_text(json.dumps(record))
    result = result_of("noise\n" + result_line(record) + "\n")
    assert result is not None
    return result


def test_a_run_comes_home_whole_and_the_node_store_is_emptied(tmp_path: Path) -> None:
    store, node = LocalStore(tmp_path / "store"), tmp_path / "node"
    result = node_run(node)
    record = copy_run(node, result, "tiny-0123456789ab", store, "job-1")
    assert record["ray"]["job_id"] == "job-1"
    assert store.verify("tiny-0123456789ab") == []
    assert not node.exists()
    # a second attempt of the same run lands beside the first, under a fresh attempt id
    again = copy_run(node, node_run(node), "tiny-0123456789ab", store, "job-2")
    assert again["run_id"].startswith("tiny-0123456789ab-r")


@pytest.mark.parametrize("hostile", ["link", "tampered", "other-run", "escape"])
def test_hostile_node_output_is_refused(tmp_path: Path, hostile: str) -> None:
    store, node = LocalStore(tmp_path / "store"), tmp_path / "node"
    result = node_run(node)
    payload = node / "runs" / "tiny-0123456789ab" / "out" / "a.txt"
    secret = tmp_path / "secret.txt"
    secret.write_text("payload\n")  # same bytes: only the link itself can give it away
    base = "tiny-0123456789ab"
    if hostile == "link":
        payload.unlink()
        payload.symlink_to(secret)
    elif hostile == "tampered":
        payload.write_text("changed on the way\n")
    elif hostile == "other-run":
        base = "tiny-ffffffffffff"
    else:
        record_path = node / "runs" / "tiny-0123456789ab" / "record.json"
        record = json.loads(record_path.read_text())
        record["files"] = result["files"] = {"../../../secret.txt": result["files"]["out/a.txt"]}
        record_path.write_text(json.dumps(record))
    with pytest.raises(HarnessError):
        copy_run(node, result, base, store, "job-1")
    assert not store.runs_dir.exists() or not any(store.runs_dir.iterdir())  # nothing half-copied is left


def test_result_line_is_read_from_the_end_and_bounded() -> None:
    assert result_of("harness-ray-record {not json\n") is None
    assert result_of("harness-ray-record [1, 2]\n") is None
    assert result_of("x" * 3_000_000) is None
    line = result_line({"run_id": "r", "status": "completed", "files": {}})
    assert result_of(f"{line}\nharness-ray-record {{}}\n") is None  # only the last one counts


def wait_for(predicate, timeout: float, what: str):  # type: ignore[no-untyped-def]
    """Poll ``predicate`` until it returns something true; fail after ``timeout`` seconds."""
    import time

    deadline = time.monotonic() + timeout
    while not (value := predicate()):
        assert time.monotonic() < deadline, f"timed out after {timeout:.0f}s waiting for {what}"
        time.sleep(0.5)
    return value


def raylet_pids(namespace: str) -> list[int]:
    """The raylet of one node of the cluster (by the pids in its network namespace)."""
    shown = subprocess.run(["ip", "netns", "pids", namespace], capture_output=True, text=True)
    pids = [int(p) for p in shown.stdout.split()]
    return [
        p for p in pids if Path(f"/proc/{p}/comm").exists() and Path(f"/proc/{p}/comm").read_text().strip() == "raylet"
    ]


def test_a_worker_killed_mid_sweep_loses_no_run(tmp_path: Path, noop_image, ray_cluster: str) -> None:
    import threading

    from ray.job_submission import JobSubmissionClient
    from ray.util.state import list_nodes

    if os.geteuid() != 0:
        need("ray", "killing a node's raylet needs root (its network namespace)")
    start = [str(REPO / "scripts" / "start-ray.sh")]
    assert subprocess.run(start, capture_output=True, timeout=600).returncode == 0  # every node up
    manifest = noop_variant(tmp_path / "project", "mode: ok, seconds: 5,", "mode: sleep, seconds: 30,")
    specs = expand(load_manifest(manifest), seeds=[0, 1, 2, 3])
    store = LocalStore(tmp_path / "store")
    lines: list[str] = []
    outcomes: list = []
    sweep = threading.Thread(
        target=lambda: outcomes.append(
            run_sweep(specs, backend="ray", address=ray_cluster, store=store, echo=lines.append)
        )
    )
    sweep.start()
    client = JobSubmissionClient(ray_cluster)
    workers = {"198.18.0.11": "hray-w1", "198.18.0.12": "hray-w2"}

    def started_on_worker():  # type: ignore[no-untyped-def]
        assert sweep.is_alive(), f"the sweep ended before a node was killed: {lines}"
        ips = {node.node_id: node.node_ip for node in list_nodes(address=ray_cluster)}
        for job in client.list_jobs():
            ours = (job.metadata or {}).get("harness_run") in {s.run_id for s in specs}
            if ours and job.status.value == "RUNNING" and ips.get(job.driver_node_id) in workers:
                node_store = Path(job.entrypoint.split()[-1])
                if list(node_store.glob("runs/*/record.json")):  # its run has begun
                    return job, workers[ips[job.driver_node_id]]
        return None

    try:
        job, namespace = wait_for(started_on_worker, 240, "a run started on a worker node")
        for pid in raylet_pids(namespace):
            os.kill(pid, 9)
        sweep.join(timeout=600)
        assert not sweep.is_alive() and outcomes, lines
    finally:
        subprocess.run(start, capture_output=True, timeout=600)  # bring the node back for the next tests
    outcome = outcomes[0]
    lost_job = client.get_job_info(job.submission_id)
    assert lost_job.status.value == "FAILED", (lost_job.status, lost_job.message, lines)
    assert outcome.ok, lines
    assert any("submitting it again" in line for line in lines), lines
    lost = job.metadata["harness_run"]
    again = store.load(lost)
    assert again["status"] == "completed" and again["ray"]["job_id"] != job.submission_id
    for record in store.records():
        assert record["status"] != "running"
        assert store.verify(record["run_id"]) == []


def test_ctrl_c_stops_the_ray_jobs_and_brings_their_records_home(tmp_path: Path, noop_image, ray_cluster: str) -> None:
    import signal
    import sys

    from ray.job_submission import JobSubmissionClient

    manifest = noop_variant(tmp_path / "project", "mode: ok, seconds: 5,", "mode: sleep, seconds: 300,")
    home = tmp_path / "store"
    command = [sys.executable, "-m", "harness", "run", manifest, "--seed", "0", "--seed", "1"]
    command += ["--backend", "ray", "--address", ray_cluster]
    client = JobSubmissionClient(ray_cluster)
    earlier = {j.submission_id for j in client.list_jobs()}
    process = subprocess.Popen(
        command, cwd=REPO, env={**os.environ, "HARNESS_HOME": str(home)}, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    run_ids = {s.run_id for s in expand(load_manifest(manifest), seeds=[0, 1])}

    def both_started():  # type: ignore[no-untyped-def]
        assert process.poll() is None, process.communicate()
        jobs = [j for j in client.list_jobs() if j.submission_id not in earlier]
        ours = [j for j in jobs if (j.metadata or {}).get("harness_run") in run_ids]
        begun = [j for j in ours if list(Path(j.entrypoint.split()[-1]).glob("runs/*/record.json"))]
        return ours if len(begun) == 2 else None

    ours = wait_for(both_started, 240, "both runs to start on the cluster")
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=300)
    assert process.returncode == 130, err
    assert b"Traceback" not in err
    for job in ours:
        assert client.get_job_status(job.submission_id).value == "STOPPED"
    store = LocalStore(home)
    for run_id in run_ids:
        record = store.load(run_id)
        assert record["status"] == "cancelled", record.get("detail")
        assert store.verify(run_id) == []


def test_reproduce_on_ray_gives_the_verdict_of_a_local_reproduction(
    tmp_path: Path, noop_image, ray_cluster: str
) -> None:
    manifest = noop_variant(tmp_path / "project", "seeds: [0]", "seeds: [0, 1]")
    env = {"HARNESS_HOME": str(tmp_path / "store")}
    ran = run_cli("run", manifest, "--smoke", "--quiet", env=env)
    assert ran.returncode == 0, ran.stderr
    store = LocalStore(tmp_path / "store")
    originals = {r["seed"]: r["run_id"] for r in store.records()}
    common = ("reproduce", originals[0], "--json")
    local = run_cli(*common, "--out", str(tmp_path / "local"), env=env)
    on_ray = run_cli(*common, "--backend", "ray", "--address", ray_cluster, "--out", str(tmp_path / "ray"), env=env)
    assert local.returncode == 0, local.stderr[-2000:]
    assert on_ray.returncode == 0, on_ray.stderr[-2000:]
    here, there = json.loads(local.stdout), json.loads(on_ray.stdout)
    assert there["verdict"] == here["verdict"] == "identical"
    assert [p["verdict"] for p in there["pairs"]] == [p["verdict"] for p in here["pairs"]]
    assert "submitted 2 runs to the Ray cluster" in on_ray.stderr
    # no registry digest in the record: the first seed's node rebuilt the image from the recipe
    assert "image: built on this node from the recipe" in on_ray.stderr
    for seed, (mine, theirs) in enumerate(zip(here["reproductions"], there["reproductions"], strict=True)):
        record = store.load(theirs)
        assert record["ray"]["job_id"] and record["reproduces"] == originals[seed] and record["seed"] == seed
        assert record["reproduction_verdict"] == "identical" and store.verify(theirs) == []
        assert metric_values(store, theirs) == metric_values(store, mine)


def test_retry_failed_on_ray_reruns_only_the_failed_runs(tmp_path: Path, noop_image, ray_cluster: str) -> None:
    manifest = noop_variant(tmp_path / "project", "tags: [test]", "tags: [test]\nsweep: {mode: [ok, fail]}")
    specs = expand(load_manifest(manifest), smoke=True)
    store = LocalStore(tmp_path / "store")
    first = run_sweep(specs, backend="ray", address=ray_cluster, store=store, echo=lambda line: None)
    status = {r["params"]["mode"]: r for r in first.records}
    assert (status["ok"]["status"], status["fail"]["status"]) == ("completed", "failed")
    kept = store.load(status["ok"]["run_id"])

    env = {"HARNESS_HOME": str(tmp_path / "store")}
    command = ("run", manifest, "--smoke", "--backend", "ray", "--address", ray_cluster)
    again = run_cli(*command, "--retry-failed", env=env)
    assert again.returncode == 1, again.stderr  # the failing run fails again
    assert "1 of 2 runs to run, 1 already completed" in again.stdout + again.stderr
    assert "submitted 1 runs to the Ray cluster" in again.stdout + again.stderr
    failed_id = status["fail"]["run_id"]
    attempts = [r for r in store.records() if r["run_id"].startswith(failed_id)]
    assert len(attempts) == 2 and all(r["status"] == "failed" and r["ray"]["job_id"] for r in attempts)
    assert store.load(kept["run_id"]) == kept  # the completed run was not touched
    assert len([r for r in store.records() if r["params"]["mode"] == "ok"]) == 1
    sweep = load_state(store, first.plan.sweep_id)
    assert [len(s.ray_job_ids) for s in sweep.submissions] == [2, 1]


HOST_SIDE = "198.18.0.1"  # the host's address on the cluster's bridge (scripts/start-ray.sh)


@pytest.fixture
def cluster_registry(tmp_path: Path):  # type: ignore[no-untyped-def]
    """A TLS registry on the cluster's bridge, which the Docker engine is told to trust (a
    certs.d entry for this registry's address alone, removed afterwards)."""
    from tests.registryserver import RegistryServer

    if shutil.which("docker-registry") is None or shutil.which("openssl") is None:
        need("image registry", "docker-registry and openssl are needed (scripts/setup.sh --with-podman)")
    if os.geteuid() != 0:
        need("image registry", "telling the Docker engine to trust a test registry needs root")
    with RegistryServer(tmp_path / "registry", host=HOST_SIDE) as server:
        trust = Path("/etc/docker/certs.d") / server.address
        trust.mkdir(parents=True)
        try:
            shutil.copy(server.ca_file, trust / "ca.crt")
            yield server
        finally:
            shutil.rmtree(trust, ignore_errors=True)
            with contextlib.suppress(OSError):  # certs.d itself, when no one else uses it
                trust.parent.rmdir()


def test_reproduce_on_ray_pulls_the_pushed_image_by_digest_on_the_node(
    tmp_path: Path, noop_image, ray_cluster: str, cluster_registry, docker_engine
) -> None:
    manifest = noop_variant(tmp_path / "project")
    env = {"HARNESS_HOME": str(tmp_path / "store"), "SSL_CERT_FILE": str(cluster_registry.ca_file)}
    ran = run_cli("run", manifest, "--smoke", "--quiet", env=env)
    assert ran.returncode == 0, ran.stderr
    store = LocalStore(tmp_path / "store")
    (original,) = store.records()
    pushed = run_cli("push", original["run_id"], "--registry", f"{cluster_registry.address}/lab", env=env)
    assert pushed.returncode == 0, pushed.stderr
    ref = store.load(original["run_id"])["image"]["registry_ref"]
    assert ref.startswith(f"{cluster_registry.address}/lab/harness/noop@sha256:")
    from docker.errors import ImageNotFound

    with pytest.raises(ImageNotFound):  # the engine knows the image by id only: the node must pull
        docker_engine.images.get(ref)
    try:
        on_ray = run_cli(
            "reproduce", original["run_id"], "--json", "--backend", "ray", "--address", ray_cluster, env=env
        )
        assert on_ray.returncode == 0, on_ray.stderr[-2000:]
        result = json.loads(on_ray.stdout)
        assert result["verdict"] == "identical"
        assert result["image"]["source"] == "registry" and result["image"]["ref"] == ref
        assert result["image"]["same_image"] and result["image"]["id"] == original["image"]["id"]
        record = store.load(result["reproduction"])
        assert record["image"]["source"] == "registry" and record["image"]["registry_ref"] == ref
        assert record["ray"]["image"].startswith(f"pulled by digest {ref}")
        assert docker_engine.images.get(ref).id == original["image"]["id"]  # what the node pulled
        assert store.verify(record["run_id"]) == []
    finally:  # the registry's name for the image goes again; the image stays under its own tag
        with contextlib.suppress(ImageNotFound):
            docker_engine.images.remove(ref, noprune=True)


def test_without_a_shared_file_system_records_come_home_through_ray(
    tmp_path: Path, noop_image, ray_cluster: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from ray.job_submission import JobSubmissionClient

    monkeypatch.setenv("HARNESS_RAY_FILES", "ray")  # as if the nodes were other machines
    manifest = noop_variant(tmp_path / "project", "seeds: [0]", "seeds: [0, 1]")
    specs = expand(load_manifest(manifest), smoke=True)
    store = LocalStore(tmp_path / "store")
    lines: list[str] = []
    outcome = run_sweep(specs, backend="ray", address=ray_cluster, store=store, echo=lines.append)
    assert outcome.ok, lines
    client = JobSubmissionClient(ray_cluster)
    for spec in specs:
        record = store.load(spec.run_id)
        assert record["ray"]["files_came"].startswith("through Ray"), record["ray"]
        assert store.verify(spec.run_id) == [] and record["files"]
        job = client.get_job_info(record["ray"]["job_id"])
        node_store = Path(job.entrypoint.split()[-1])
        assert not node_store.exists()  # the node removed its folder before the job ended: no path to read
        assert "--marker" not in job.entrypoint


def tar_of(members: list[tuple[str, bytes, bytes]]) -> bytes:
    """A gzip'd tar whose members are (name, type, data); type b"0" file, b"2" symlink to data."""
    import io
    import tarfile

    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
        for name, kind, data in members:
            info = tarfile.TarInfo(name)
            if kind == tarfile.SYMTYPE:
                info.type, info.linkname = kind, data.decode()
                archive.addfile(info)
            else:
                info.size = len(data)
                archive.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


@pytest.mark.parametrize(
    "hostile", ["link", "escape", "tampered", "unlisted", "missing", "twice", "bomb", "other-sum", "not-gzip"]
)
def test_hostile_archives_from_a_node_are_refused(tmp_path: Path, hostile: str) -> None:
    import tarfile

    from harness.backends.ray import receive_run
    from harness.backends.ray_files import archive_lines, pack_files

    node = tmp_path / "node"
    result = node_run(node)
    run_dir = node / "runs" / "tiny-0123456789ab"
    record_bytes = (run_dir / "record.json").read_bytes()
    good = [("record.json", tarfile.REGTYPE, record_bytes), ("out/a.txt", tarfile.REGTYPE, b"payload\n")]
    members = {
        "link": [good[0], ("out/a.txt", tarfile.SYMTYPE, b"/etc/passwd")],
        "escape": [*good, ("../../evil.txt", tarfile.REGTYPE, b"x")],
        "tampered": [good[0], ("out/a.txt", tarfile.REGTYPE, b"changed on the way\n")],
        "unlisted": [*good, ("out/extra.txt", tarfile.REGTYPE, b"x")],
        "missing": good[:1],
        "twice": [*good, good[1]],
        "bomb": [*good, ("out/a.txt.big", tarfile.REGTYPE, bytes(300 << 20))],
    }.get(hostile, good)
    archive = b"not gzip at all" if hostile == "not-gzip" else tar_of(members)
    digest = hashlib.sha256(b"another archive" if hostile == "other-sum" else archive).hexdigest()
    log = "noise\n" + "\n".join(archive_lines(archive)) + "\n"
    store = LocalStore(tmp_path / "store")
    with pytest.raises(HarnessError) as refused:
        receive_run(log, {**result, "archive_sha256": digest}, "tiny-0123456789ab", store, "job-1")
    assert "Ray job job-1" in str(refused.value)
    assert not store.runs_dir.exists() or not any(store.runs_dir.iterdir())  # nothing half-unpacked is left
    # the same run packed honestly comes home whole
    honest = pack_files(run_dir, result["files"])
    log = "\n".join(archive_lines(honest))
    record = receive_run(
        log, {**result, "archive_sha256": hashlib.sha256(honest).hexdigest()}, "tiny-0123456789ab", store, "job-2"
    )
    assert store.verify(record["run_id"]) == [] and record["ray"]["files_came"].startswith("through Ray")
