"""System sampler (real container, real process tree), NVML paths, environment capture."""

from __future__ import annotations

import itertools
import json
import os
import signal
import subprocess
import sys
import textwrap
from collections import defaultdict
from pathlib import Path

import pyarrow.parquet as pq
import pynvml
import pytest

import harness
from harness.capture import gpu
from harness.capture.environment import ENVIRONMENT_SCRIPT, capture_host
from harness.capture.system import (
    CgroupSource,
    DockerStatsSource,
    ProcessTreeSource,
    SystemSampler,
    read_system_jsonl,
    system_jsonl_to_parquet,
)
from harness.errors import HarnessError
from tests.conftest import wait_until

REPO_ROOT = Path(harness.__file__).resolve().parent.parent
BASE_IMAGE = "harness/base:bookworm"
MEMORY_LIMIT = 256 * 1024 * 1024
BUSY_LOOP = "x = bytearray(40_000_000)\nwhile True: pass\n"


def by_name(path: Path) -> dict[str, list[tuple[float, float]]]:
    series: dict[str, list[tuple[float, float]]] = defaultdict(list)
    if not path.is_file():
        return series
    for line in path.read_text().splitlines(keepends=True):
        if line.endswith("\n"):  # a line still being written is read on the next look
            row = json.loads(line)
            series[row["name"]].append((row["time"], row["value"]))
    return series


def sampled(path: Path, samples: int, **at_least: float) -> bool:
    """Whether ``path`` holds ``samples`` memory samples and each named series reached its value."""
    series = by_name(path)
    return len(series["memory/used_bytes"]) >= samples and all(
        max((value for _, value in series[name]), default=-1.0) >= bound for name, bound in at_least.items()
    )


def nvml_works() -> bool:
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError:
        return False
    pynvml.nvmlShutdown()
    return True


@pytest.fixture(scope="module")
def docker_client(docker_engine, base_image):
    """The shared engine fixture (conftest), with the base image present."""
    return docker_engine


@pytest.fixture
def busy_container(docker_client):
    container = docker_client.containers.run(
        BASE_IMAGE,
        ["python3", "-c", BUSY_LOOP],
        detach=True,
        network_mode="none",
        mem_limit=MEMORY_LIMIT,
        nano_cpus=1_000_000_000,
        read_only=True,
        user="65534:65534",
        cap_drop=["ALL"],
        security_opt=["no-new-privileges"],
    )
    try:
        yield container
    finally:
        container.remove(force=True)


@pytest.mark.parametrize("interval", [0.05, 0.0, 60.5, -1.0])
def test_interval_out_of_bounds_is_refused(tmp_path, interval):
    with pytest.raises(HarnessError, match="0.1 to 60"):
        SystemSampler("r", tmp_path / "system.jsonl", interval=interval, pid=os.getpid())


def test_interval_bounds_are_accepted_and_a_target_is_required(tmp_path):
    for interval in (0.1, 60.0):
        SystemSampler("r", tmp_path / "system.jsonl", interval=interval, pid=os.getpid())
    with pytest.raises(HarnessError, match="exactly one"):
        SystemSampler("r", tmp_path / "system.jsonl")


