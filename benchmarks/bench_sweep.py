"""Sweep overhead, measured against a baseline taken in the same run.

Local: N no-op runs through the local backend (the full single-run path: record, capture,
checksums) versus the same number of bare ``docker run`` calls of the same image:

    ratio = sweep wall time / (sum of bare docker run times / parallelism)      aim: <= 1.2

Slurm (with --slurm, needs a cluster): per-task overhead, submit -> record written, for no-op
runs, against the wall time of the same bare ``docker run``.

    python benchmarks/bench_sweep.py [--runs 100] [--jobs 2] [--slurm] [--slurm-runs 5]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench_core import SANDBOX_FLAGS, timed  # the same baseline flags and timer as every benchmark

BASE_IMAGE = "harness/base:bookworm"


def image_id() -> str:
    return subprocess.run(
        ["docker", "image", "inspect", "--format", "{{.Id}}", BASE_IMAGE], capture_output=True, text=True, check=True
    ).stdout.strip()


def bare_docker_runs(image: str, count: int) -> list[float]:
    """Seconds each of ``count`` sequential bare, sandboxed ``docker run --rm`` calls took."""
    # the sandbox of bench_core's baseline, with the limits of the manifest below
    sandbox = [*SANDBOX_FLAGS, "--memory", "256m", "--cpus", "1"]
    return [timed(["docker", "run", "--rm", *sandbox, image, "python3", "-c", f"print({i})"]) for i in range(count)]


def bare_docker_runs_parallel(image: str, count: int, parallelism: int) -> float:
    """Wall seconds of ``count`` bare runs, ``parallelism`` at a time: what the engine itself
    manages concurrently on this machine (container starts are serialised in the engine)."""
    from concurrent.futures import ThreadPoolExecutor

    started = time.perf_counter()
    with ThreadPoolExecutor(parallelism) as pool:
        list(pool.map(lambda index: bare_docker_runs(image, 1), range(count)))
    return time.perf_counter() - started


def write_manifest(folder: Path, image: str, runs: int) -> Path:
    path = folder / "noop.yaml"
    path.write_text(
        json.dumps(
            {
                "apiVersion": "harness/v1",
                "name": "bench-noop",
                "image": {"ref": image},
                "command": ["python3", "-c", "print({i})"],
                "params": {"i": 0},
                "seeds": [0],
                "sweep": {"i": list(range(runs))},
                "hardware": {"cpus": 1, "memory": "256MiB", "timeout": "60s"},
            }
        )
    )
    return path


def bench_local(runs: int, jobs: int) -> None:
    from harness.backends import run_sweep
    from harness.backends.local import parallel_slots
    from harness.manifest import load_manifest
    from harness.run.plan import expand
    from harness.store.local import LocalStore

    image = image_id()
    with tempfile.TemporaryDirectory() as tmp:
        specs = expand(load_manifest(write_manifest(Path(tmp), image, runs)))
        slots = parallel_slots(specs[0].loaded.view.hardware, jobs)
        bare_docker_runs(image, 2)  # warm the engine
        bare = bare_docker_runs(image, runs)
        bare_parallel = bare_docker_runs_parallel(image, runs, slots)
        started = time.perf_counter()
        outcome = run_sweep(
            specs, jobs=jobs, runtime="docker", store=LocalStore(Path(tmp) / "store"), echo=lambda line: None
        )
        wall = time.perf_counter() - started
    assert all(r["status"] == "completed" for r in outcome.records), "a no-op run failed"
    baseline = sum(bare) / slots
    print(
        f"local: {runs} no-op runs, parallelism {slots}: sweep {wall:.1f}s; bare docker run "
        f"{sum(bare):.1f}s total ({sum(bare) / runs:.2f}s each) / {slots} = {baseline:.1f}s; "
        f"ratio {wall / baseline:.2f}x (aim <= 1.2x)"
    )
    print(
        f"local: the same {runs} bare docker runs {slots} at a time took {bare_parallel:.1f}s: "
        f"ratio sweep / parallel bare runs {wall / bare_parallel:.2f}x"
    )


def bench_slurm(runs: int) -> None:
    """One-run sweeps submitted one after another: submit -> sealed record, minus a bare docker run."""
    from harness.backends import run_sweep
    from harness.manifest import load_manifest
    from harness.run.plan import expand
    from harness.store.local import LocalStore

    image = image_id()
    bare = bare_docker_runs(image, 3)
    latencies = []
    with tempfile.TemporaryDirectory() as tmp:
        store = LocalStore(Path(tmp) / "store")
        for index in range(runs):
            folder = Path(tmp) / f"m{index}"
            folder.mkdir()
            spec = expand(load_manifest(write_manifest(folder, image, 1)), seeds=[index])[0]
            submitted = time.perf_counter()
            run_sweep([spec], backend="slurm", store=store, echo=lambda line: None)
            path = store.run_dir(spec.run_id) / "record.json"
            deadline = time.monotonic() + 300
            while time.monotonic() < deadline:
                if path.is_file() and json.loads(path.read_text()).get("status") != "running":
                    break
                time.sleep(0.05)
            latencies.append(time.perf_counter() - submitted)
    latencies.sort()
    median = latencies[len(latencies) // 2]
    print(
        f"slurm: {runs} one-run submissions; submit -> record written median {median:.2f}s "
        f"(min {latencies[0]:.2f}s, max {latencies[-1]:.2f}s); bare docker run {min(bare):.2f}s; "
        f"per-task overhead about {median - min(bare):.2f}s ({median / min(bare):.1f}x a bare docker run)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=100)
    parser.add_argument("--jobs", type=int, default=None)
    parser.add_argument("--slurm", action="store_true")
    parser.add_argument("--slurm-runs", type=int, default=5)
    args = parser.parse_args()
    bench_local(args.runs, args.jobs)
    if args.slurm:
        bench_slurm(args.slurm_runs)


if __name__ == "__main__":
    sys.exit(main())
