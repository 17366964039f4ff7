"""Soak: one long run with quiet stretches, 16 concurrent short runs into the same store, and an
``ls --json`` every few seconds, then a check that nothing was lost (issue 19's soak figure).

The long run uses the noop image with a small Python loop as its command: bursts of numbered
lines (each also logged as a metric) separated by quiet stretches of several minutes, longer than
any call deadline of the engine client. While it is quiet, 16 short ``harness run``s of the noop
manifest (different seeds) start at once. The harness processes' RSS (each ``harness run`` and
any harness child of it; not the container, which the engine runs) is sampled throughout.

At the end: every record final and verified, every ``ls --json`` parsed, every numbered line of
the long run in its ``logs/output.log`` and every step in its ``metrics.parquet``.

    export PYTHONPATH=$PWD
    python benchmarks/soak.py [--minutes 30] [--quiet 240] [--burst 60] [--short-runs 16]

Needs the Docker engine and the base image (``harness image bootstrap``). Exits 1 if anything
was lost or a record does not verify.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import psutil
import pyarrow.parquet as pq

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from harness.store.local import LocalStore  # noqa: E402

# No braces in this code: the manifest treats {name} as a param placeholder.
WORKLOAD = """
import sys, time
from harness import track
total, quiet, burst = float(sys.argv[1]), float(sys.argv[2]), float(sys.argv[3])
deadline = time.time() + total
line = 0
stretches = 0
while True:
    last = deadline - time.time() < burst + quiet + burst
    until = deadline if last else time.time() + burst
    while time.time() < until:
        print("soak line %d" % line, flush=True)
        track.log(dict([("soak/line", float(line))]), step=line)
        line += 1
        time.sleep(0.1)
    if last:
        break
    track.flush()
    print("soak quiet %d for %d s" % (stretches, quiet), flush=True)
    time.sleep(quiet)
    stretches += 1
track.flush()
print("soak total %d lines %d quiet stretches" % (line, stretches), flush=True)
"""
TOTAL_LINE = re.compile(r"^soak total (\d+) lines (\d+) quiet stretches$", re.MULTILINE)


@dataclass
class Watched:
    """A ``harness`` process whose RSS (with its harness children) is sampled until it exits."""

    name: str
    process: subprocess.Popen[str]
    peak_rss: int = 0
    peak_hwm: int = 0
    out: str = ""
    err: str = ""
    started: float = field(default_factory=time.monotonic)
    ended: float = 0.0


def harness_rss(pid: int) -> tuple[int, int]:
    """The summed RSS of ``pid`` and its descendants that run the harness, and the largest
    high-water mark (VmHWM) among them, in bytes."""
    try:
        root = psutil.Process(pid)
        family = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return 0, 0
    rss = hwm = 0
    for process in family:
        try:
            if process is not root and "harness" not in " ".join(process.cmdline()):
                continue
            rss += process.memory_info().rss
            status = Path(f"/proc/{process.pid}/status").read_text()
            found = re.search(r"^VmHWM:\s+(\d+) kB", status, re.MULTILINE)
            hwm = max(hwm, int(found.group(1)) * 1024 if found else 0)
        except (psutil.NoSuchProcess, psutil.AccessDenied, FileNotFoundError, ProcessLookupError):
            continue
    return rss, hwm


def sampler(watched: list[Watched], stop: threading.Event, every: float = 0.25) -> None:
    """Keep each watched process's peak RSS until ``stop`` is set."""
    while not stop.is_set():
        for item in list(watched):
            if item.process.poll() is None:
                rss, hwm = harness_rss(item.process.pid)
                item.peak_rss = max(item.peak_rss, rss)
                item.peak_hwm = max(item.peak_hwm, hwm)
            elif not item.ended:
                item.ended = time.monotonic()
        stop.wait(every)