@pytest.mark.docker
def test_container_sampled_at_one_hertz_from_its_cgroup(busy_container, tmp_path):
    jsonl = tmp_path / "system.jsonl"
    sampler = SystemSampler("run-c", jsonl, interval=1.0, container=busy_container, gpu_indices=[])
    sampler.start()
    # the workload busy (a loaded machine gives it less than its one CPU) and 30 MB in use
    wait_until(lambda: sampled(jsonl, 4, **{"cpu/percent": 5, "memory/used_bytes": 30_000_000}), "4 busy samples")
    sampler.stop()
    assert isinstance(sampler.source, CgroupSource)
    series = by_name(jsonl)
    times = [t for t, _ in series["memory/used_bytes"]]
    assert len(times) >= 4
    gaps = [b - a for a, b in itertools.pairwise(times)]
    # paced at 1 Hz: never faster; late only on a loaded machine (benchmarks/bench_sampler.py times the cadence)
    assert all(0.8 < gap < 30 for gap in gaps), gaps
    assert max(value for _, value in series["memory/used_bytes"]) > 30_000_000
    assert {value for _, value in series["memory/limit_bytes"]} == {MEMORY_LIMIT}
    assert sampler.peak_memory_bytes >= 30_000_000
    assert series["pids/current"][-1][1] >= 1
    assert {value for _, value in series["net/rx_bytes"] + series["net/tx_bytes"]} == {0.0}
    for name in (
        "cpu/throttled_periods",
        "cpu/throttled_seconds",
        "io/read_bytes",
        "io/write_bytes",
    ):
        assert name in series
    assert sampler.gpu_status() == {
        "available": False,
        "reason": "no GPU assigned to the run",
        "driver": None,
        "devices": [],
    }

    system_jsonl_to_parquet("run-c", jsonl, tmp_path / "system.parquet")
    table = pq.read_table(tmp_path / "system.parquet")
    assert table.column_names == ["run_id", "time", "name", "value"]
    assert table.num_rows == sum(len(points) for points in series.values())


@pytest.mark.docker
def test_container_sampled_through_the_engine_stats_api(busy_container, tmp_path):
    jsonl = tmp_path / "system.jsonl"
    sampler = SystemSampler("run-s", jsonl, interval=1.0, container=busy_container, gpu_indices=[], prefer_cgroup=False)
    sampler.start()
    wait_until(lambda: sampled(jsonl, 2, **{"cpu/percent": 5}), "2 busy samples from the stats API")
    sampler.stop()
    assert isinstance(sampler.source, DockerStatsSource)
    series = by_name(jsonl)
    assert len(series["memory/used_bytes"]) >= 2
    assert {value for _, value in series["memory/limit_bytes"]} == {MEMORY_LIMIT}


def test_process_tree_sampled_with_psutil(tmp_path):
    parent_code = textwrap.dedent(
        f"""
        import subprocess, sys
        child = subprocess.Popen([sys.executable, "-c", {BUSY_LOOP!r}])
        child.wait()
        """
    )
    process = subprocess.Popen([sys.executable, "-c", parent_code])
    jsonl = tmp_path / "system.jsonl"
    try:
        sampler = SystemSampler("run-p", jsonl, interval=0.5, pid=process.pid)
        sampler.start()
        # the child started (2 processes), busy, with its 40 MB
        wanted = {"pids/current": 2, "cpu/percent": 5, "memory/used_bytes": 40_000_000}
        wait_until(lambda: sampled(jsonl, 4, **wanted), "4 samples of the busy child")
        sampler.stop()
    finally:
        for child in ProcessTreeSource(process.pid)._tree()[1:]:
            child.kill()
        process.kill()
        process.wait()
    assert isinstance(sampler.source, ProcessTreeSource)
    series = by_name(jsonl)
    assert len(series["memory/used_bytes"]) >= 4
    assert series["memory/peak_bytes"][-1][1] == sampler.peak_memory_bytes


def test_samples_on_disk_survive_kill_9_of_the_sampling_process(tmp_path):
    jsonl = tmp_path / "system.jsonl"
    code = f"""
        import os, time
        from pathlib import Path
        from harness.capture.system import SystemSampler
        path = Path({str(jsonl)!r})
        SystemSampler("run-k", path, interval=0.5, pid=os.getpid(), gpu_indices=[]).start()
        time.sleep(60)
        """
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT))
    process = subprocess.Popen([sys.executable, "-c", textwrap.dedent(code)], env=env)
    try:
        wait_until(lambda: read_system_jsonl(jsonl)[1].count("cpu/percent") >= 3, "3 samples on disk")
    finally:
        process.send_signal(signal.SIGKILL)
    process.wait(timeout=10)
    # a torn last line is possible in principle; the converter must drop it and keep the rest
    with open(jsonl, "a") as handle:
        handle.write('{"time": 1.0, "name": "torn')
    system_jsonl_to_parquet("run-k", jsonl, tmp_path / "system.parquet")
    table = pq.read_table(tmp_path / "system.parquet")
    assert table.column("name").to_pylist().count("cpu/percent") >= 3
    assert "torn" not in table.column("name").to_pylist()


