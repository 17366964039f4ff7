"""Live progress of a run: elapsed time, the last step, the primary metric, and an ETA when the
params say how many steps the run will take.

A terminal gets one status line redrawn in place (the job's own output scrolls above it); a pipe,
a log file or a CI job (``CI`` set) gets one plain line every N seconds, never redrawn, so a log
reads as a history. The progress is read from the run folder's metric files, the same files the
capture reads, so it works for any run, including one another process started
(``harness logs -f``).
"""

from __future__ import annotations

import os
import shutil
import sys
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import IO, Any

from harness.store.layout import RunLayout

# params that say how many steps a run will take, most specific first
TOTAL_STEP_PARAMS = ("total_timesteps", "total_steps", "max_steps", "num_steps", "train_steps", "steps")
DEFAULT_PLAIN_INTERVAL_S = 10.0
INTERVAL_ENV = "HARNESS_PROGRESS_INTERVAL"
CLEAR_LINE = "\r\033[K"


def total_steps(params: dict[str, Any] | None) -> int | None:
    """How many steps the run will take, from the first param that names it (None: unknown)."""
    for name in TOTAL_STEP_PARAMS:
        value = (params or {}).get(name)
        if isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0:
            return int(value)
    return None


def interactive(stream: IO[str]) -> bool:
    """Whether to redraw a status line in place: a terminal, and not a CI job."""
    from harness.util.terminal import ci_environment

    return bool(getattr(stream, "isatty", lambda: False)()) and not ci_environment()


def plain_interval(default: float = DEFAULT_PLAIN_INTERVAL_S) -> float:
    """Seconds between plain progress lines: ``$HARNESS_PROGRESS_INTERVAL`` or ``default``."""
    try:
        value = float(os.environ.get(INTERVAL_ENV, default))
    except ValueError:
        return default
    return value if value > 0 else default


def clock(seconds: float | None) -> str:
    """75 -> '1:15', 3725 -> '1:02:05'."""
    if seconds is None:
        return "-"
    seconds = int(max(seconds, 0))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


@dataclass
class Snapshot:
    """Where a run is now."""

    run_id: str
    elapsed_s: float
    step: int | None
    total: int | None
    primary: str | None
    value: float | None
    eta_s: float | None
    points: int

    def line(self, with_id: bool = True) -> str:
        """``<run>: 1:23 elapsed, step 45,000/100,000 (45%), charts/episodic_return 123.4, ETA 1:41``."""
        parts = [f"{clock(self.elapsed_s)} elapsed", *self.facts()]
        if self.eta_s is not None:
            parts.append(f"ETA {clock(self.eta_s)}")
        return (f"{self.run_id}: " if with_id else "") + ", ".join(parts)

    def facts(self) -> list[str]:
        """The step and the primary metric, as words."""
        parts = []
        if self.step is None:
            parts.append("no metrics yet")
        elif self.total:
            parts.append(f"step {self.step:,}/{self.total:,} ({min(100 * self.step / self.total, 100):.0f}%)")
        else:
            parts.append(f"step {self.step:,}")
        if self.primary and self.value is not None:
            parts.append(f"{self.primary} {self.value:.4g}")
        return parts

    def as_dict(self) -> dict[str, Any]:
        """JSON form (``harness logs --json``)."""
        return {
            "run_id": self.run_id,
            "elapsed_s": round(self.elapsed_s, 1),
            "step": self.step,
            "total_steps": self.total,
            "primary_metric": self.primary,
            "primary_last": self.value,
            "eta_s": None if self.eta_s is None else round(self.eta_s),
            "points": self.points,
        }


class RunProgress:
    """Follows one run folder's metric files and keeps the last step and primary value."""

    def __init__(
        self,
        run_id: str,
        layout: RunLayout,
        primary: str | None,
        tensorboard: str | None,
        total: int | None,
        started: float | None = None,
    ):
        self.run_id = run_id
        self.primary = primary
        self.total = total
        self.started = time.time() if started is None else started
        self._folders = (layout.out, layout.tensorboard(tensorboard))
        self.ingester: Any = None  # made at the first poll: a run loads its table libraries once started
        self.step: int | None = None
        self.value: float | None = None
        self._value_step = -1
        self._first: tuple[float, int] | None = None  # (time, step) of the first point seen

    def poll(self, now: float | None = None) -> Snapshot:
        """Read what the run has written since the last poll; where it is now."""
        now = time.time() if now is None else now
        if self.ingester is None:
            from harness.capture.metrics import MetricsIngester

            self.ingester = MetricsIngester(self.run_id, *self._folders)
        self.ingester.poll()
        for rows in self.ingester.take_new():
            step = rows.max_step()
            if step is not None and (self.step is None or step > self.step):
                self.step = step
            if self._first is None and self.step is not None:
                self._first = (now, self.step)
            if self.primary:
                latest = rows.latest(self.primary)
                if latest is not None and latest[0] >= self._value_step:
                    self._value_step, self.value = latest
        return Snapshot(
            self.run_id,
            now - self.started,
            self.step,
            self.total,
            self.primary,
            self.value,
            self._eta(now),
            len(self.ingester),
        )

    def _eta(self, now: float) -> float | None:
        if not self.total or self.step is None or self._first is None:
            return None
        first_time, first_step = self._first
        done, elapsed = self.step - first_step, now - first_time
        if done <= 0 or elapsed < 1:
            return None
        return max(self.total - self.step, 0) * elapsed / done


def started_at(record: Mapping[str, Any]) -> float:
    """A record's start time (epoch seconds); now when it has none."""
    try:
        return datetime.fromisoformat(str(record.get("started_at"))).timestamp()
    except ValueError:
        return time.time()


