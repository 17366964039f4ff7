"""Algorithm metrics: three ways in (track, $HARNESS_METRICS, TensorBoard), one table out.

The harness polls a run's output folder while it runs, so that a crash keeps what was logged:

* ``metrics.jsonl`` (written by ``harness.track``) and ``metrics.external.jsonl``
  (``$HARNESS_METRICS``, any language) are read from a byte offset onwards; a last line
  without its newline is left for the next poll.
* TensorBoard event files anywhere under the manifest's folder are read by TensorBoard's own
  event-file loader, which keeps its place in each file and retries a truncated record.

All rows go to ``metrics.parquet``: run_id, name, step (int64), value (float64), wall_time.
"""

from __future__ import annotations

import json
import logging
import math
import time
from pathlib import Path
from typing import Any

import pyarrow as pa

from harness.capture.system import write_table_atomic

logger = logging.getLogger(__name__)

TRACK_FILE = "metrics.jsonl"
EXTERNAL_FILE = "metrics.external.jsonl"
TENSORBOARD_GLOB = "*tfevents*"

METRICS_SCHEMA = pa.schema(
    [
        ("run_id", pa.string()),
        ("name", pa.string()),
        ("step", pa.int64()),
        ("value", pa.float64()),
        ("wall_time", pa.float64()),
    ]
)


class _JsonlTail:
    """Reads the complete lines appended to one JSONL file since the last read."""

    def __init__(self, path: Path):
        self.path = path
        self.offset = 0

    def read_lines(self, final: bool = False) -> list[bytes]:
        try:
            handle = open(self.path, "rb")
        except FileNotFoundError:
            return []
        with handle:
            handle.seek(0, 2)
            if handle.tell() < self.offset:
                logger.warning("%s shrank; reading it again from the start", self.path)
                self.offset = 0
            handle.seek(self.offset)
            data = handle.read()
        end = data.rfind(b"\n") + 1
        if final and end < len(data):
            end = len(data)  # the writer is gone: its last line will not grow any more
        self.offset += end
        return data[:end].splitlines()


class _TensorBoardFile:
    """One event file, read incrementally by TensorBoard's maintained loader."""

    def __init__(self, path: Path):
        from tensorboard.backend.event_processing.event_file_loader import EventFileLoader

        self.path = path
        self.loader = EventFileLoader(str(path))
        self.scalar_tags: dict[str, bool] = {}

    def read_rows(self) -> list[tuple[str, int, float, float]]:
        from tensorboard.compat.proto import summary_pb2
        from tensorboard.util import tensor_util

        rows = []
        for event in self.loader.Load():
            if not event.HasField("summary"):
                continue
            for value in event.summary.value:
                if value.HasField("metadata"):  # only the first event of a tag must carry it
                    metadata = value.metadata
                    self.scalar_tags[value.tag] = (
                        metadata.data_class == summary_pb2.DATA_CLASS_SCALAR
                        or metadata.plugin_data.plugin_name == "scalars"
                    )
                kind = value.WhichOneof("value")
                if kind == "simple_value":
                    number = float(value.simple_value)
                elif kind == "tensor" and self.scalar_tags.get(value.tag):
                    number = float(tensor_util.make_ndarray(value.tensor).item())
                else:
                    continue
                rows.append((value.tag, int(event.step), number, float(event.wall_time)))
        return rows


