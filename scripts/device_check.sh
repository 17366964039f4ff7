#!/usr/bin/env bash
# The prepared check for a lent GPU machine (one GPU, PyTorch and nvidia-ml-py, no Docker, no
# package registry): the NVML sampler around a CUDA matmul loop, then, when the harness's own
# dependencies import there (or wheels were carried in .devwheels/), the whole process-runtime
# path: `harness run <manifest> --runtime process` for each manifest given (default:
# manifests/gpu-matmul.yaml). Results go to $OUT.
set -u
OUT=${OUT:-/tmp/device-check}
mkdir -p "$OUT"
export PYTHONPATH=.
{ python -V; nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader; } > "$OUT/machine.txt" 2>&1
if [ -d .devwheels ]; then
  python -m pip install -q --no-index --find-links .devwheels pydantic docker transformers >"$OUT/pip.txt" 2>&1
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
  for manifest in "${@:-manifests/gpu-matmul.yaml}"; do
    name=$(basename "$manifest" .yaml)
    timeout 300 python -m harness run "$manifest" --runtime process --quiet > "$OUT/$name.run.txt" 2>&1
    echo "$name: harness run exit $?"
    run_dir=$(ls -td "$HARNESS_HOME"/runs/"$name"-* | head -1)
    python - "$run_dir" > "$OUT/$name.summary.json" <<'PY'
import json, sys, pyarrow.parquet as pq
run_dir = sys.argv[1]
record = json.load(open(f"{run_dir}/record.json"))
gpu = {}
for row in pq.read_table(f"{run_dir}/system.parquet").to_pylist():
    if row["name"].startswith("gpu/"):
        s = gpu.setdefault(row["name"], {"n": 0, "max": 0.0, "sum": 0.0})
        s["n"] += 1; s["max"] = max(s["max"], row["value"]); s["sum"] += row["value"]
for s in gpu.values():
    s["mean"] = round(s.pop("sum") / s["n"], 2)
last = {}
for row in pq.read_table(f"{run_dir}/metrics.parquet").to_pylist():
    last[row["name"]] = row["value"]
keep = ("status", "runtime", "hermetic", "duration_s", "gpu", "detail")
print(json.dumps({"record": {k: record.get(k) for k in keep}, "host_gpus": record["host"].get("gpus"),
                  "torch": record.get("environment", {}).get("torch"), "system_gpu": gpu,
                  "metrics_last": {k: v for k, v in last.items() if not k.startswith("losses/")}}, indent=1))
PY
  done
  rm -rf "$HARNESS_HOME"
else
  echo "harness dependencies missing on this machine: sampler check only"
fi
cat "$OUT/gpu_check.json" | head -40
