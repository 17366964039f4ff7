"""The Ray backend against the local one: the same sweep through both, records compared.

Runs a manifest's sweep (default: the 12-run DQN sweep, ``--smoke``) once through the local
backend and once through the Ray cluster of scripts/start-ray.sh, each into its own store, then
checks that every run completed on both, that every Ray record verifies (the sha256 of every
file), and that the metric values (name, step, value; not the wall-clock times, and not the
metrics the manifest's ``expect.ignore`` names, such as steps per second) are identical. Prints
the wall time of each sweep and of each run, as JSON.

    python benchmarks/bench_ray.py [--manifest manifests/dqn-sweep.yaml] [--full] [--jobs 2]
        [--address http://198.18.0.10:8265]

``--overhead N`` measures the per-run overhead instead: one noop smoke run at a time, N times
through the local backend, N through Ray with the files copied by path and N with the files
carried home in the job's log (``HARNESS_RAY_FILES=ray``); prints each one's wall times.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import pyarrow.parquet as pq

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from harness.backends import run_sweep  # noqa: E402 - after the path is set
from harness.manifest import load_manifest  # noqa: E402
from harness.run.plan import expand  # noqa: E402
from harness.store.local import LocalStore  # noqa: E402


def metric_values(store: LocalStore, run_id: str, ignore: set[str]) -> list[tuple[str, int, float]]:
    """A run's metric points without wall-clock times or ignored metrics."""
    rows = pq.read_table(store.run_dir(run_id) / "metrics.parquet").to_pylist()
    return [(r["name"], r["step"], r["value"]) for r in rows if r["name"] not in ignore]


def overhead(address: str, times: int) -> int:
    """One noop smoke run at a time through each road; exit 1 when a run does not complete."""
    import os

    specs = expand(load_manifest(REPO / "manifests" / "noop.yaml"), smoke=True)
    roads = {"local": ("local", "auto"), "ray (by path)": ("ray", "auto"), "ray (through Ray)": ("ray", "ray")}
    walls: dict[str, list[float]] = {road: [] for road in roads}
    failed: list[str] = []
    with tempfile.TemporaryDirectory(prefix="bench-ray-") as folder:
        for _ in range(times):
            for road, (backend, files) in roads.items():  # interleaved: the machine's load hits all alike
                os.environ["HARNESS_RAY_FILES"] = files
                store = LocalStore(Path(folder) / backend)
                started = time.monotonic()
                outcome = run_sweep(
                    specs, backend=backend, address=address, store=store, rerun=True, echo=lambda _: None
                )
                walls[road].append(time.monotonic() - started)
                failed += [f"{road}: {r.get('status')}" for r in outcome.records if r.get("status") != "completed"]
    median = {road: statistics.median(v) for road, v in walls.items()}
    print(
        json.dumps(
            {
                "runs_per_road": times,
                "wall_s": {road: [round(x, 2) for x in v] for road, v in walls.items()},
                "median_s": {road: round(m, 2) for road, m in median.items()},
                "ray_overhead_s": {
                    road: round(m - median["local"], 2) for road, m in median.items() if road != "local"
                },
                "problems": failed,
            },
            indent=2,
        )
    )
    return 1 if failed else 0


def main() -> int:
    """Run the comparison; exit 1 when a record differs or fails to verify."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--manifest", default=str(REPO / "manifests" / "dqn-sweep.yaml"))
    parser.add_argument("--full", action="store_true", help="full runs instead of --smoke")
    parser.add_argument("--jobs", type=int, default=2, help="local backend: runs at once")
    parser.add_argument("--address", default="http://198.18.0.10:8265")
    parser.add_argument("--overhead", type=int, metavar="N", help="measure the per-run overhead, N runs per road")
    args = parser.parse_args()
    if args.overhead:
        return overhead(args.address, args.overhead)
    loaded = load_manifest(args.manifest)
    ignore = set(loaded.manifest.expect.ignore or [])
    specs = expand(loaded, smoke=not args.full)
    with tempfile.TemporaryDirectory(prefix="bench-ray-") as folder:
        stores = {"local": LocalStore(Path(folder) / "local"), "ray": LocalStore(Path(folder) / "ray")}
        took: dict[str, float] = {}
        for backend in ("local", "ray"):
            started = time.monotonic()
            run_sweep(specs, backend=backend, jobs=args.jobs, address=args.address, store=stores[backend], echo=print)
            took[backend] = time.monotonic() - started
        problems: list[str] = []
        durations: dict[str, list[float]] = {"local": [], "ray": []}
        for spec in specs:
            for backend, store in stores.items():
                record = store.load(spec.run_id)
                if record.get("status") != "completed":
                    problems.append(f"{backend} {spec.run_id}: {record.get('status')}")
                durations[backend].append(float(record.get("duration_s") or 0.0))
            problems += [f"ray {spec.run_id}: {p}" for p in stores["ray"].verify(spec.run_id)]
            if metric_values(stores["local"], spec.run_id, ignore) != metric_values(stores["ray"], spec.run_id, ignore):
                problems.append(f"{spec.run_id}: metrics differ between the backends")
    print(
        json.dumps(
            {
                "manifest": args.manifest,
                "runs": len(specs),
                "smoke": not args.full,
                "sweep_wall_s": {k: round(v, 1) for k, v in took.items()},
                "run_duration_median_s": {k: round(statistics.median(v), 2) for k, v in durations.items()},
                "metrics_identical": not any("metrics differ" in p for p in problems),
                "problems": problems,
            },
            indent=2,
        )
    )
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
