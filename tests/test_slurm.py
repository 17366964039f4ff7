"""The Slurm backend against a real one-node cluster (slurmctld + slurmd + munge from Debian,
started by scripts/start-slurm.sh) and a real Docker engine."""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

import pytest

from harness.backends import run_sweep, sweep_progress
from harness.backends.slurm import (
    SlurmError,
    array_script,
    check_shared,
    parse_sacct,
    parse_squeue,
    partitions,
    requeue,
    resource_options,
)
from harness.backends.sweeps import ATTEMPT_SUFFIX, attempt_records, load_state
from harness.manifest import Hardware, load_manifest
from harness.run.plan import expand
from harness.store.local import LocalStore
from tests import test_sweeps_local
from tests.test_sweeps_local import need, write_manifest

base_image_id = test_sweeps_local.base_image_id  # the same session fixture

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def slurm_cluster() -> list[str]:
    """The cluster's partitions; starts the one-node cluster when sinfo gets no answer."""

    def answers() -> bool:
        try:
            return subprocess.run(["sinfo", "-h"], capture_output=True, timeout=20).returncode == 0
        except (OSError, subprocess.TimeoutExpired):
            return False

    if not answers() and os.geteuid() == 0:
        subprocess.run([str(REPO / "scripts" / "start-slurm.sh")], capture_output=True, timeout=600)
    if not answers():
        need("no Slurm cluster answers (scripts/start-slurm.sh starts one)")
    return list(partitions())


def wait_for(predicate, timeout: float, what: str, interval: float = 0.5):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(interval)


def task_state(task: str) -> str:
    """A task's state as slurmctld reports it."""
    shown = subprocess.run(
        ["squeue", "-h", "-r", "--states=all", "-j", task, "-o", "%T"], capture_output=True, text=True
    )
    return shown.stdout.strip()


def test_sweep_of_six_runs_in_containers_through_slurm(
    tmp_path: Path, base_image_id: str, slurm_cluster: list[str]
) -> None:
    manifest = write_manifest(tmp_path, base_image_id, "import sys; print('a', sys.argv[1])", [1, 2], {"a": [1, 2, 3]})
    store = LocalStore(tmp_path / "store")
    specs = expand(load_manifest(manifest))

    outcome = run_sweep(specs, backend="slurm", jobs=2, store=store, echo=lambda line: None)

    assert len(outcome.slurm_job_ids) == 1
    state = load_state(store, outcome.plan.sweep_id)
    progress = wait_for(lambda: (p := sweep_progress(state, store))["finished"] and p, 180, "the sweep to finish")
    assert (progress["total"], progress["done"]) == (6, 6), progress
    records = [store.load(spec.run_id) for spec in specs]
    assert {r["status"] for r in records} == {"completed"}
    assert {r["runtime"] for r in records} == {"docker"}  # the node has an engine
    assert all(store.verify(r["run_id"]) == [] for r in records)
    assert sorted(r["params"]["a"] for r in records) == [1, 1, 2, 2, 3, 3]
    script = (store.root / "sweeps" / outcome.plan.sweep_id / "submission-0-0.sbatch").read_text()
    assert "--array=0-5%2" in script and "--cpus-per-task=1" in script
    # A second submission of the same sweep has nothing left to do.
    again = run_sweep(specs, backend="slurm", store=store, echo=lambda line: None)
    assert again.plan.to_run == [] and again.slurm_job_ids == []


def test_scancel_marks_the_run_cancelled_and_requeue_runs_it_again(
    tmp_path: Path, base_image_id: str, slurm_cluster: list[str]
) -> None:
    # A unique command: a fresh run id, whatever earlier test sessions left in the engine.
    manifest = write_manifest(
        tmp_path, base_image_id, f"import time; time.sleep(120)  # {time.time_ns()}", [1], {"a": [1]}
    )
    store = LocalStore(tmp_path / "store")
    outcome = run_sweep(expand(load_manifest(manifest)), backend="slurm", store=store, echo=lambda line: None)
    job_id = outcome.slurm_job_ids[0]
    run_id = outcome.plan.to_run[0].run_id
    try:
        wait_for(lambda: store.exists(run_id) and store.load(run_id)["status"] == "running", 90, "the run to start")
        time.sleep(1.0)  # the container is up
        subprocess.run(["scancel", f"{job_id}_0"], check=True, timeout=30)
        wait_for(lambda: task_state(f"{job_id}_0") not in ("RUNNING", "COMPLETING"), 60, "the task to end")
        record = store.load(run_id)
        assert record["status"] == "cancelled", record
        assert store.verify(run_id) == []
        state = load_state(store, outcome.plan.sweep_id)
        assert sweep_progress(state, store)["runs"] == [{"run_id": run_id, "state": "cancelled"}]

        assert requeue(state, store, echo=lambda line: None) == [run_id]
        shown = subprocess.run(["scontrol", "show", "job", "-o", f"{job_id}_0"], capture_output=True, text=True).stdout
        assert "Restarts=1" in shown  # requeued in place: same job id

        def second_attempt() -> dict | None:
            attempts = attempt_records(store, run_id)
            return attempts[-1] if len(attempts) == 2 else None

        wait_for(lambda: (second_attempt() or {}).get("status") == "running", 90, "the requeued run to start")
        assert sweep_progress(load_state(store, state.sweep_id), store)["running"] == 1
        time.sleep(1.0)  # let the container start before cancelling again
    finally:
        subprocess.run(["scancel", job_id], timeout=30)
    wait_for(lambda: task_state(f"{job_id}_0") not in ("RUNNING", "COMPLETING"), 60, "the task to end")
    second = attempt_records(store, run_id)[-1]
    assert second["run_id"] != run_id and ATTEMPT_SUFFIX.fullmatch(second["run_id"][len(run_id) :])
    assert store.load(second["run_id"])["status"] == "cancelled"


