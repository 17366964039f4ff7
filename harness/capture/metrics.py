"""Algorithm metrics: three ways in (track, $HARNESS_METRICS, TensorBoard), one table out.

The harness polls a run's output folder while it runs, so that a crash keeps what was logged:

* ``metrics.jsonl`` (written by ``harness.track``) and ``metrics.external.jsonl``
  (``$HARNESS_METRICS``, any language) are read from a byte offset onwards; a last line
  without its newline is left for the next poll. Well-formed chunks are parsed by pyarrow's
  JSON reader; a chunk with a bad or unusual line is parsed line by line, skipping bad lines.
* TensorBoard event files anywhere under the manifest's folder are read by TensorBoard's own
  event-file loader, which keeps its place in each file and retries a truncated record.

All rows go to ``metrics.parquet``: run_id, name, step (int64), value (float64), wall_time.
"""

from __future__ import annotations

import io
import json
import logging
import math
import time
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.json as pa_json

from harness.arrow import constant_string_column, empty_table
from harness.fsutil import write_table_atomic
from harness.layout import EXTERNAL_JSONL as EXTERNAL_FILE
from harness.layout import TRACK_JSONL as TRACK_FILE

logger = logging.getLogger(__name__)


TENSORBOARD_GLOB = "*tfevents*"

ROW_SCHEMA = pa.schema(
    [
        ("name", pa.string()),
        ("step", pa.int64()),
        ("value", pa.float64()),
        ("wall_time", pa.float64()),
    ]
)
METRICS_SCHEMA = pa.schema([("run_id", pa.string()), *ROW_SCHEMA])
_JSON_PARSE = pa_json.ParseOptions(explicit_schema=ROW_SCHEMA, unexpected_field_behavior="ignore")

Row = tuple[str, int, float, float]


class _JsonlTail:
    """Reads the complete lines appended to one JSONL file since the last read."""

    def __init__(self, path: Path):
        self.path = path
        self.offset = 0

    def read_new(self, final: bool = False) -> bytes:
        """The complete lines written since the last call (with ``final``, a last partial one)."""
        try:
            handle = open(self.path, "rb")
        except FileNotFoundError:
            return b""
        with handle:
            handle.seek(0, 2)
            if handle.tell() < self.offset:
                logger.warning("%s shrank; reading it again from the start", self.path)
                self.offset = 0
            handle.seek(self.offset)
            data = handle.read()
        end = len(data) if final else data.rfind(b"\n") + 1
        self.offset += end
        chunk = data[:end]
        return chunk if not chunk or chunk.endswith(b"\n") else chunk + b"\n"


def _parse_fast(chunk: bytes) -> pa.Table | None:
    """The chunk's rows through pyarrow's JSON reader; None if any line needs a closer look."""
    try:
        options = pa_json.ReadOptions(block_size=max(len(chunk), 1 << 16))
        table = pa_json.read_json(
            io.BytesIO(chunk), read_options=options, parse_options=_JSON_PARSE
        )
    except pa.ArrowInvalid:
        return None
    if table.num_rows == 0:
        return table
    names = table.column("name")
    if names.null_count or table.column("value").null_count or table.column("step").null_count:
        return None
    if pc.min(pc.utf8_length(names)).as_py() == 0:
        return None
    wall_time = pc.fill_null(table.column("wall_time"), time.time())
    return table.set_column(3, "wall_time", wall_time)


