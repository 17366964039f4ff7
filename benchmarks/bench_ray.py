"""The Ray backend against the local one: the same sweep through both, records compared.

Runs a manifest's sweep (default: the 12-run DQN sweep, ``--smoke``) once through the local
backend and once through the Ray cluster of scripts/start-ray.sh, each into its own store, then
checks that every run completed on both, that every Ray record verifies (the sha256 of every
file), and that the metric values (name, step, value; not the wall-clock times, and not the
metrics the manifest's ``expect.ignore`` names, such as steps per second) are identical. Prints
the wall time of each sweep and of each run, as JSON.

    python benchmarks/bench_ray.py [--manifest manifests/dqn-sweep.yaml] [--full] [--jobs 2]
        [--address http://198.18.0.10:8265]
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


def main() -> int:
    """Run the comparison; exit 1 when a record differs or fails to verify."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--manifest", default=str(REPO / "manifests" / "dqn-sweep.yaml"))
    parser.add_argument("--full", action="store_true", help="full runs instead of --smoke")
    parser.add_argument("--jobs", type=int, default=2, help="local backend: runs at once")
    parser.add_argument("--address", default="http://198.18.0.10:8265")
    args = parser.parse_args()
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
