"""Sweeps on this machine: planning, bounded parallelism, failures, Ctrl-C, status — with a real
Docker engine and the real single-run code."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from harness.backends import plan_sweep, run_sweep, sweep_progress
from harness.backends.local import parallel_slots
from harness.backends.sweeps import load_state
from harness.errors import HarnessError
from harness.manifest import Hardware, load_manifest
from harness.run.plan import expand
from harness.store.local import LocalStore
from tests.conftest import wait_until

BASE_IMAGE = "harness/base:bookworm"


def need(reason: str) -> None:
    """Fail under CI (the service must be there), skip elsewhere."""
    if os.environ.get("CI"):
        pytest.fail(reason)
    pytest.skip(reason)


@pytest.fixture(scope="session")
def base_image_id() -> str:
    """Id of the bootstrapped base image (python3 inside) in a running engine."""
    try:
        result = subprocess.run(
            ["docker", "image", "inspect", "--format", "{{.Id}}", BASE_IMAGE],
            capture_output=True,
            text=True,
            timeout=30,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        need(f"docker engine: {exc}")
    if result.returncode != 0:
        need(f"no Docker engine with {BASE_IMAGE}: {result.stderr.strip()}")
    return result.stdout.strip()


def write_manifest(folder: Path, image_id: str, command: str, seeds: list[int], sweep: dict, **extra: object) -> Path:
    """A manifest whose runs execute ``python3 -c command`` in the base image (params a, b)."""
    data = {
        "apiVersion": "harness/v1",
        "name": "tiny",
        "image": {"ref": image_id},
        "command": ["python3", "-c", command, "{a}", "{b}"],
        "params": {"a": 1, "b": "x"},
        "seeds": seeds,
        "sweep": sweep,
        "hardware": {"cpus": 1, "memory": "256MiB", "timeout": "60s"},
        **extra,
    }
    path = folder / "tiny.yaml"
    path.write_text(json.dumps(data))  # JSON is YAML
    return path


FAIL_WHEN_A_IS_3 = "import sys; print('a =', sys.argv[1]); sys.exit(1 if sys.argv[1] == '3' else 0)"


def test_sweep_runs_every_run_once_and_one_failure_stops_nothing(tmp_path: Path, base_image_id: str) -> None:
    manifest = write_manifest(tmp_path, base_image_id, FAIL_WHEN_A_IS_3, [1, 2], {"a": [1, 2, 3]})
    store = LocalStore(tmp_path / "store")
    specs = expand(load_manifest(manifest))
    lines: list[str] = []

    outcome = run_sweep(specs, jobs=2, runtime="docker", store=store, echo=lines.append)

    statuses = sorted(r["status"] for r in outcome.records)
    assert statuses == ["completed"] * 4 + ["failed"] * 2
    assert {r["params"]["a"] for r in outcome.records if r["status"] == "failed"} == {3}
    assert all(r["runtime"] == "docker" and store.verify(r["run_id"]) == [] for r in outcome.records)
    assert "2 at a time" in "\n".join(lines)
    progress = sweep_progress(load_state(store, outcome.plan.sweep_id), store)
    assert (progress["total"], progress["done"], progress["failed"], progress["finished"]) == (6, 4, 2, True)

    # Again: nothing runs; the failed runs only with --retry-failed, as new attempts.
    again = plan_sweep(specs, store)
    assert (len(again.to_run), len(again.completed), len(again.failed)) == (0, 4, 2)
    retried = run_sweep(specs, jobs=2, runtime="docker", store=store, retry_failed=True, echo=lines.append)
    retried_ids = {s.run_id for s in specs if s.params["a"] == 3}
    assert len(retried.records) == len(retried_ids)
    for record in retried.records:  # a new attempt: <run_id>-r<8 hex>, unique across stores
        base, _, token = record["run_id"].rpartition("-r")
        assert base in retried_ids and len(token) == 8 and int(token, 16) >= 0


def test_dry_run_lists_without_running(tmp_path: Path, base_image_id: str) -> None:
    manifest = write_manifest(tmp_path, base_image_id, "pass", [1], {"a": [1, 2], "b": ["p", "q"]})
    store = LocalStore(tmp_path / "store")
    lines: list[str] = []
    outcome = run_sweep(expand(load_manifest(manifest)), dry_run=True, store=store, echo=lines.append)
    would = [line for line in lines if line.startswith("would run")]
    assert len(would) == 4 and "a=2  b=q" in "\n".join(would)
    assert outcome.records == [] and not (store.root / "runs").exists()


def test_grid_over_ten_thousand_runs_needs_yes(tmp_path: Path, base_image_id: str) -> None:
    manifest = write_manifest(tmp_path, base_image_id, "pass", [1, 2], {"a": list(range(5001))})
    specs = expand(load_manifest(manifest))
    with pytest.raises(HarnessError, match=r"10,002 runs .*--yes"):
        run_sweep(specs, store=LocalStore(tmp_path / "store"), echo=lambda line: None)
    plan = run_sweep(specs, yes=True, dry_run=True, store=LocalStore(tmp_path / "store"), echo=lambda line: None).plan
    assert len(plan.to_run) == 10_002


def test_parallelism_follows_the_hardware_target() -> None:
    host = {"cpus": 8, "memory_bytes": 16 * 2**30, "gpus": 2}
    assert parallel_slots(Hardware(cpus=1, memory="1GiB"), host=host) == 8
    assert parallel_slots(Hardware(cpus=2, memory="1GiB"), host=host) == 4
    assert parallel_slots(Hardware(cpus=1, memory="6GiB"), host=host) == 2  # 90% of 16 GiB holds two
    assert parallel_slots(Hardware(accelerator="cuda", gpus=1, cpus=1, memory="1GiB"), host=host) == 2
    assert parallel_slots(Hardware(cpus=1, memory="1GiB"), jobs=3, host=host) == 3
    with pytest.raises(HarnessError, match="needs 2 gpus but this host has 0 gpus"):
        parallel_slots(Hardware(accelerator="cuda", gpus=2), host={**host, "gpus": 0})


CTRL_C_SCRIPT = """
import signal, sys
# what a terminal's Ctrl-C reaches: CI may start the suite with SIGINT ignored (a background job of
# a script), and a Python started with SIGINT ignored keeps ignoring it
signal.signal(signal.SIGINT, signal.default_int_handler)
from harness.backends import run_sweep
from harness.manifest import load_manifest
from harness.run.plan import expand
from harness.store.local import LocalStore
run_sweep(expand(load_manifest(sys.argv[1])), jobs=2, runtime="docker", store=LocalStore(sys.argv[2]))
"""
SLEEP = "import time; time.sleep(120)"  # a stop that is lost lets it end with exit status 0, not 137


def containers_of(store: LocalStore, running_only: bool = False) -> list[str]:
    """Ids of the run containers whose output folder is in ``store`` (other stores on the engine
    may run the same configurations at once)."""
    listed = subprocess.run(
        ["docker", "ps", "-q", "--filter", "label=org.harness.run-id", *([] if running_only else ["-a"])],
        capture_output=True,
        text=True,
        timeout=60,
    ).stdout.split()
    if not listed:
        return []
    mounts = subprocess.run(
        ["docker", "inspect", "--format", "{{.Id}} {{range .Mounts}}{{.Source}} {{end}}", *listed],
        capture_output=True,
        text=True,
        timeout=60,
    ).stdout.splitlines()
    root = str(store.root.resolve())
    return [line.split()[0] for line in mounts if f" {root}/" in f" {line}"]


@pytest.mark.parametrize(("signum", "status"), [(signal.SIGINT, "interrupted"), (signal.SIGTERM, "cancelled")])
def test_ctrl_c_stops_containers_and_marks_records_interrupted(
    tmp_path: Path, base_image_id: str, signum: int, status: str
) -> None:
    manifest = write_manifest(
        tmp_path,
        base_image_id,
        SLEEP,
        [1, 2, 3],
        {"a": [1]},
        hardware={"cpus": 1, "memory": "256MiB", "timeout": "20m"},
    )
    store = LocalStore(tmp_path / "store")
    sweep = subprocess.Popen(
        [sys.executable, "-c", CTRL_C_SCRIPT, str(manifest), str(store.root)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        text=True,
    )
    try:
        # both containers up, and the sweep alive (an early end fails the wait's condition at once)
        wait_until(
            lambda: sweep.poll() is not None or len(containers_of(store, running_only=True)) == 2,
            "two containers running",
            bound=300,
        )
        assert sweep.poll() is None, sweep.communicate()[0]
        sweep.send_signal(signum)
        output, _ = sweep.communicate(timeout=300)
    finally:
        if sweep.poll() is None:
            sweep.kill()
            sweep.wait(timeout=60)
        for container in containers_of(store):
            subprocess.run(["docker", "rm", "-f", container], capture_output=True, timeout=60)
    assert sweep.returncode != 0
    records = list(store.records())
    assert len(records) == 2, output  # the third run never started
    assert {r["status"] for r in records} == {status}, output
    assert all(r["exit_code"] == 137 for r in records), output  # killed, not slept to the end
    assert all(store.verify(r["run_id"]) == [] for r in records)
    assert containers_of(store) == [], "a run's container was left behind"


def test_a_job_stopped_before_it_starts_never_runs(tmp_path: Path, base_image_id: str) -> None:
    """Ctrl-C can land while a run's container or process is being created: the stop must stick."""
    from harness.runtime.docker import DockerJob
    from harness.runtime.engine_api import engine_api
    from harness.runtime.job import JobRequest
    from harness.runtime.process import ProcessJob

    def request(kind: str) -> JobRequest:
        out = tmp_path / kind
        out.mkdir()
        return JobRequest(
            run_id=f"stop-first-{kind}-{tmp_path.name}".lower()[:60],
            command=["python3", "-c", SLEEP],
            environment={},
            out_dir=out,
            log_path=out / "output.log",
            cpus=1.0,
            memory_bytes=256 << 20,
            gpus=0,
            timeout_seconds=1200,
        )

    jobs = [DockerJob(engine_api(), base_image_id, request("docker")), ProcessJob(request("process"))]
    for job in jobs:
        try:
            job.stop("interrupted")
            job.start()
            result = job.wait()
        finally:
            job.remove()
        assert result.status == "interrupted" and result.exit_code in (137, -signal.SIGKILL), result


