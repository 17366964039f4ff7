"""The run path on the real Docker engine: sandbox, record, determinism, and the ways a run ends."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from harness.store.local import LocalStore
from tests.conftest import REPO, noop_variant, wait_until

pytestmark = pytest.mark.docker
NOOP = str(REPO / "manifests" / "noop.yaml")
DQN = str(REPO / "manifests" / "dqn-cartpole.yaml")


def only_run(home: Path) -> dict:
    records = list(LocalStore(home).records())
    assert len(records) == 1, [r["run_id"] for r in records]
    return records[0]


def test_sandboxed_run_writes_a_full_record(noop_image, store_home, cli):
    result = cli("run", NOOP, "--seed", "7", "--param", "mode=ok")
    assert result.returncode == 0, result.stderr
    record = only_run(store_home)
    assert record["status"] == "completed" and record["exit_code"] == 0 and record["hermetic"] is True
    run_dir = store_home / "runs" / record["run_id"]
    sandbox = json.loads((run_dir / "out" / "sandbox.json").read_text())
    assert sandbox["uid"] == 65534 and sandbox["gid"] == 65534
    assert int(sandbox["cap_eff"], 16) == 0 and sandbox["no_new_privs"] == "1"
    assert sandbox["root_writable"] is False and sandbox["network"] is False and sandbox["interfaces"] == ["lo"]
    assert sandbox["seed"] == "7" and sandbox["run_id"] == record["run_id"] and sandbox["params"]["mode"] == "ok"
    assert not any("TOKEN" in key for key in sandbox["env_keys"])
    # provenance
    # the tag's image: a reproduction earlier in the session may have rebuilt it under the same tag
    from harness.runtime.engine import engine_image_id

    assert record["image"]["tag"] == noop_image.tag and record["image"]["content_hash"] == noop_image.content_hash
    assert record["image"]["id"] == engine_image_id(noop_image.tag)
    assert record["host"]["cpu_count"] >= 1 and record["docker_version"] and record["harness_version"]
    assert "six==1.16.0" in record["environment"]["packages"]
    for name in (
        "manifest.yaml",
        "lockfile.txt",
        "context/Dockerfile",
        "context/workload/probe.py",
        "logs/output.log",
        "metrics.parquet",
        "system.parquet",
        "out/metrics.jsonl",
    ):
        assert name in record["files"], name
    assert LocalStore(store_home).verify(record["run_id"]) == []
    metrics = pq.read_table(run_dir / "metrics.parquet").to_pylist()
    assert [m["value"] for m in metrics if m["name"] == "probe/value"] == [7.0, 7.5, 8.0, 8.5, 9.0]
    assert record["metrics_summary"]["probe/value"]["last"] == 9.0
    assert '"uid": 65534' in (run_dir / "logs" / "output.log").read_text()
    # a second identical request is already in the store
    again = cli("run", NOOP, "--seed", "7", "--param", "mode=ok")
    assert again.returncode == 0 and "already completed" in again.stdout
    shown = cli("show", record["run_id"])
    assert shown.returncode == 0 and "completed" in shown.stdout and "probe/value" in shown.stdout
    listed = cli("ls")
    assert record["run_id"] in listed.stdout


def test_dqn_smoke_runs_are_bit_identical(rl_image, store_home, cli):
    for _attempt in range(2):
        result = cli("run", DQN, "--smoke", "--rerun", "--quiet")
        assert result.returncode == 0, result.stderr
    store = LocalStore(store_home)
    first, second = sorted(store.records(), key=lambda r: r["run_id"])
    assert first["config_key"] == second["config_key"] and first["run_id"] != second["run_id"]
    tables = []
    for record in (first, second):
        rows = pq.read_table(store.run_dir(record["run_id"]) / "metrics.parquet").to_pylist()
        tables.append(sorted((r["name"], r["step"], r["value"]) for r in rows if r["name"] != "charts/SPS"))
    assert tables[0] == tables[1] and len(tables[0]) > 50
    names = {name for name, _, _ in tables[0]}
    assert {"charts/episodic_return", "losses/td_loss", "losses/q_values"} <= names
    assert "torch==2.13.0+cpu" in first["environment"]["packages"]


def test_a_short_run_writes_its_tables_without_pyarrow_and_they_read_back(noop_image, store_home):
    """A run of a few metrics (mode=ok) writes its metrics, system samples and journal entry with
    the harness's own small Parquet writer: pyarrow's import alone costs about as much as the no-op
    container. What it wrote reads back through pyarrow, the record and the cold run index."""
    from harness.analysis import index as run_index
    from harness.store import journal

    result = subprocess.run(
        [
            sys.executable,
            "-X",
            "importtime",
            "-m",
            "harness",
            "run",
            NOOP,
            "--seed",
            "3",
            "--param",
            "mode=ok",
            "--quiet",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    imported = {
        line.rsplit("|", 1)[-1].strip() for line in result.stderr.splitlines() if line.startswith("import time:")
    }
    assert imported and not {name for name in imported if name.split(".")[0] in ("pyarrow", "numpy", "pandas")}
    record = only_run(store_home)
    run_dir = store_home / "runs" / record["run_id"]
    metrics = pq.read_table(run_dir / "metrics.parquet")
    assert metrics.schema.names == ["run_id", "name", "step", "value", "wall_time"]
    values = [step * 0.5 + 3 for step in range(5)]
    assert metrics.column("step").to_pylist() == list(range(5)) and metrics.column("value").to_pylist() == values
    assert set(metrics.column("run_id").to_pylist()) == {record["run_id"]}
    summary = record["metrics_summary"]["probe/value"]
    assert summary == {"last": 5.0, "max": 5.0, "min": 3.0, "mean_last_n": sum(values) / 5, "count": 5}
    system = pq.read_table(run_dir / "system.parquet")
    # a sub-second run may end before its first sample under load: the table may be empty, never wrong
    assert system.schema.names == ["run_id", "time", "name", "value"]
    assert set(system.column("run_id").to_pylist()) <= {record["run_id"]}
    assert LocalStore(store_home).verify(record["run_id"]) == []
    (entry,) = journal.read_journal(store_home)[record["run_id"]]
    assert entry.row["status"] == "completed" and entry.metrics_stamp
    index = run_index.refresh_index(LocalStore(store_home))
    assert journal.is_journal_part(index.column("metrics_part")[0].as_py())
    assert run_index.final_values(LocalStore(store_home), index, "probe/value", 2) == {record["run_id"]: 4.75}


def test_failing_workload_is_marked_failed_with_log_tail(noop_image, store_home, cli):
    result = cli("run", NOOP, "--param", "mode=fail")
    assert result.returncode == 1
    record = only_run(store_home)
    assert record["status"] == "failed" and record["exit_code"] == 3
    shown = cli("show", record["run_id"])
    assert "failing on purpose" in shown.stdout and "exit 3" in shown.stdout


def test_timeout_kills_the_container(noop_image, store_home, cli, tmp_path):
    manifest = noop_variant(tmp_path, "timeout: 5m", "timeout: 3s")
    result = cli("run", manifest, "--param", "mode=sleep", "--param", "seconds=60")
    assert result.returncode == 1
    record = only_run(store_home)
    assert record["status"] == "timeout"  # not completed: the 60 s workload was killed at 3 s
    rows = pq.read_table(store_home / "runs" / record["run_id"] / "metrics.parquet").to_pylist()
    assert len(rows) >= 1  # what the job logged before the timeout is kept
    assert not noop_image_containers(record["run_id"])


def noop_image_containers(run_id: str) -> list:
    from harness.runtime.docker import RUN_LABEL
    from harness.runtime.engine import docker_client

    return docker_client().containers.list(all=True, filters={"label": f"{RUN_LABEL}={run_id}"})


def test_oom_is_recorded_with_peak_memory(noop_image, store_home, cli):
    result = cli("run", NOOP, "--param", "mode=oom")
    assert result.returncode == 1
    record = only_run(store_home)
    assert record["status"] == "oom"
    assert record["peak_memory_bytes"] > 64 * 2**20


def test_kill_9_of_the_harness_leaves_a_recoverable_record(noop_image, store_home):
    process = subprocess.Popen(
        [sys.executable, "-m", "harness", "run", NOOP, "--param", "mode=sleep", "--param", "seconds=60", "--quiet"],
        cwd=REPO,
        env={**os.environ, "HARNESS_HOME": str(store_home)},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )

    def metrics_and_samples_on_disk() -> Path | None:
        """The run's metrics file once it holds 6 points and the sampler's file a sample."""
        assert process.poll() is None, process.stderr.read().decode() if process.stderr else ""
        for metrics in store_home.glob("runs/*/out/metrics.jsonl"):
            system = metrics.parents[1] / "system.jsonl"
            if metrics.read_text().count("\n") >= 6 and system.is_file() and "\n" in system.read_text():
                return metrics
        return None

    try:
        metrics_file = wait_until(metrics_and_samples_on_disk, "6 metrics and a system sample on disk", bound=300)
    finally:
        os.kill(process.pid, signal.SIGKILL)
    process.wait()
    lines_at_kill = metrics_file.read_text().count("\n")
    listed = subprocess.run(
        [sys.executable, "-m", "harness", "ls"],
        cwd=REPO,
        capture_output=True,
        text=True,
        env={**os.environ, "HARNESS_HOME": str(store_home)},
    )
    assert "interrupted" in listed.stdout
    record = only_run(store_home)
    assert record["status"] == "interrupted"
    run_dir = store_home / "runs" / record["run_id"]
    rows = pq.read_table(run_dir / "metrics.parquet").to_pylist()
    assert len(rows) >= lines_at_kill - 1 >= 5
    assert pq.read_table(run_dir / "system.parquet").num_rows > 0
    assert LocalStore(store_home).verify(record["run_id"]) == []
    assert not noop_image_containers(record["run_id"])


def test_disk_full_is_reported_and_the_record_stays_consistent(noop_image, tmp_path, cli):
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root")
    small = tmp_path / "small"
    small.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(small)], check=True)
    try:
        result = cli("run", NOOP, "--param", "mode=fill", "--param", "megabytes=64", env={"HARNESS_HOME": str(small)})
        assert result.returncode in (1, 2)
        assert "Traceback" not in result.stderr
        records = list(LocalStore(small).records())
        assert len(records) == 1
        record = records[0]
        assert record["status"] == "failed"  # the workload itself hit the full disk
        if result.returncode == 2:
            assert "disk full" in result.stderr
    finally:
        subprocess.run(["umount", str(small)], check=False)


def test_gpu_request_on_a_host_without_one(noop_image, store_home, cli, tmp_path):
    manifest = noop_variant(tmp_path, "accelerator: cpu, gpus: 0", "accelerator: cuda, gpus: 1")
    result = cli("run", manifest)
    assert result.returncode == 2 and "GPU" in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert not store_home.exists()


def test_engine_unreachable_says_how_to_start_it(store_home, cli):
    result = cli("run", NOOP, env={"DOCKER_HOST": "unix:///nonexistent/docker.sock"})
    assert result.returncode == 2 and "Docker engine unreachable" in result.stderr and "dockerd" in result.stderr
    assert not store_home.exists()


def test_process_runtime_is_marked_not_hermetic(store_home, cli):
    result = cli("run", NOOP, "--runtime", "process", "--param", "mode=ok")
    assert result.returncode == 0, result.stderr
    record = only_run(store_home)
    assert record["runtime"] == "process" and record["hermetic"] is False and record["image"] is None
    assert record["metrics_summary"]["probe/value"]["count"] == 5
    assert pq.read_table(store_home / "runs" / record["run_id"] / "system.parquet").num_rows >= 0
