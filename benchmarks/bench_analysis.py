"""Scale benchmark of the analysis path: a comparison table over 1k, 5k and 25k runs.

The benchmark writes its own synthetic store (5 groups x 50 environments, seeds added as the
store grows; every run a real record.json, a metrics.parquet of 1,000 points and the journal
entry that a sealed run writes as it ends), then times, per size: refreshing the run index (cold
without the journal, as a store made before it; cold; then warm), selecting the runs, reading each run's
final score, and the 5-group x 50-environment table with stratified-bootstrap IQM CIs.
Baseline, measured in the same run: reading the raw bytes of every metrics.parquet file.

    python benchmarks/bench_analysis.py [--sizes 1000,5000,25000] [--points 1000] [--root DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from harness.analysis import index as run_index
from harness.analysis.selection import select_runs
from harness.analysis.tables import build_comparison, to_markdown
from harness.store import journal
from harness.store.local import LocalStore

GROUPS = 5
ENVS = 50
METRIC = "charts/episodic_return"
FINISH_TIMES: list[float] = []


def write_run(store: LocalStore, group: int, env: int, seed: int, points: int, rng: np.random.Generator) -> None:
    """One synthetic run: a completed record and a learning curve that rises to a group/env level."""
    run_id = f"g{group}-e{env:02d}-s{seed:03d}"
    folder = store.run_dir(run_id)
    folder.mkdir(parents=True, exist_ok=True)
    steps = np.arange(1, points + 1, dtype=np.int64) * 100
    level = (group + 1) * (env % 7 + 1) * 10.0
    values = level * (1 - np.exp(-steps / steps[-1] * 4)) + rng.normal(0, level * 0.1, points)
    table = pa.table(
        {
            "run_id": pa.array([run_id] * points, pa.string()),
            "name": pa.array([METRIC] * points, pa.string()),
            "step": steps,
            "value": values,
            "wall_time": 1.7e9 + steps / 1000.0,
        }
    )
    pq.write_table(table, folder / "metrics.parquet")
    record = {
        "schema_version": 1,
        "run_id": run_id,
        "name": f"bench-g{group}",
        "tags": ["bench"],
        "status": "completed",
        "started_at": "2025-01-01T00:00:00Z",
        "duration_s": 60.0 + seed,
        "seed": seed,
        "params": {"env_id": f"Env{env:02d}-v0", "agent": f"g{group}"},
        "primary_metric": METRIC,
    }
    # generation is not what is measured: plain writes, not LocalStore.save's fsync per record
    (folder / "record.json").write_text(json.dumps(record))
    finish(store, run_id)


def finish(store: LocalStore, run_id: str) -> None:
    """What a sealed run writes for the index as it ends (LocalStore.seal calls the same), timed:
    each run pays it once, at its end."""
    start = time.perf_counter()
    store.note_finished(run_id)
    FINISH_TIMES.append(time.perf_counter() - start)


def grow_store(store: LocalStore, runs: int, points: int) -> None:
    """Add seeds to every (group, env) cell until the store holds ``runs`` runs."""
    seeds = runs // (GROUPS * ENVS)
    rng = np.random.default_rng(0)
    if store.runs_dir.is_dir() and not (store.root / journal.JOURNAL_DIR).is_dir():
        for run_id in sorted(os.listdir(store.runs_dir)):  # a store generated before the journal
            finish(store, run_id)
    for seed in range(seeds):
        for group in range(GROUPS):
            for env in range(ENVS):
                if not store.exists(f"g{group}-e{env:02d}-s{seed:03d}"):
                    write_run(store, group, env, seed, points, rng)


def timed(label: str, times: dict[str, float], func, *args, **kwargs):
    start = time.perf_counter()
    result = func(*args, **kwargs)
    times[label] = time.perf_counter() - start
    return result


def read_bytes(store: LocalStore) -> int:
    total = 0
    for path in store.runs_dir.glob("*/metrics.parquet"):
        total += len(path.read_bytes())
    return total


def per_run_files(store: LocalStore, runs: pa.Table) -> dict[str, float]:
    """Final scores read from every run's own metrics.parquet (the index's parts ignored)."""
    uncompacted = runs.set_column(
        runs.schema.get_field_index("metrics_part"), "metrics_part", pa.nulls(runs.num_rows, pa.string())
    )
    return run_index.final_values(store, uncompacted, METRIC, 10)


def forget_index(store: LocalStore) -> None:
    (store.root / run_index.INDEX_NAME).unlink(missing_ok=True)
    shutil.rmtree(store.root / run_index.PARTS_DIR, ignore_errors=True)


def measure(store: LocalStore) -> dict[str, float]:
    times: dict[str, float] = {}
    timed("baseline: read parquet bytes", times, read_bytes, store)
    # cold: no index, no compacted part; the journal is what the runs wrote as they ended
    aside = store.root / "journal.aside"
    (store.root / journal.JOURNAL_DIR).rename(aside)
    forget_index(store)
    timed("cold, no journal (old store)", times, run_index.refresh_index, store)
    aside.rename(store.root / journal.JOURNAL_DIR)
    forget_index(store)
    timed("index + compaction (cold)", times, run_index.refresh_index, store)
    timed("index refresh (warm)", times, run_index.refresh_index, store)
    start = time.perf_counter()
    runs = timed("select", times, select_runs, store, ["tag=bench"])
    summary = timed(
        "final scores + IQM table", times, build_comparison, store, runs, METRIC, by="manifest", env_key="env_id"
    )
    timed("markdown", times, to_markdown, summary)
    times["end to end (warm index)"] = time.perf_counter() - start
    timed("final scores, per-run files", times, per_run_files, store, runs)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="1000,5000,25000")
    parser.add_argument("--points", type=int, default=1000)
    parser.add_argument("--root", help="store folder to reuse (default: a temporary folder, removed)")
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    root = Path(args.root) if args.root else Path(tempfile.mkdtemp(prefix="bench-analysis-"))
    store = LocalStore(root)
    print(f"store: {root}  ({GROUPS} groups x {ENVS} envs, {args.points} points per run)")
    try:
        for size in sizes:
            start = time.perf_counter()
            grow_store(store, size, args.points)
            print(f"\n== {size} runs (generated in {time.perf_counter() - start:.1f} s, not timed below)")
            if FINISH_TIMES:
                print(
                    f"  journal entry per run, at its end: mean {1000 * np.mean(FINISH_TIMES):.1f} ms, "
                    f"max {1000 * max(FINISH_TIMES):.0f} ms (a merge), over {len(FINISH_TIMES)} runs"
                )
                FINISH_TIMES.clear()
            times = measure(store)
            baseline = times["baseline: read parquet bytes"]
            for label, seconds in times.items():
                print(f"  {label:<28} {seconds:8.3f} s   x{seconds / baseline:6.2f} baseline")
            peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
            print(f"  peak RSS so far              {peak:8.0f} MiB")
            sys.stdout.flush()
    finally:
        if not args.root:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "2")
    main()
