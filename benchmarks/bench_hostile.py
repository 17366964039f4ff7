"""Memory of the harness under hostile volumes, with baselines measured in the same run.

1. Peak RSS of ``harness run`` while its workload writes ``--megabytes`` (200) of JSON metric lines
   (aim: ≤ 400 MB), against the same run writing none.
2. Peak RSS of ``harness publish`` of one run into a repo whose ``runs.parquet`` already holds
   ``--index-rows`` (3M) rows in one row group (aim: ≤ 500 MB), against a publish into an empty repo.

Each figure is the peak resident set of the harness process (``ru_maxrss`` of a fresh wrapper's
children), so the container's own memory is not counted.

    python benchmarks/bench_hostile.py [--megabytes 200] [--index-rows 3000000]

Needs the Docker engine and the base image (``harness image bootstrap``); the Hub is the project's
test server (tests/hubserver), started here.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TOKEN = "hf_benchTOKEN0123456789abcdef"

FLOOD = '''"""Write MEGABYTES of JSON metric lines to metrics.jsonl, as fast as it can."""
import json, os, sys
target = int(sys.argv[1]) << 20
path = os.path.join(os.environ["HARNESS_OUT"], "metrics.jsonl")
written, step = 0, 0
with open(path, "w") as handle:
    while written < target:
        lines = "".join(
            json.dumps({"name": f"charts/m{i % 8}", "step": step + i, "value": (step + i) * 0.5, "wall_time": 1.7e9 + step + i}) + "\\n"
            for i in range(10000))
        handle.write(lines)
        written += len(lines)
        step += 10000
with open(path, "a") as handle:
    handle.write(json.dumps({"name": "probe/value", "step": 0, "value": 1.0}) + "\\n")
print(f"wrote {written >> 20} MB, {step} lines")
'''

MANIFEST = """apiVersion: harness/v1
name: flood
image: {build: images/noop, lockfile: lockfiles/noop.txt}
command: [python, /workload/flood.py, "{megabytes}"]
params: {megabytes: 0}
seeds: [0]
hardware: {accelerator: cpu, gpus: 0, cpus: 1, memory: 1GiB, timeout: 20m}
metrics: {primary: probe/value}
expect: {deterministic: true}
"""

MEASURE = (
    "import resource, subprocess, sys; r = subprocess.run(sys.argv[1:], capture_output=True, text=True); "
    "sys.stderr.write(r.stderr[-2000:]); "
    "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss); sys.exit(r.returncode)"
)


def peak_rss_mb(args: list[str], cwd: Path, env: dict[str, str]) -> tuple[float, float]:
    """(peak RSS in MB, seconds) of ``python -m harness ARGS`` run in a fresh wrapper."""
    started = time.perf_counter()
    result = subprocess.run(
        [sys.executable, "-c", MEASURE, sys.executable, "-m", "harness", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        env={**os.environ, **env},
    )
    elapsed = time.perf_counter() - started
    if result.returncode != 0:
        raise SystemExit(f"harness {' '.join(args)} failed: {result.stderr.strip()[-600:]}")
    return int(result.stdout.strip().splitlines()[-1]) / 1024, elapsed


def flood_project(root: Path) -> Path:
    shutil.copytree(REPO / "images" / "noop", root / "images" / "noop")
    (root / "images" / "noop" / "workload" / "flood.py").write_text(FLOOD)
    (root / "lockfiles").mkdir()
    shutil.copy(REPO / "lockfiles" / "noop.txt", root / "lockfiles" / "noop.txt")
    (root / "manifests").mkdir()
    (root / "manifests" / "flood.yaml").write_text(MANIFEST)
    return root / "manifests" / "flood.yaml"


def bench_metrics(tmp: Path, megabytes: int) -> None:
    from harness.images.build import build_image

    manifest = flood_project(tmp / "project")
    build_image(tmp / "project" / "images" / "noop", tmp / "project" / "lockfiles" / "noop.txt")
    results = {}
    for label, size in (("baseline (no metrics)", 0), (f"{megabytes} MB of metric lines", megabytes)):
        home = tmp / f"store-{size}"
        peak, seconds = peak_rss_mb(
            ["run", str(manifest), "--param", f"megabytes={size}", "--quiet"],
            tmp / "project",
            {"HARNESS_HOME": str(home)},
        )
        record = json.loads(next((home / "runs").glob("*/record.json")).read_text())
        rows = sum(s.get("count", 0) for s in record["metrics_summary"].values())
        results[label] = peak
        print(f"run, {label:28} peak RSS {peak:7.0f} MB  ({seconds:5.1f} s, {rows} rows, status {record['status']})")
    extra = results[f"{megabytes} MB of metric lines"]
    print(
        f"  -> {extra:.0f} MB with {megabytes} MB of metrics (aim <= 400 MB); "
        f"{extra / results['baseline (no metrics)']:.2f}x the no-op run"
    )


def huge_index(rows: int) -> bytes:
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    from harness.store.card import BASE_COLUMNS as RUNS_SCHEMA

    columns = {field.name: pa.nulls(rows, field.type) for field in RUNS_SCHEMA}
    columns["run_id"] = pc.binary_join_element_wise(
        pa.array(["old-"] * rows), pc.cast(pa.array(range(rows)), pa.string()), ""
    )
    columns["name"] = pa.array(["old"] * rows)
    columns["status"] = pa.array(["completed"] * rows)
    buffer = io.BytesIO()
    pq.write_table(pa.table(columns, schema=RUNS_SCHEMA), buffer, row_group_size=rows)
    return buffer.getvalue()


def bench_publish(tmp: Path, rows: int) -> None:
    from harness.store.local import LocalStore
    from tests.hubserver import HubServer, RepoRef
    from tests.hubserver.runs import make_run

    store = LocalStore(tmp / "origin")
    make_run(store, "bench-aaa")
    index = huge_index(rows)
    env = {
        "HARNESS_HOME": str(store.root),
        "HF_TOKEN": TOKEN,
        "HF_HUB_DISABLE_XET": "1",
        "HF_HUB_DISABLE_PROGRESS_BARS": "1",
    }
    with HubServer(tmp / "hub", token=TOKEN) as hub:
        env["HF_ENDPOINT"] = hub.url
        hub.storage.create_repo(RepoRef("dataset", "bench/huge"), private=False)
        hub.storage.force_commit(RepoRef("dataset", "bench/huge"), {"runs.parquet": index})
        base, base_s = peak_rss_mb(["publish", "bench-aaa", "--repo", "bench/empty"], REPO, env)
        print(f"publish, baseline (empty repo)          peak RSS {base:7.0f} MB  ({base_s:5.1f} s)")
        peak, seconds = peak_rss_mb(["publish", "bench-aaa", "--repo", "bench/huge"], REPO, env)
        print(f"publish, index of {rows} rows ({len(index) >> 10} KB) peak RSS {peak:7.0f} MB  ({seconds:5.1f} s)")
    print(
        f"  -> {peak:.0f} MB into a {rows}-row index (aim <= 500 MB); {peak / base:.2f}x a publish into an empty repo"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--megabytes", type=int, default=200)
    parser.add_argument("--index-rows", type=int, default=3_000_000)
    parser.add_argument("--only", choices=["metrics", "publish"])
    args = parser.parse_args()
    sys.path.insert(0, str(REPO))
    with tempfile.TemporaryDirectory(prefix="bench-hostile-") as scratch:
        tmp = Path(scratch)
        if args.only in (None, "metrics"):
            bench_metrics(tmp, args.megabytes)
        if args.only in (None, "publish"):
            bench_publish(tmp, args.index_rows)


if __name__ == "__main__":
    main()