class _TensorBoardFile:
    """One event file, read incrementally by TensorBoard's maintained loader."""

    def __init__(self, path: Path):
        from tensorboard.backend.event_processing.event_file_loader import EventFileLoader

        self.path = path
        self.loader = EventFileLoader(str(path))
        self.scalar_tags: dict[str, bool] = {}

    def read_rows(self) -> list[Row]:
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
        self._next_step: dict[str, int] = {}  # for lines without a step
        self._chunks: list[pa.Table] = []  # ROW_SCHEMA tables, in the order read
        self._rows = 0
        self.skipped_lines = 0

    def __len__(self) -> int:
        return self._rows

    def poll(self, final: bool = False) -> int:
        """Read what is new since the last poll; the number of new rows.

        ``final=True`` (the run has ended) also takes a last line that has no newline.
        """
        before = self._rows
        for tail in self._jsonl:
            chunk = tail.read_new(final)
            if not chunk:
                continue
            table = _parse_fast(chunk)
            if table is not None:
                self._add_table(table)
            else:
                self._add_rows(
                    [
                        row
                        for line in chunk.splitlines()
                        if (row := self._parse_line(line, tail.path))
                    ]
                )
        if self.tensorboard_dir is not None and self.tensorboard_dir.is_dir():
            for path in sorted(self.tensorboard_dir.rglob(TENSORBOARD_GLOB)):
                if path not in self._event_files and path.is_file():
                    self._event_files[path] = _TensorBoardFile(path)
            for event_file in self._event_files.values():
                self._add_rows(event_file.read_rows())
        return self._rows - before

    def _parse_line(self, line: bytes, path: Path) -> Row | None:
        if not line.strip():
            return None
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
            return None
        step = int(step)
        self._next_step[name] = max(self._next_step.get(name, 0), step + 1)
        return name, step, value, wall_time

    def _add_rows(self, rows: list[Row]) -> None:
        if not rows:
            return
        names, steps, values, wall_times = zip(*rows, strict=True)
        columns = [list(names), list(steps), list(values), list(wall_times)]
        self._add_table(pa.Table.from_arrays(columns, schema=ROW_SCHEMA))

    def _add_table(self, table: pa.Table) -> None:
        if table.num_rows == 0:
            return
        last_steps = table.group_by("name").aggregate([("step", "max")])
        for name, step in zip(
            last_steps.column("name").to_pylist(), last_steps.column("step_max").to_pylist()
        ):
            self._next_step[name] = max(self._next_step.get(name, 0), step + 1)
        self._chunks.append(table)
        self._rows += table.num_rows

    def table(self) -> pa.Table:
        """All rows so far, sorted by name, step and wall time."""
        rows = pa.concat_tables(self._chunks) if self._chunks else empty_table(ROW_SCHEMA)
        rows = rows.add_column(0, "run_id", constant_string_column(self.run_id, rows.num_rows))
        return rows.sort_by(
            [("name", "ascending"), ("step", "ascending"), ("wall_time", "ascending")]
        )

    def write_parquet(self, path: Path) -> None:
        """Write every row so far to ``path`` (tmp + rename: never half a file)."""
        write_table_atomic(self.table(), Path(path))

    def take_new(self) -> list[pa.Table]:
        """Hand over the tables read so far (name, step, value, wall_time) and forget them: for live
        views that follow a run without keeping a second copy of its metrics (``table()`` and
        ``summary()`` then cover only what was read after)."""
        chunks, self._chunks = self._chunks, []
        return chunks

    def summary(self, last_n: int = 10) -> dict[str, dict[str, Any]]:
        """Per metric name: last, max, min, mean_last_n (of the last ``last_n`` by step), count.

        Non-finite values are counted but left out of max, min and the mean (None when no
        finite value is left), so that record.json stays strict JSON.
        """
        table = self.table()
        names = table.column("name").to_pylist()
        values = table.column("value").to_pylist()
        result: dict[str, dict[str, Any]] = {}
        start = 0
        while start < len(names):  # rows are sorted by name, then step: one slice per name
            end = start
            while end < len(names) and names[end] == names[start]:
                end += 1
            series = values[start:end]
            finite = [value for value in series if math.isfinite(value)]
            tail = [value for value in series[-last_n:] if math.isfinite(value)]
            last = series[-1]
            result[names[start]] = {
                "last": last if math.isfinite(last) else None,
                "max": max(finite) if finite else None,
                "min": min(finite) if finite else None,
                "mean_last_n": sum(tail) / len(tail) if tail else None,
                "count": len(series),
            }
            start = end
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
