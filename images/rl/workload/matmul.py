"""A CUDA matmul loop for checking the GPU paths (device requests, NVML sampling).

Logs achieved TFLOP/s through ``harness.track``; falls back to the CPU (small sizes) when CUDA is
absent so the same manifest runs anywhere, and says so in the metric ``device/cuda``.
"""

import argparse
import time

import torch

from harness import track


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=20)
    parser.add_argument("--size", type=int, default=8192)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.manual_seed(args.seed)
    cuda = torch.cuda.is_available()
    device = "cuda" if cuda else "cpu"
    size = args.size if cuda else min(args.size, 512)
    a = torch.randn(size, size, device=device)
    b = torch.randn(size, size, device=device)
    track.log({"device/cuda": float(cuda)}, step=0)
    start, step = time.monotonic(), 0
    while time.monotonic() - start < args.seconds:
        tick = time.monotonic()
        for _ in range(10):
            c = a @ b
        if cuda:
            torch.cuda.synchronize()
        elapsed = time.monotonic() - tick
        step += 1
        track.log({"perf/tflops": 2 * size**3 * 10 / elapsed / 1e12, "perf/checksum": float(c[0, 0])}, step=step)
    if cuda:
        track.log({"memory/max_allocated_bytes": torch.cuda.max_memory_allocated()}, step=step)
    track.flush()


if __name__ == "__main__":
    main()
