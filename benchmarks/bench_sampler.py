"""CPU cost of the system sampler at 1 Hz, as a percentage of one core.

Measured in this process with its own CPU-time counter: first a baseline with no sampler (the
process idling), then the sampler running at 1 Hz on a process tree (the process runtime) and,
when a Docker engine and ``harness/base:bookworm`` are there, on a container (the cgroup path,
and the engine's stats API for comparison). Also the CPU cost of one sample, from a tight loop.
The stats API answers about once a second (the engine's own collection period).
Aim: <= 1 % of one core at 1 Hz. Also the cadence: the gaps between samples (aim: 0.8-1.3 s on a
quiet machine; the tests check only that samples are never closer than asked).

    python benchmarks/bench_sampler.py [--seconds 15] [--loop 200]
"""

from __future__ import annotations

import argparse
import itertools
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from harness.capture.system import SystemSampler, read_system_jsonl

BASE_IMAGE = "harness/base:bookworm"


def cpu_seconds() -> float:
    """CPU time of this whole process (every thread), user + system."""
    times = os.times()
    return times.user + times.system


def sample_gaps(jsonl: Path) -> list[float]:
    """Seconds between successive samples in a system.jsonl."""
    times, names, _ = read_system_jsonl(jsonl)
    sampled = sorted({t for t, name in zip(times, names, strict=True) if name == "cpu/percent"})
    return [b - a for a, b in itertools.pairwise(sampled)]


def threaded_cost(seconds: float, folder: Path, **target: Any) -> float | None:
    """Percent of one core this process uses idling for ``seconds`` (with a sampler if a target)."""
    (folder / "system.jsonl").unlink(missing_ok=True)
    sampler = SystemSampler("bench", folder / "system.jsonl", interval=1.0, **target) if target else None
    start_cpu, start = cpu_seconds(), time.monotonic()
    if sampler is not None:
        sampler.start()
    time.sleep(seconds)
    if sampler is not None:
        sampler.stop()
        if sampler.samples_taken == 0:
            return None
    return (cpu_seconds() - start_cpu) / (time.monotonic() - start) * 100.0


def per_sample_ms(loops: int, folder: Path, **target: Any) -> float:
    """CPU milliseconds of one sample (sample_once in a tight loop, output written)."""
    sampler = SystemSampler("bench", folder / "loop.jsonl", interval=1.0, **target)
    sampler.start()  # opens the output and NVML; the thread's own samples are 1 s apart
    start = time.process_time()
    for _ in range(loops):
        sampler.sample_once()
    cost = (time.process_time() - start) / loops * 1000.0
    sampler.stop()
    return cost


def start_container() -> Any:
    try:
        import docker

        client = docker.from_env()
        client.images.get(BASE_IMAGE)
    except Exception as exc:  # noqa: BLE001 — without an engine or image the container figures are skipped, whatever the cause
        print(f"(no container figures: {exc})")
        return None
    return client.containers.run(BASE_IMAGE, ["sleep", "3600"], detach=True, network_mode="none", mem_limit="256m")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=15.0, help="length of each 1 Hz measurement")
    parser.add_argument("--loop", type=int, default=200, help="samples in the tight-loop measurement")
    args = parser.parse_args()

    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(3600)"])
    container = start_container()
    rows: list[tuple[str, float | None, float, list[float]]] = []
    try:
        with tempfile.TemporaryDirectory() as tmp:
            folder = Path(tmp)
            baseline = threaded_cost(args.seconds, folder)
            assert baseline is not None
            targets: list[tuple[str, dict[str, Any]]] = [("process tree (psutil)", {"pid": child.pid})]
            if container is not None:
                targets.append(("container (cgroup files)", {"container": container}))
                targets.append(
                    (
                        "container (engine stats API)",
                        {"container": container, "prefer_cgroup": False},
                    )
                )
            for label, target in targets:
                # the engine refreshes its stats about once a second: a few calls are enough
                loops = args.loop if target.get("prefer_cgroup", True) else min(args.loop, 5)
                loop_ms = per_sample_ms(loops, folder, **target)
                running = threaded_cost(args.seconds, folder, **target)
                rows.append((label, running, loop_ms, sample_gaps(folder / "system.jsonl")))
    finally:
        child.kill()
        if container is not None:
            container.remove(force=True)

    print(f"baseline (idle, no sampler)         {baseline:6.3f} % of one core, {args.seconds:.0f} s")
    for label, running, loop_ms, gaps in rows:
        at_one_hz = loop_ms / 10.0  # ms per second -> percent of one core
        measured = f"{running - baseline:6.3f} %" if running is not None else "   n/a  "
        print(
            f"{label:34s}  1 Hz run: {measured} above baseline;  one sample {loop_ms:6.3f} ms CPU "
            f"-> {at_one_hz:5.3f} % at 1 Hz;  ratio to the 1 % aim {at_one_hz / 1.0:5.3f}"
        )
        if gaps:
            print(f"{'':34s}  gaps between samples {min(gaps):.2f}-{max(gaps):.2f} s (aim 0.8-1.3 s)")


if __name__ == "__main__":
    main()
