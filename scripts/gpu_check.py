"""Device check of the GPU sampling path: a CUDA matmul loop watched by the SystemSampler.

Runs the sampler as the process runtime does (on this process's own pid, every 0.5 s, GPU 0)
for ~2 s idle, ~20 s of float32 matmuls, ~1 s idle; then prints one JSON summary: max/mean
during the loop of gpu/0/utilization_percent, memory_used_bytes,
process_memory_bytes, power_watts, the idle figures, the gpu_status and the matmul rate.

Exit status: 0 the sampler saw utilisation and memory above zero during the loop; 1 it did not;
3 no usable GPU (no torch, no CUDA device or no NVML: the reason is printed); 4 a Python
package the sampler needs (psutil) is missing. Needs only torch, nvidia-ml-py and psutil:

    PYTHONPATH=. python scripts/gpu_check.py [--seconds 20]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def no_gpu(reason: str, **extra: object) -> int:
    print(json.dumps({"ok": False, "gpu": False, "reason": reason, **extra}, indent=2))
    print(f"gpu_check: no GPU to check: {reason}", file=sys.stderr)
    return 3


def matmul_loop(torch: object, seconds: float) -> dict[str, float]:
    """float32 matmuls on cuda:0 for ``seconds``; returns the achieved rate."""
    size = 8192
    a = torch.randn(size, size, device="cuda")  # type: ignore[attr-defined]
    b = torch.randn(size, size, device="cuda")  # type: ignore[attr-defined]
    torch.cuda.synchronize()  # type: ignore[attr-defined]
    start = time.monotonic()
    iterations = 0
    while time.monotonic() - start < seconds:
        for _ in range(20):
            c = a @ b
        torch.cuda.synchronize()  # type: ignore[attr-defined]
        iterations += 20
    elapsed = time.monotonic() - start
    del c
    return {
        "iterations": iterations,
        "seconds": round(elapsed, 2),
        "tflops": round(2 * size**3 * iterations / elapsed / 1e12, 1),
    }


def window_stats(rows: list[tuple[float, str, float]], start: float, end: float) -> dict[str, dict]:
    series: dict[str, list[float]] = {}
    for when, name, value in rows:
        if start <= when <= end:
            series.setdefault(name, []).append(value)
    return {
        name: {
            "max": max(values),
            "mean": round(statistics.fmean(values), 2),
            "samples": len(values),
        }
        for name, values in sorted(series.items())
        if name.startswith("gpu/")
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=20.0, help="length of the matmul loop")
    args = parser.parse_args()

    try:
        import torch
    except ImportError as exc:
        return no_gpu(f"torch is not installed ({exc})")
    if not torch.cuda.is_available():
        return no_gpu("torch sees no CUDA device", torch=torch.__version__, torch_cuda=torch.version.cuda)
    try:
        from harness.capture.system import SystemSampler, read_system_jsonl
    except ImportError as exc:
        print(f"gpu_check: missing Python package for the sampler: {exc}", file=sys.stderr)
        return 4

    with tempfile.TemporaryDirectory() as tmp:
        jsonl = Path(tmp) / "system.jsonl"
        # NVML index 0: the machine lent for this check has one GPU, which CUDA sees as cuda:0
        sampler = SystemSampler("gpu-check", jsonl, interval=0.5, pid=os.getpid(), gpu_indices=[0])
        sampler.start()
        status = sampler.gpu_status()
        if not status["available"]:
            sampler.stop()
            return no_gpu(f"NVML: {status['reason']}", gpu_status=status)
        time.sleep(2.0)
        loop_start = time.time()
        rate = matmul_loop(torch, args.seconds)
        loop_end = time.time()
        torch.cuda.empty_cache()
        time.sleep(1.0)
        sampler.stop()
        times, names, values = read_system_jsonl(jsonl)
    rows = list(zip(times, names, values, strict=True))
    during = window_stats(rows, loop_start + 1.0, loop_end)  # skip the first second (ramp-up)
    idle = window_stats(rows, 0.0, loop_start)
    utilisation = during.get("gpu/0/utilization_percent", {}).get("max", 0.0)
    memory = during.get("gpu/0/memory_used_bytes", {}).get("max", 0.0)
    process_memory = during.get("gpu/0/process_memory_bytes", {}).get("max", 0.0)
    warnings = []
    if not process_memory:
        warnings.append(
            "per-process GPU memory of this process stayed at zero or absent "
            "(NVML may not list processes in this pid namespace)"
        )
    ok = utilisation > 0 and memory > 0
    summary = {
        "ok": ok,
        "gpu": True,
        "gpu_status": status,
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "device_name": torch.cuda.get_device_name(0),
        "matmul": rate,
        "during_loop": during,
        "idle_before_loop": idle,
        "samples_taken": sampler.samples_taken,
        "peak_host_memory_bytes": sampler.peak_memory_bytes,
        "warnings": warnings,
    }
    print(json.dumps(summary, indent=2))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