def test_status_command_reports_json_and_bad_sweep(tmp_path: Path, base_image_id: str) -> None:
    manifest = write_manifest(tmp_path, base_image_id, "pass", [1], {"a": [1, 2]})
    store = LocalStore(tmp_path / "store")
    outcome = run_sweep(expand(load_manifest(manifest)), store=store, runtime="docker", echo=lambda line: None)
    env = {**os.environ, "HARNESS_HOME": str(store.root)}
    shown = subprocess.run(["harness", "status", "--json"], capture_output=True, text=True, env=env, timeout=60)
    assert shown.returncode == 0, shown.stderr
    progress = json.loads(shown.stdout)
    assert progress["sweep_id"] == outcome.plan.sweep_id
    assert (progress["done"], progress["queued"], progress["running"], progress["failed"]) == (2, 0, 0, 0)
    table = subprocess.run(
        ["harness", "status", outcome.plan.sweep_id], capture_output=True, text=True, env=env, timeout=60
    )
    assert table.returncode == 0 and "done" in table.stdout and outcome.plan.sweep_id in table.stdout
    missing = subprocess.run(
        ["harness", "status", "no-such-sweep"], capture_output=True, text=True, env=env, timeout=60
    )
    assert missing.returncode == 2
    assert missing.stderr.count("\n") == 1 and "no sweep 'no-such-sweep'" in missing.stderr