def start(name: str, home: Path, *args: str) -> Watched:
    """Start ``harness run ARGS`` into the store at ``home``."""
    process = subprocess.Popen(
        [sys.executable, "-m", "harness", "run", *args, "--quiet"],
        cwd=REPO,
        env={**os.environ, "HARNESS_HOME": str(home)},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    return Watched(name, process)


def finish(item: Watched, timeout: float) -> None:
    """Wait for ``item`` to exit and keep what it printed."""
    item.out, item.err = item.process.communicate(timeout=timeout)
    item.ended = item.ended or time.monotonic()


def long_manifest(project: Path, minutes: float) -> Path:
    """A copy of the noop project whose manifest runs WORKLOAD, with a timeout past ``minutes``."""
    for part in ("images/noop", "lockfiles/noop.txt"):
        source, target = REPO / part, project / part
        target.parent.mkdir(parents=True, exist_ok=True)
        if source.is_dir():
            shutil.copytree(source, target, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy(source, target)
    (project / "manifests").mkdir()
    text = (REPO / "manifests" / "noop.yaml").read_text()
    command = next(line for line in text.splitlines() if line.startswith("command:"))
    workload = ["python", "-c", WORKLOAD, "{seconds}", "{quiet}", "{burst}"]
    text = text.replace(command, "command: " + json.dumps(workload))
    text = text.replace("params: {mode: ok, seconds: 5, megabytes: 64}", "params: {seconds: 5, quiet: 1, burst: 1}")
    text = text.replace("timeout: 5m", f"timeout: {int(minutes) + 15}m")
    manifest = project / "manifests" / "soak.yaml"
    manifest.write_text(text.replace("name: noop", "name: soak"))
    return manifest


def wait_for(condition: Callable[[], bool], bound: float, what: str) -> None:
    """Wait until ``condition()`` is true, at most ``bound`` seconds."""
    deadline = time.monotonic() + bound
    while not condition():
        if time.monotonic() > deadline:
            raise SystemExit(f"soak: timed out waiting for {what}")
        time.sleep(0.5)


def long_log(home: Path) -> Path | None:
    """The long run's output log (the only run folder until the short runs start)."""
    found = sorted(home.glob("runs/*/logs/output.log"))
    return found[0] if found else None


def mib(size: int) -> str:
    return f"{size / 2**20:.0f} MiB"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=30, help="length of the long run")
    parser.add_argument("--quiet", type=float, default=240, help="seconds of each quiet stretch")
    parser.add_argument("--burst", type=float, default=60, help="seconds of output between quiet stretches")
    parser.add_argument("--short-runs", type=int, default=16, help="concurrent short runs")
    parser.add_argument("--ls-every", type=float, default=5, help="seconds between `ls --json` calls")
    args = parser.parse_args()

    failures: list[str] = []
    with tempfile.TemporaryDirectory(prefix="harness-soak-") as scratch:
        home = Path(scratch) / "store"
        manifest = long_manifest(Path(scratch) / "project", args.minutes)
        watched: list[Watched] = []
        stop = threading.Event()
        thread = threading.Thread(target=sampler, args=(watched, stop), daemon=True)
        thread.start()
        began = time.monotonic()
        params = [f"seconds={args.minutes * 60:g}", f"quiet={args.quiet:g}", f"burst={args.burst:g}"]
        long = start("long", home, str(manifest), *[x for p in params for x in ("--param", p)])
        watched.append(long)

        # the short runs start together at the beginning of the first quiet stretch
        def quiet_started() -> bool:
            log = long_log(home)
            if long.process.poll() is not None:
                return True
            return log is not None and "soak quiet 0" in log.read_text(errors="replace")

        wait_for(quiet_started, 600 + args.burst * 2, "the long run's first quiet stretch")
        log = long_log(home)
        long_id = log.parent.parent.name if log else ""
        shorts = [
            start(f"short-{seed}", home, str(REPO / "manifests" / "noop.yaml"), "--seed", str(seed))
            for seed in range(args.short_runs)
        ]
        watched.extend(shorts)
        listings = bad_listings = 0
        while long.process.poll() is None or any(s.process.poll() is None for s in shorts):
            listed = subprocess.run(
                [sys.executable, "-m", "harness", "ls", "--json"],
                cwd=REPO,
                env={**os.environ, "HARNESS_HOME": str(home)},
                capture_output=True,
                text=True,
            )
            listings += 1
            try:
                json.loads(listed.stdout)
                if listed.returncode != 0:
                    raise ValueError(listed.stderr)
            except ValueError as exc:
                bad_listings += 1
                failures.append(f"ls --json #{listings}: {str(exc)[:200]}")
            time.sleep(args.ls_every)
        for item in watched:
            finish(item, 60)
        stop.set()
        thread.join()
        elapsed = time.monotonic() - began

        for item in watched:
            if item.process.returncode != 0 or "Traceback" in item.err:
                failures.append(f"{item.name}: exit {item.process.returncode}: {item.err.strip()[-300:]}")
        store = LocalStore(home)
        records = list(store.records())
        verified = 0
        for record in records:
            problems = store.verify(record["run_id"])
            if record["status"] != "completed":
                failures.append(f"{record['run_id']}: status {record['status']}")
            if problems:
                failures.append(f"{record['run_id']}: verify {problems}")
            else:
                verified += 1
        if len(records) != args.short_runs + 1:
            failures.append(f"{len(records)} records, expected {args.short_runs + 1}")

        text = (home / "runs" / long_id / "logs" / "output.log").read_text(errors="replace") if long_id else ""
        total = TOTAL_LINE.search(text)
        lines = int(total.group(1)) if total else 0
        stretches = int(total.group(2)) if total else 0
        if not total:
            failures.append("the long run's log has no closing total line")
        seen = {int(n) for n in re.findall(r"^soak line (\d+)$", text, re.MULTILINE)}
        lost_lines = len(set(range(lines)) - seen)
        metrics = home / "runs" / long_id / "metrics.parquet"
        steps: set[int] = set()
        if metrics.is_file():
            table = pq.read_table(metrics).to_pylist()
            steps = {int(row["step"]) for row in table if row["name"] == "soak/line"}
        lost_metrics = len(set(range(lines)) - steps)
        if lost_lines or lost_metrics:
            failures.append(f"lost {lost_lines} lines and {lost_metrics} metric rows of {lines}")

    short_peaks = [s.peak_rss for s in shorts]
    short_walls = [s.ended - s.started for s in shorts]
    rows = [
        ("long run", f"{(long.ended - long.started) / 60:.1f} min", f"{stretches} x {args.quiet:g} s"),
        ("long run peak RSS (sampled / VmHWM)", mib(long.peak_rss), mib(long.peak_hwm)),
        ("short runs", f"{len(shorts)} concurrent", f"wall {min(short_walls):.0f}-{max(short_walls):.0f} s"),
        ("short run peak RSS (max / median)", mib(max(short_peaks)), mib(sorted(short_peaks)[len(shorts) // 2])),
        ("short run VmHWM (max)", mib(max(s.peak_hwm for s in shorts)), ""),
        ("all harness runs at once (RSS sum)", mib(long.peak_rss + sum(short_peaks)), "upper bound"),
        ("long run lines / metric rows", f"{len(seen)} / {len(steps)}", f"of {lines}"),
        ("lost lines / lost metric rows", str(lost_lines), str(lost_metrics)),
        ("records final and verified", f"{verified} / {len(records)}", ""),
        ("ls --json parsed", f"{listings - bad_listings} / {listings}", ""),
        ("soak wall time", f"{elapsed / 60:.1f} min", ""),
    ]
    width = max(len(row[0]) for row in rows)
    for name, first, second in rows:
        print(f"{name:<{width}}  {first:>16}  {second}")
    for failure in failures:
        print(f"FAIL {failure}")
    print("soak: nothing lost" if not failures else f"soak: {len(failures)} failures")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
