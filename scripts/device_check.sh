#!/usr/bin/env bash
# The prepared check for a lent GPU machine (one GPU, PyTorch and nvidia-ml-py, no Docker, no
# package registry): the NVML sampler around a CUDA matmul loop, then, when the harness's own
# dependencies import there (or wheels were carried in .devwheels/), the whole process-runtime
# path: `harness run manifests/gpu-matmul.yaml --runtime process`. Results go to $OUT.
set -u
OUT=${OUT:-/tmp/device-check}
mkdir -p "$OUT"
export PYTHONPATH=.
{ python -V; nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader; } > "$OUT/machine.txt" 2>&1
if [ -d .devwheels ]; then
  python -m pip install -q --no-index --find-links .devwheels pydantic docker >"$OUT/pip.txt" 2>&1
fi
python - > "$OUT/packages.json" 2>&1 <<'PY'
import importlib, json
found = {}
for name in ["torch", "pynvml", "psutil", "click", "pydantic", "yaml", "pyarrow", "docker", "rich", "numpy"]:
    try:
        module = importlib.import_module(name)
        found[name] = getattr(module, "__version__", "yes")
    except Exception as exc:
        found[name] = f"missing: {exc}"
print(json.dumps(found, indent=1))
PY
timeout 150 python scripts/gpu_check.py --seconds 15 > "$OUT/gpu_check.json" 2> "$OUT/gpu_check.err"
echo "gpu_check exit $?"
if python -c "import click, pydantic, yaml, pyarrow, docker, rich, psutil" 2>/dev/null; then
  export HARNESS_HOME="$OUT/store"
  timeout 240 python -m harness run manifests/gpu-matmul.yaml --runtime process --param seconds=15 --quiet > "$OUT/harness_run.txt" 2>&1
  echo "harness run exit $?"
  run_dir=$(ls -d "$HARNESS_HOME"/runs/* | head -1)
  cp "$run_dir/record.json" "$OUT/record.json"
  python - > "$OUT/gpu_samples.json" <<PY
import json, pyarrow.parquet as pq
rows = pq.read_table("$run_dir/system.parquet").to_pylist()
summary = {}
for row in rows:
    if row["name"].startswith("gpu/"):
        s = summary.setdefault(row["name"], {"n": 0, "max": 0.0, "sum": 0.0})
        s["n"] += 1; s["max"] = max(s["max"], row["value"]); s["sum"] += row["value"]
for s in summary.values():
    s["mean"] = s.pop("sum") / s["n"]
metrics = pq.read_table("$run_dir/metrics.parquet").to_pylist()
tflops = [m["value"] for m in metrics if m["name"] == "perf/tflops"]
print(json.dumps({"system_gpu": summary, "tflops_max": max(tflops or [0]), "points": len(metrics)}, indent=1))
PY
  rm -rf "$HARNESS_HOME"
else
  echo "harness dependencies missing on this machine: sampler check only"
fi
cat "$OUT/gpu_check.json" | head -40