class MetricsIngester:
    """Collects one run's algorithm metrics from its output folder, poll after poll."""

    def __init__(self, run_id: str, out_dir: Path, tensorboard_dir: Path | None):
        """Read ``out_dir``'s metric files and TensorBoard files under ``tensorboard_dir``."""
        self.run_id = run_id
        self.out_dir = Path(out_dir)
        self.tensorboard_dir = Path(tensorboard_dir) if tensorboard_dir is not None else None
        self._jsonl = [
            _JsonlTail(self.out_dir / TRACK_FILE),
            _JsonlTail(self.out_dir / EXTERNAL_FILE),
        ]
        self._event_files: dict[Path, _TensorBoardFile] = {}
        self._next_step: dict[str, int] = {}
        self.names: list[str] = []
        self.steps: list[int] = []
        self.values: list[float] = []
        self.wall_times: list[float] = []
        self.skipped_lines = 0

    def __len__(self) -> int:
        return len(self.names)

    def poll(self, final: bool = False) -> int:
        """Read what is new since the last poll; the number of new rows.

        ``final=True`` (the run has ended) also takes a last line that has no newline.
        """
        before = len(self.names)
        for tail in self._jsonl:
            for line in tail.read_lines(final):
                self._add_jsonl_line(line, tail.path)
        if self.tensorboard_dir is not None and self.tensorboard_dir.is_dir():
            for path in sorted(self.tensorboard_dir.rglob(TENSORBOARD_GLOB)):
                if path not in self._event_files and path.is_file():
                    self._event_files[path] = _TensorBoardFile(path)
            for event_file in self._event_files.values():
                for row in event_file.read_rows():
                    self._append(*row)
        return len(self.names) - before

    def _add_jsonl_line(self, line: bytes, path: Path) -> None:
        if not line.strip():
            return
        try:
            row = json.loads(line)
            name = row["name"]
            if not isinstance(name, str) or not name:
                raise ValueError("name must be a non-empty string")
            value = float(row["value"])
            step = row.get("step")
            if step is None:
                step = self._next_step.get(name, 0)
            elif isinstance(step, bool) or not float(step).is_integer():
                raise ValueError("step must be an integer")
            wall_time = row.get("wall_time")
            wall_time = time.time() if wall_time is None else float(wall_time)
        except (ValueError, TypeError, KeyError, AttributeError) as exc:
            self.skipped_lines += 1
            if self.skipped_lines <= 3:
                logger.warning("%s: skipped a metric line (%s): %.200r", path.name, exc, line)
            return
        self._append(name, int(step), value, wall_time)

    def _append(self, name: str, step: int, value: float, wall_time: float) -> None:
        self._next_step[name] = max(self._next_step.get(name, 0), step + 1)
        self.names.append(name)
        self.steps.append(step)
        self.values.append(value)
        self.wall_times.append(wall_time)

    def table(self) -> pa.Table:
        """All rows so far, sorted by name, step and wall time."""
        table = pa.table(
            {
                "run_id": [self.run_id] * len(self.names),
                "name": self.names,
                "step": self.steps,
                "value": self.values,
                "wall_time": self.wall_times,
            },
            schema=METRICS_SCHEMA,
        )
        return table.sort_by(
            [("name", "ascending"), ("step", "ascending"), ("wall_time", "ascending")]
        )

    def write_parquet(self, path: Path) -> None:
        """Write every row so far to ``path`` (tmp + rename: never half a file)."""
        write_table_atomic(self.table(), Path(path))

    def summary(self, last_n: int = 10) -> dict[str, dict[str, Any]]:
        """Per metric name: last, max, min, mean_last_n (of the last ``last_n`` by step), count.

        Non-finite values are counted but left out of max, min and the mean (None when no
        finite value is left), so that record.json stays strict JSON.
        """
        series: dict[str, list[tuple[int, float, float]]] = {}
        for name, step, value, wall_time in zip(  # noqa: B905 - equal by construction
            self.names, self.steps, self.values, self.wall_times
        ):
            series.setdefault(name, []).append((step, wall_time, value))
        result: dict[str, dict[str, Any]] = {}
        for name in sorted(series):
            points = sorted(series[name])
            finite = [value for _, _, value in points if math.isfinite(value)]
            tail = [value for _, _, value in points[-last_n:] if math.isfinite(value)]
            last = points[-1][2]
            result[name] = {
                "last": last if math.isfinite(last) else None,
                "max": max(finite) if finite else None,
                "min": min(finite) if finite else None,
                "mean_last_n": sum(tail) / len(tail) if tail else None,
                "count": len(points),
            }
        return result


def ingest_run_folder(
    run_id: str, run_dir: Path, tensorboard_subdir: str | None
) -> MetricsIngester:
    """Read a finished (or crashed) run's ``out/`` folder fully, e.g. when recovering it."""
    out_dir = Path(run_dir) / "out"
    tensorboard_dir = out_dir / tensorboard_subdir if tensorboard_subdir else None
    ingester = MetricsIngester(run_id, out_dir, tensorboard_dir)
    ingester.poll(final=True)
    return ingester