def record_progress(layout: RunLayout, record: Mapping[str, Any]) -> RunProgress:
    """A follower of a run another process started, from its record and its folder's manifest."""
    from harness.errors import HarnessError
    from harness.manifest import parse_manifest

    tensorboard = None
    try:
        tensorboard = parse_manifest(layout.manifest).metrics.tensorboard
    except HarnessError:
        pass  # a run without a readable manifest still has its JSON lines
    return RunProgress(
        record["run_id"],
        layout,
        record.get("primary_metric"),
        tensorboard,
        total_steps(record.get("params")),
        started=started_at(record),
    )


def eta_from_start(snapshot: Snapshot) -> float | None:
    """Seconds left at the run's average pace since it started: for one look at a running run
    (``harness status``), where no earlier poll gives a recent pace."""
    if snapshot.eta_s is not None:
        return snapshot.eta_s
    if not snapshot.total or not snapshot.step or snapshot.elapsed_s < 1:
        return None
    return max(snapshot.total - snapshot.step, 0) * snapshot.elapsed_s / snapshot.step


class ProgressReporter:
    """Prints a run's progress while it goes: redrawn in place on a terminal, plain lines otherwise.

    Route the job's output through :meth:`echo` so that the status line stays below it.
    """

    def __init__(
        self,
        progress: RunProgress,
        stream: IO[str] | None = None,
        live: bool | None = None,
        interval: float | None = None,
    ):
        self.progress = progress
        self.stream = stream or sys.stdout
        self.live = interactive(self.stream) if live is None else live
        self.interval = 1.0 if self.live else (interval or plain_interval())
        self._lock = threading.Lock()
        self._status = ""
        self._ended: float | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="harness-progress", daemon=True)

    def start(self) -> ProgressReporter:
        self._thread.start()
        return self

    def _width(self) -> int:
        return max(shutil.get_terminal_size((100, 20)).columns - 1, 20)

    def _write(self, text: str) -> None:
        try:
            self.stream.write(text)
            self.stream.flush()
        except (OSError, ValueError):
            pass  # a closed pipe must not end the run

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            if self._ended is not None:
                continue
            try:
                snapshot = self.progress.poll()
            except Exception:  # noqa: BLE001 — a progress line is a courtesy; the capture owns the data
                continue
            with self._lock:
                if self.live:
                    # the run id is on the line above: the status line keeps its width for the numbers
                    self._status = snapshot.line(with_id=False)[: self._width()]
                    self._write(CLEAR_LINE + self._status)
                else:
                    self._write(f"[progress] {snapshot.line()}\n")

    def job_ended(self) -> None:
        """The job has exited: stop the clock (what follows is the harness writing the record)."""
        if self._ended is not None:
            return
        self._ended = time.time()
        try:
            snapshot = self.progress.poll(now=self._ended)
        except Exception:  # noqa: BLE001 — a snapshot at the end is a courtesy too
            return
        with self._lock:
            if self.live:
                snapshot.eta_s = None  # no estimate left to give: the job is done
                self._status = (snapshot.line(with_id=False) + ", job ended; writing the record")[: self._width()]
                self._write(CLEAR_LINE + self._status)

    def echo(self, line: str) -> None:
        """Print one line of the job's output above the status line."""
        with self._lock:
            if self.live and self._status:
                self._write(f"{CLEAR_LINE}{line}\n{self._status}")
            else:
                self._write(f"{line}\n")

    def stop(self) -> Snapshot | None:
        """Stop refreshing and clear the status line; the last snapshot (None if it cannot be read)."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5)
        with self._lock:
            if self.live and self._status:
                self._write(CLEAR_LINE)
            self._status = ""
        try:
            return self.progress.poll()
        except Exception:  # noqa: BLE001 — a snapshot at the end is a courtesy too
            return None


class LiveRun:
    """Progress for a run that ``harness.run.runner.execute`` is about to start: pass :meth:`on_start`
    and :meth:`echo` to it, and call :meth:`stop` when it returns."""

    def __init__(
        self,
        spec: Any,
        store: Any,
        stream: IO[str] | None,
        interval: float | None = None,
        prefix: str = "  | ",
        announce: Any = None,
        err: bool = False,
    ):
        self.spec = spec
        self.err = err
        self.store = store
        self.stream = stream
        self.interval = interval
        self.prefix = prefix
        self.announce = announce
        self.reporter: ProgressReporter | None = None

    def on_start(self, record: dict[str, Any], job: Any = None) -> None:
        """The record exists: say so, and start reporting."""
        if self.announce is not None:
            self.announce(record)
        # looked up now, not when made: a rich status shown until the announcement replaces sys.stdout
        stream = self.stream or (sys.stderr if self.err else sys.stdout)
        metrics = self.spec.loaded.view.metrics
        progress = RunProgress(
            record["run_id"],
            self.store.layout(record["run_id"]),
            metrics.primary,
            metrics.tensorboard,
            total_steps(self.spec.params),
        )
        reporter = self.reporter = ProgressReporter(progress, stream, interval=self.interval).start()
        wait = job.wait if job is not None else None
        if wait is not None:

            def wait_then_stop_the_clock() -> Any:  # the runner calls job.wait() once the job has started
                try:
                    return wait()
                finally:
                    reporter.job_ended()

            job.wait = wait_then_stop_the_clock

    def echo(self, line: str) -> None:
        """One line of the job's output."""
        if self.reporter is not None:
            self.reporter.echo(self.prefix + line)
        else:
            print(self.prefix + line, file=self.stream or (sys.stderr if self.err else sys.stdout), flush=True)

    def stop(self) -> None:
        """Stop reporting (idempotent)."""
        if self.reporter is not None:
            self.reporter.stop()
            self.reporter = None
