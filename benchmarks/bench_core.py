"""Core-path overhead, measured against baselines taken in the same run (these machines are noisy).

1. ``harness run`` of the cached no-op manifest vs a bare ``docker run --rm`` of the same image
   with the same sandbox flags (aim: ≤ 1.5×). Interleaved, median of N.
2. ``harness build`` with nothing changed (aim: ≤ 0.3 s and no call to the engine's build),
   against the bare interpreter start-up of ``python -c pass`` as the floor.

    python benchmarks/bench_core.py [--repeats 7]

Needs the Docker engine and the base image (``harness image bootstrap``).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
MANIFEST = REPO / "manifests" / "noop.yaml"


# the harness's sandbox as `docker run` / `podman run` flags, for the bare baselines
SANDBOX_FLAGS = [
    "--network",
    "none",
    "--read-only",
    "--tmpfs",
    "/tmp",
    "--cap-drop",
    "ALL",
    "--security-opt",
    "no-new-privileges",
    "--user",
    "65534:65534",
]


def timed(cmd: list[str], env: dict[str, str] | None = None, cwd: Path = REPO) -> float:
    """Seconds ``cmd`` took; it must succeed."""
    started = time.perf_counter()
    result = subprocess.run(cmd, cwd=cwd, env={**os.environ, **(env or {})}, capture_output=True, text=True)
    elapsed = time.perf_counter() - started
    if result.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed: {(result.stdout + result.stderr).strip()[-600:]}")
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()
    sys.path.insert(0, str(REPO))
    from harness.images.build import build_image

    image = build_image(REPO / "images" / "noop", REPO / "lockfiles" / "noop.txt")
    harness = [sys.executable, "-m", "harness"]
    sandbox = [
        *SANDBOX_FLAGS,
        "--memory",
        "256m",
        "--cpus",
        "1",
        "-v",
        f"{REPO / 'harness'}:/opt/harness/harness:ro",
        "-e",
        "PYTHONPATH=/opt/harness",
        "-e",
        "HARNESS_OUT=/tmp",
    ]
    bare = ["docker", "run", "--rm", *sandbox, image.id, "python", "/workload/probe.py", "--mode", "noop"]

    with tempfile.TemporaryDirectory() as home:
        env = {"HARNESS_HOME": home}
        timed([*harness, "run", str(MANIFEST), "--param", "mode=noop", "--quiet"], env)  # warm the caches
        timed(bare)
        harness_times, bare_times = [], []
        for _ in range(args.repeats):
            harness_times.append(
                timed([*harness, "run", str(MANIFEST), "--param", "mode=noop", "--rerun", "--quiet"], env)
            )
            bare_times.append(timed(bare))
    run_ratio = statistics.median(harness_times) / statistics.median(bare_times)
    print(f"harness run (no-op, cached image): median {statistics.median(harness_times):.3f}s")
    print(f"bare docker run --rm (same image, same sandbox): median {statistics.median(bare_times):.3f}s")
    print(f"ratio harness/bare: {run_ratio:.2f}x (aim <= 1.5x)")

    build_times, python_times = [], []
    for _ in range(args.repeats):
        build_times.append(timed([*harness, "build", str(MANIFEST), "--quiet"]))
        python_times.append(timed([sys.executable, "-c", "pass"]))
    started = time.perf_counter()
    info = build_image(REPO / "images" / "noop", REPO / "lockfiles" / "noop.txt")
    in_process = time.perf_counter() - started
    print(
        f"warm harness build (CLI): median {statistics.median(build_times):.3f}s (aim <= 0.15s); "
        f"in-process cache check {in_process * 1000:.0f} ms; engine build called: {not info.cached}"
    )
    print(
        f"python -c pass: median {statistics.median(python_times):.3f}s; "
        f"ratio build/python start-up: {statistics.median(build_times) / statistics.median(python_times):.1f}x"
    )


if __name__ == "__main__":
    main()
