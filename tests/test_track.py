"""harness.track: the in-run logging helper, in real processes and in a real container."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

import harness
from tests.conftest import wait_until

REPO_ROOT = Path(harness.__file__).resolve().parent.parent
BASE_IMAGE = "harness/base:bookworm"


def run_python(code: str, out_dir: Path | None, **kwargs) -> subprocess.CompletedProcess:
    env = {key: value for key, value in os.environ.items() if not key.startswith("HARNESS_")}
    env["PYTHONPATH"] = str(REPO_ROOT)
    if out_dir is not None:
        env["HARNESS_OUT"] = str(out_dir)
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        **kwargs,
    )


def read_lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_log_writes_json_lines_at_exit(tmp_path):
    result = run_python(
        """
        from harness import track
        for step in range(5):
            metrics = {"charts/episodic_return": step * 1.5, "losses/td_loss": 0.25}
            track.log(metrics, step=step * 100)
        track.log({"auto": 1})
        track.log({"auto": 2})
        track.log({"weird": float("nan"), 'quote"name': float("inf")}, step=7)
        """,
        tmp_path,
    )
    assert result.returncode == 0, result.stderr
    lines = read_lines(tmp_path / "metrics.jsonl")
    assert len(lines) == 14
    assert all(set(line) == {"name", "step", "value", "wall_time"} for line in lines)
    returns = [(line["step"], line["value"]) for line in lines if line["name"] == "charts/episodic_return"]
    assert returns == [(0, 0.0), (100, 1.5), (200, 3.0), (300, 4.5), (400, 6.0)]
    assert [(line["step"], line["value"]) for line in lines if line["name"] == "auto"] == [
        (0, 1.0),
        (1, 2.0),
    ]
    weird = {line["name"]: line["value"] for line in lines if line["step"] == 7}
    assert math.isnan(weird["weird"]) and weird['quote"name'] == math.inf
    assert abs(lines[0]["wall_time"] - time.time()) < 60


def test_points_reach_disk_without_a_flush_and_survive_kill_9(tmp_path):
    # the flush thread's cadence (at least once a second) is measured in benchmarks/bench_track.py
    code = """
        import sys, time
        from harness import track
        track.log({"loss": 0.5}, step=1)
        print("logged", flush=True)
        time.sleep(60)
        """
    env = {key: value for key, value in os.environ.items() if not key.startswith("HARNESS_")}
    env.update(PYTHONPATH=str(REPO_ROOT), HARNESS_OUT=str(tmp_path))
    process = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(code)], env=env, stdout=subprocess.PIPE, text=True
    )
    try:
        assert process.stdout.readline().strip() == "logged"
        metrics = tmp_path / "metrics.jsonl"
        wait_until(lambda: metrics.is_file() and metrics.read_text().endswith("\n"), "the point on disk")
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=10)
    finally:
        process.kill()
    lines = read_lines(tmp_path / "metrics.jsonl")
    assert [(line["name"], line["step"], line["value"]) for line in lines] == [("loss", 1, 0.5)]


def test_without_harness_out_warns_once_and_writes_nothing(tmp_path):
    result = run_python(
        """
        from harness import track
        track.log({"a": 1.0}, step=0)
        track.log({"a": 2.0}, step=1)
        track.flush()
        print("done")
        """,
        None,
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "done"
    assert result.stderr.count("HARNESS_OUT is not set") == 1
    assert list(tmp_path.iterdir()) == []


def test_bad_names_and_values_fail_at_the_call(tmp_path):
    result = run_python(
        """
        from harness import track
        for bad in ({1: 2.0}, {"x": "not a number"}, {"y": [1, 2]}):
            try:
                track.log(bad, step=0)
            except (TypeError, ValueError) as exc:
                print(type(exc).__name__)
        track.log({"good": 3}, step=0)
        """,
        tmp_path,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["TypeError", "ValueError", "TypeError"]
    assert [line["name"] for line in read_lines(tmp_path / "metrics.jsonl")] == ["good"]


def test_forked_child_does_not_write_the_parents_points_twice(tmp_path):
    result = run_python(
        """
        import os
        from harness import track
        track.log({"parent": 1.0}, step=0)      # still queued when the process forks
        pid = os.fork()
        if pid == 0:
            track.log({"child": 2.0}, step=0)
            track.flush()
            os._exit(0)
        os.waitpid(pid, 0)
        """,
        tmp_path,
    )
    assert result.returncode == 0, result.stderr
    names = sorted(line["name"] for line in read_lines(tmp_path / "metrics.jsonl"))
    assert names == ["child", "parent"]


@pytest.fixture(scope="module")
def docker_client(docker_engine, base_image):
    """The shared engine fixture (conftest), with the base image present."""
    return docker_engine


@pytest.mark.docker
def test_track_imports_in_a_bare_sandboxed_container(docker_client, tmp_path):
    """The harness package mounted read-only is all a container needs to log."""
    out = tmp_path / "out"
    out.mkdir()
    out.chmod(0o777)
    code = "from harness import track\nfor t in range(3): track.log({'charts/sps': 100.0 + t}, step=t)\n"
    docker_client.containers.run(
        BASE_IMAGE,
        ["python3", "-c", code],
        environment={"HARNESS_OUT": "/out", "PYTHONPATH": "/opt/harness"},
        volumes={
            str(REPO_ROOT / "harness"): {"bind": "/opt/harness/harness", "mode": "ro"},
            str(out): {"bind": "/out", "mode": "rw"},
        },
        network_mode="none",
        read_only=True,
        user="65534:65534",
        cap_drop=["ALL"],
        security_opt=["no-new-privileges"],
        remove=True,
    )
    lines = read_lines(out / "metrics.jsonl")
    assert [(line["step"], line["value"]) for line in lines] == [(0, 100.0), (1, 101.0), (2, 102.0)]
