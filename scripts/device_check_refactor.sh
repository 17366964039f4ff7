#!/usr/bin/env bash
# The prepared check, on a lent GPU machine (one GPU, PyTorch and nvidia-ml-py, no Docker), of
# what the issue-10 refactor changed on the GPU paths:
#   1. the GPUs the local backend sees (host_gpu_count through NVML; it was always 0 before);
#   2. a local sweep of a GPU manifest (two seeds, process runtime) is accepted and completes,
#      with NVML samples in each run's system table and the GPU in its record;
#   3. a run is never loaded with pandas or the docker SDK on the process runtime.
# Wheels the machine lacks (pydantic) travel in .devwheels/. Results go to $OUT.
set -u
OUT=${OUT:-/tmp/device-check}
mkdir -p "$OUT"
if ls .devwheels/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .devwheels/*.whl >"$OUT/pip.txt" 2>&1
  export PYTHONPATH=/tmp/site:.
else
  export PYTHONPATH=.
fi
export HARNESS_HOME=/tmp/store HARNESS_CACHE=/tmp/cache CI=true PYTHONUNBUFFERED=1
{ python3 -V; nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader; } > "$OUT/machine.txt" 2>&1
python3 - > "$OUT/gpu_host.json" 2>&1 <<'PY'
import json
from harness.backends.local import host_resources, parallel_slots
from harness.capture.gpu import host_gpu_count, host_gpu_status
from harness.manifest import load_manifest
hardware = load_manifest("manifests/gpu-matmul.yaml").manifest.hardware
resources = host_resources()
print(json.dumps({"host_gpu_count": host_gpu_count(), "host_resources": resources,
                  "slots_for_gpu_matmul": parallel_slots(hardware, host=resources),
                  "nvml": {k: v for k, v in host_gpu_status().items() if k != "devices"}}, indent=1))
PY
echo "gpu host check exit $?"
timeout 240 python3 -m harness run manifests/gpu-matmul.yaml --seed 1 --seed 2 --runtime process \
  --param seconds=8 --param size=4096 > "$OUT/sweep.txt" 2>&1
echo "sweep exit $?"
python3 -X importtime -m harness run manifests/gpu-matmul.yaml --seed 3 --runtime process \
  --param seconds=2 --param size=1024 --quiet 2> "$OUT/importtime.txt" > "$OUT/single.txt"
echo "single run exit $?; pandas imported: $(grep -c '| pandas$' "$OUT/importtime.txt"), docker imported: $(grep -c '| docker$' "$OUT/importtime.txt")"
python3 - > "$OUT/runs.json" 2>&1 <<'PY'
import json, pathlib
import pyarrow.parquet as pq
summary = []
for run_dir in sorted(pathlib.Path("/tmp/store/runs").iterdir()):
    record = json.loads((run_dir / "record.json").read_text())
    gpu = {}
    for row in pq.read_table(run_dir / "system.parquet").to_pylist():
        if row["name"].startswith("gpu/0/") and row["name"].split("/")[-1] in ("utilization_percent", "memory_used_bytes"):
            gpu[row["name"]] = max(gpu.get(row["name"], 0.0), row["value"])
    summary.append({"run_id": record["run_id"], "status": record["status"], "seed": record["seed"],
                    "runtime": record["runtime"], "gpu_devices": [d.get("name") for d in (record.get("gpu") or {}).get("devices", [])],
                    "tflops_last": (record.get("metrics_summary") or {}).get("perf/tflops", {}).get("last"),
                    "system_gpu_max": gpu})
print(json.dumps(summary, indent=1))
PY
cat "$OUT/gpu_host.json" "$OUT/runs.json"; tail -5 "$OUT/sweep.txt"