def test_bad_partition_and_unreachable_slurm_are_one_line_errors(
    tmp_path: Path, base_image_id: str, slurm_cluster: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    manifest = write_manifest(tmp_path, base_image_id, "pass", [1], {"a": [1]})
    specs = expand(load_manifest(manifest))
    store = LocalStore(tmp_path / "store")
    with pytest.raises(SlurmError, match=f"no Slurm partition 'nosuch': this cluster has {slurm_cluster[0]}"):
        run_sweep(specs, backend="slurm", partition="nosuch", store=store, echo=lambda line: None)
    # A client pointed at a controller that is not there (nothing listens on port 9).
    conf = tmp_path / "slurm.conf"
    conf.write_text(
        "ClusterName=gone\nSlurmctldHost=localhost\nSlurmctldPort=9\nMessageTimeout=2\n"
        "NodeName=localhost CPUs=1\nPartitionName=p Nodes=ALL\n"
    )
    monkeypatch.setenv("SLURM_CONF", str(conf))
    with pytest.raises(SlurmError) as caught:
        run_sweep(specs, backend="slurm", store=store, echo=lambda line: None)
    message = str(caught.value)
    assert message.startswith("Slurm is not reachable: `sinfo --noheader --Node") and "failed (exit 1)" in message
    assert "\n" not in message
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(SlurmError, match="sinfo is not on PATH"):
        partitions()
    assert not (store.root / "runs").exists()


def test_store_on_a_local_disk_is_refused_for_other_nodes(tmp_path: Path) -> None:
    check_shared({"results store": tmp_path}, ["vm"], this_host="vm")  # one node: this host
    with pytest.raises(
        SlurmError, match=r"results store .* is on a local \S+ file system of vm, which node\(s\) node-b"
    ):
        check_shared({"results store": tmp_path}, ["vm", "node-b"], this_host="vm")


def test_sbatch_script_carries_the_hardware_target(tmp_path: Path, slurm_cluster: list[str]) -> None:
    gpu = resource_options(Hardware(accelerator="cuda", gpus=2, cpus=3, memory="4GiB", timeout="2h"))
    assert gpu == ["--cpus-per-task=3", "--mem=4608M", "--time=0-02:05:00", "--gres=gpu:2"]
    text = array_script(
        tmp_path / "s.json",
        0,
        0,
        6,
        Hardware(cpus=1, memory="1GiB", timeout="10m"),
        "harness-x",
        tmp_path,
        tmp_path,
        throttle=3,
        partition=slurm_cluster[0],
        account=None,
    )
    script = tmp_path / "x.sbatch"
    script.write_text(text)
    # The real scheduler accepts it (validated, not submitted).
    checked = subprocess.run(["sbatch", "--test-only", str(script)], capture_output=True, text=True, timeout=30)
    assert checked.returncode == 0, checked.stderr
    assert "#SBATCH --array=0-5%3" in text and f"#SBATCH --partition={slurm_cluster[0]}" in text


def test_scheduler_output_is_read_into_run_states() -> None:
    squeue = "41_0|RUNNING|None\n41_1|PENDING|JobArrayTaskLimit\n41_2|CANCELLED|None\n41_3|PREEMPTED|None\n"
    assert parse_squeue(squeue) == {
        "41_0": ("running", "None"),
        "41_1": ("queued", "JobArrayTaskLimit"),
        "41_2": ("cancelled", "None"),
        "41_3": ("preempted", "None"),
    }
    sacct = "7_0|COMPLETED|0:0\n7_1|CANCELLED by 0|0:15\n7_2|TIMEOUT|0:0\n7_3|NODE_FAIL|0:0\n7_[4-5%2]|PENDING|0:0\n"
    states = {key: value[0] for key, value in parse_sacct(sacct).items()}
    assert states == {
        "7_0": "completed",
        "7_1": "cancelled",
        "7_2": "timeout",
        "7_3": "node_fail",
        "7_4": "queued",
        "7_5": "queued",
    }
    assert json.dumps(states)  # plain data for --json