@pytest.mark.skipif(nvml_works(), reason="this host has a working NVML")
def test_no_nvml_is_recorded_as_absent(tmp_path):
    session = gpu.open_nvml(None)
    assert session.available is False
    assert "NVML" in session.reason
    sampler = SystemSampler("run-g", tmp_path / "system.jsonl", pid=os.getpid(), gpu_indices=[0])
    status = sampler.gpu_status()
    assert status["available"] is False and "NVML" in status["reason"] and status["devices"] == []
    sampler.start()
    sampler.stop()
    assert sampler.gpu_status()["available"] is False
    without_gpu = SystemSampler("run-n", tmp_path / "n.jsonl", pid=os.getpid())
    assert without_gpu.gpu_status()["reason"] == "no GPU assigned to the run"
    assert not any(
        line.startswith('{"time"') and "gpu/" in line for line in (tmp_path / "system.jsonl").read_text().splitlines()
    )
    assert capture_host()["gpus"] == []


def test_one_failing_nvml_query_drops_only_its_value():
    def not_supported(handle):
        raise pynvml.NVMLError(pynvml.NVML_ERROR_NOT_SUPPORTED)

    queries = {
        "utilization_percent": lambda handle: 55.0,
        "power_watts": not_supported,
        "temperature_c": lambda handle: 61,
    }
    assert gpu.sample_device(0, object(), queries) == [
        ("gpu/0/utilization_percent", 55.0),
        ("gpu/0/temperature_c", 61.0),
    ]


@pytest.mark.skipif(nvml_works(), reason="this host has a working NVML")
def test_real_queries_without_nvml_drop_every_value_without_raising():
    """Uninitialised NVML makes each real query raise its NVMLError; each is dropped alone."""
    assert gpu.sample_device(0, object()) == []
    assert gpu.process_memory(object(), {os.getpid()}) is None


def test_host_facts():
    host = capture_host()
    assert host["cpu_count"] == os.cpu_count()
    assert host["memory_bytes"] > 0
    assert host["kernel"] and host["os"] and host["hostname"]
    assert set(host) == {
        "hostname",
        "os",
        "kernel",
        "cpu_model",
        "cpu_count",
        "memory_bytes",
        "gpus",
        "gpu_driver",
    }


def test_environment_script_on_the_host_python_sees_torch():
    env = dict(os.environ, HARNESS_RUN_ID="r1", HARNESS_HUB_TOKEN="hf_secret", OMP_NUM_THREADS="1")
    result = subprocess.run(
        [sys.executable, "-c", ENVIRONMENT_SCRIPT],
        env=env,
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    )
    facts = json.loads(result.stdout)
    assert facts["torch"]["version"].startswith("2.")
    assert any(line.startswith("torch==") for line in facts["packages"])
    assert facts["python"]["version"] == ".".join(map(str, sys.version_info[:3]))
    assert facts["env"]["HARNESS_RUN_ID"] == "r1" and facts["env"]["OMP_NUM_THREADS"] == "1"
    assert "hf_secret" not in result.stdout


@pytest.mark.docker
def test_environment_script_inside_a_bare_image_keeps_secrets_out(docker_client):
    output = docker_client.containers.run(
        BASE_IMAGE,
        ["python3", "-c", ENVIRONMENT_SCRIPT],
        environment={
            "HARNESS_SEED": "3",
            "HF_TOKEN": "hf_abc",
            "AWS_SECRET_ACCESS_KEY": "s3cr3t",
            "HARNESS_API_KEY": "k3y",
        },
        network_mode="none",
        remove=True,
    )
    facts = json.loads(output)
    assert facts["torch"] is None and facts["gpus"] == [] and facts["gpu_driver"] is None
    assert facts["python"]["version"].startswith("3.")
    assert facts["env"]["HARNESS_SEED"] == "3"
    for secret in (b"hf_abc", b"s3cr3t", b"k3y"):
        assert secret not in output
