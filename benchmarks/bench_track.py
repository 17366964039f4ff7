"""Cost of one ``harness.track.log`` call against TensorBoard's ``SummaryWriter.add_scalar``.

Both are timed in this process, one after the other, writing to a temporary folder. The track
figure includes the background flush thread and the final flush (everything needed to get the
points on disk), not only the call itself; the call alone is printed too. Aim: ratio <= 0.05.
Also how long a point logged without ``flush`` takes to reach the file (the flush thread's
cadence; a run killed with -9 keeps what is on disk). Aim: <= 1.1 s on a quiet machine (the tests
check only that it arrives).

    python benchmarks/bench_track.py [--calls 200000] [--tensorboard-calls 20000] [--repeats 3] [--points 5]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path


def time_tensorboard(folder: Path, calls: int) -> float:
    """Seconds per add_scalar call, including the writer's flush and close."""
    from torch.utils.tensorboard import SummaryWriter

    writer = SummaryWriter(str(folder))
    start = time.perf_counter()
    for step in range(calls):
        writer.add_scalar("charts/episodic_return", step * 0.5, step)
    writer.close()
    return (time.perf_counter() - start) / calls


def time_track(calls: int) -> tuple[float, float]:
    """Seconds per track.log call: (call and flush to disk, the call alone)."""
    from harness import track

    track.log({"warmup": 0.0}, step=0)
    track.flush()
    start = time.perf_counter()
    for step in range(calls):
        track.log({"charts/episodic_return": step * 0.5}, step=step)
    called = time.perf_counter()
    track.flush()
    end = time.perf_counter()
    return (end - start) / calls, (called - start) / calls


def time_to_disk(path: Path, points: int) -> list[float]:
    """Seconds from a track.log call (no flush) until its line is in ``path``, for each of ``points`` points."""
    from harness import track

    delays = []
    for step in range(points):
        size = path.stat().st_size
        start = time.perf_counter()
        track.log({"latency": 0.0}, step=step)
        while path.stat().st_size == size:
            time.sleep(0.001)
        delays.append(time.perf_counter() - start)
    return delays


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=200_000, help="track.log calls per repeat")
    parser.add_argument("--tensorboard-calls", type=int, default=20_000, help="add_scalar calls per repeat")
    parser.add_argument("--repeats", type=int, default=3, help="best of this many repeats")
    parser.add_argument("--points", type=int, default=5, help="points timed from log call to disk")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        os.environ["HARNESS_OUT"] = tmp  # read by track at its first call
        tensorboard = min(
            time_tensorboard(Path(tmp) / f"tb{index}", args.tensorboard_calls) for index in range(args.repeats)
        )
        track_runs = [time_track(args.calls) for _ in range(args.repeats)]
        track_total = min(total for total, _ in track_runs)
        track_call = min(call for _, call in track_runs)
        to_disk = time_to_disk(Path(tmp) / "metrics.jsonl", args.points)
        lines = sum(1 for _ in open(Path(tmp) / "metrics.jsonl"))
    expected = args.repeats * (args.calls + 1) + args.points  # each repeat logs one warm-up point
    assert lines == expected, f"track wrote {lines} lines, expected {expected}"

    print(f"SummaryWriter.add_scalar   {tensorboard * 1e6:8.2f} us/call ({1 / tensorboard:,.0f}/s)")
    print(f"track.log (call + flush)   {track_total * 1e6:8.2f} us/call ({1 / track_total:,.0f}/s)")
    print(f"track.log (call only)      {track_call * 1e6:8.2f} us/call")
    print(
        f"ratio track/tensorboard    {track_total / tensorboard:8.3f}  (aim <= 0.05; call only: "
        f"{track_call / tensorboard:.3f})"
    )
    print(
        f"log call to disk, no flush {max(to_disk):8.3f} s at most over {len(to_disk)} points  (aim <= 1.1 s: the thread writes once a second)"
    )


if __name__ == "__main__":
    main()
