"""Build real run folders in a LocalStore for tests: real parquet files, a sealed record.json.

The folders have the layout of docs/architecture.md (manifest, lockfile, context/, logs/, out/,
metrics.parquet, system.parquet) so publish, pull and compare work on what a run really leaves.
"""

from __future__ import annotations

import json
import math
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from harness.store.local import LocalStore

METRICS_SCHEMA = pa.schema(
    [
        ("run_id", pa.string()),
        ("name", pa.string()),
        ("step", pa.int64()),
        ("value", pa.float64()),
        ("wall_time", pa.float64()),
    ]
)
SYSTEM_SCHEMA = pa.schema(
    [("run_id", pa.string()), ("time", pa.float64()), ("name", pa.string()), ("value", pa.float64())]
)

MANIFEST = """apiVersion: harness/v1
name: {name}
image: {{build: images/rl, lockfile: lockfiles/rl.txt}}
command: [python, /workload/train.py, --seed, "{{seed}}"]
params: {{lr: 0.001}}
seeds: [{seed}]
metrics: {{primary: charts/episodic_return}}
expect: {{deterministic: true}}
"""


def curve(seed: int, steps: int = 50, noise: float = 0.0) -> list[tuple[str, int, float]]:
    """A deterministic learning curve for a seed, optionally shifted by ``noise``."""
    rows = []
    for step in range(0, steps * 100, 100):
        value = 200 * (1 - math.exp(-step / 2000)) + math.sin(step * 0.01 + seed) * 5 + noise
        rows.append(("charts/episodic_return", step, value))
        rows.append(("losses/td_loss", step, 1 / (1 + step) + seed * 1e-3))
    return rows


def make_run(
    store: LocalStore,
    run_id: str,
    seed: int = 1,
    metrics: list[tuple[str, int, float]] | None = None,
    name: str = "toy-train",
    host: dict[str, Any] | None = None,
    extra_files: dict[str, bytes] | None = None,
) -> dict[str, Any]:
    """Write a completed run with real parquet files into ``store`` and seal it; returns the record."""
    folder = store.run_dir(run_id)
    rows = metrics if metrics is not None else curve(seed)
    files: dict[str, bytes] = {
        "manifest.yaml": MANIFEST.format(name=name, seed=seed).encode(),
        "lockfile.txt": b"numpy==2.0.0 \\\n    --hash=sha256:" + b"0" * 64 + b"\n",
        "context/Dockerfile": b"FROM harness/base:bookworm\nCOPY workload /workload\n",
        "context/workload/train.py": b"print('train')\n",
        "logs/output.log": f"seed {seed}\ndone\n".encode(),
        "out/metrics.jsonl": "".join(
            json.dumps({"name": n, "step": s, "value": v, "wall_time": 1.7e9 + s}) + "\n" for n, s, v in rows
        ).encode(),
        "system.jsonl": b'{"time": 1700000000.0, "name": "cpu_percent", "value": 50.0}\n',
    }
    files.update(extra_files or {})
    for relative, data in files.items():
        (folder / relative).parent.mkdir(parents=True, exist_ok=True)
        (folder / relative).write_bytes(data)
    metrics_table = pa.Table.from_pylist(
        [{"run_id": run_id, "name": n, "step": s, "value": float(v), "wall_time": 1.7e9 + s} for n, s, v in rows],
        schema=METRICS_SCHEMA,
    )
    pq.write_table(metrics_table, folder / "metrics.parquet")
    system_table = pa.Table.from_pylist(
        [{"run_id": run_id, "time": 1.7e9 + t, "name": "cpu_percent", "value": 50.0 + t} for t in range(5)],
        schema=SYSTEM_SCHEMA,
    )
    pq.write_table(system_table, folder / "system.parquet")
    returns = [v for n, _, v in rows if n == "charts/episodic_return"]
    record: dict[str, Any] = {
        "schema_version": 1,
        "run_id": run_id,
        "config_key": run_id * 2,
        "name": name,
        "description": "a toy run for tests",
        "tags": ["test"],
        "status": "completed",
        "exit_code": 0,
        "started_at": "2026-01-01T00:00:00Z",
        "ended_at": "2026-01-01T00:01:00Z",
        "duration_s": 60.0,
        "seed": seed,
        "params": {"lr": 0.001},
        "smoke": False,
        "runtime": "docker",
        "hermetic": True,
        "manifest_sha256": "0" * 64,
        "lockfile_sha256": "1" * 64,
        "image": {
            "ref": "harness/rl:abc",
            "id": "sha256:" + "2" * 64,
            "tag": "harness/rl:abc",
            "content_hash": "3" * 64,
            "packages": [],
        },
        "hardware": {"accelerator": "cpu", "gpus": 0, "cpus": 1, "memory": "2GiB"},
        "host": host
        or {
            "hostname": "box",
            "os": "Linux",
            "kernel": "6.1",
            "cpu_model": "Test CPU",
            "cpu_count": 2,
            "memory_bytes": 8 << 30,
            "gpus": [],
            "gpu_driver": None,
        },
        "metrics_summary": {
            "charts/episodic_return": {
                "last": returns[-1],
                "max": max(returns),
                "min": min(returns),
                "mean_last_n": sum(returns[-10:]) / len(returns[-10:]),
                "count": len(returns),
            }
        }
        if returns
        else {},
        "primary_metric": "charts/episodic_return",
        "reproduces": None,
    }
    return store.seal(record)