def test_ctrl_c_before_the_job_starts_seals_the_record(tmp_path: Path, base_image_id: str) -> None:
    """A signal between the record's first save and the job's start: a sealed record, no container."""
    from harness.run.runner import execute
    from harness.runtime.signals import Terminated

    (spec,) = expand(load_manifest(write_manifest(tmp_path, base_image_id, SLEEP, [1], {"a": [1]})))
    store = LocalStore(tmp_path / "store")
    for signal_raised, status in ((KeyboardInterrupt, "interrupted"), (Terminated, "cancelled")):

        def ctrl_c(record: dict, job: object = None, raised: type[BaseException] = signal_raised) -> None:
            assert store.load(record["run_id"])["status"] == "running"  # saved before the job exists
            raise raised

        record = execute(spec, store, runtime="docker", on_start=ctrl_c)
        assert (record["status"], record["exit_code"]) == (status, None), record
        assert store.verify(record["run_id"]) == []
    assert containers_of(store) == []


# a run a quarter of the way through its 1,000 steps, then waiting for the test's go-ahead
QUARTER_THEN_WAIT = """
import json, os, time
with open(os.environ["HARNESS_METRICS"], "a") as f:
    f.write(json.dumps(dict(name="charts/episodic_return", step=250, value=1.0)) + "\\n")  # no braces: placeholders
go = os.path.join(os.environ["HARNESS_OUT"], "go")
deadline = time.monotonic() + 300
while not os.path.exists(go) and time.monotonic() < deadline:
    time.sleep(0.2)
"""


def test_status_gives_a_running_local_run_an_eta(tmp_path: Path, base_image_id: str) -> None:
    manifest = write_manifest(
        tmp_path,
        base_image_id,
        QUARTER_THEN_WAIT,
        [1],
        {},
        params={"a": 1, "b": "x", "total_timesteps": 1000},
        hardware={"cpus": 1, "memory": "256MiB", "timeout": "10m"},
    )
    store = LocalStore(tmp_path / "store")
    sweep = subprocess.Popen(
        [sys.executable, "-c", CTRL_C_SCRIPT, str(manifest), str(store.root)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        text=True,
    )
    env = {**os.environ, "HARNESS_HOME": str(store.root)}

    def running_with_eta() -> dict | None:
        assert sweep.poll() is None, sweep.communicate()[0]
        shown = subprocess.run(["harness", "status", "--json"], capture_output=True, text=True, env=env, timeout=60)
        progress = json.loads(shown.stdout) if shown.returncode == 0 else {}
        return progress if progress.get("running") == 1 and progress.get("eta_s") is not None else None

    try:
        progress = wait_until(running_with_eta, "a running run with an ETA", bound=300, every=0.5)
        # a quarter done: three times the time so far is left
        assert progress["eta_s"] == pytest.approx(3 * progress["elapsed_s"], rel=0.5, abs=3)
        table = subprocess.run(["harness", "status"], capture_output=True, text=True, env=env, timeout=60)
        assert table.returncode == 0 and "ETA" in table.stdout
        (run_id,) = [r["run_id"] for r in store.records()]
        (store.layout(run_id).out / "go").touch()
        sweep.communicate(timeout=300)
    finally:
        if sweep.poll() is None:
            sweep.kill()
            sweep.wait(timeout=60)
    assert sweep.returncode == 0
    assert sweep_progress(load_state(store, progress["sweep_id"]), store)["eta_s"] == 0.0
