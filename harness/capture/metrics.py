"""Algorithm metrics: three ways in (track, $HARNESS_METRICS, TensorBoard), one table out.

The harness polls a run's output folder while it runs, so that a crash keeps what was logged.
Everything there was written by the workload and is read as hostile input (``harness.util.safefs``):
no symlink is followed, only regular files are read, reads are bounded, and memory stays bounded
whatever the workload writes.

* ``metrics.jsonl`` (written by ``harness.track``) and ``metrics.external.jsonl``
  (``$HARNESS_METRICS``, any language) are read from a byte offset onwards in bounded blocks; a
  last line without its newline waits for the next poll. Blocks of plain lines go through
  pyarrow's JSON reader; anything unusual is parsed line by line. Each bad line (too long, not
  JSON, nested too deep, a bad name, value or step) is skipped and counted by reason.
* TensorBoard event files under the manifest's folder, or anywhere in the output folder when it
  names none (at most ``MAX_TB_DEPTH`` levels, regular
  files only) are read record by record with a length cap; scalars are taken from
  ``simple_value`` or a one-element scalar tensor.

Rows are kept in memory only up to ``FLUSH_ROWS``; then they are sorted and spilled to a spool
of parquet files. ``write_parquet`` writes ``metrics.parquet`` (run_id, name, step (int64),
value (float64), wall_time) sorted by name, step and wall time, merging the spool in a stream.

A run of at most ``SMALL_TABLE_ROWS`` rows (most smoke tests, short runs, every no-op) never
loads pyarrow: its rows stay Python lists, parsed line by line, and its table is written by
``harness.util.small_parquet``. pyarrow's import alone (libarrow and numpy) costs about 0.16 s of
wall time and 0.2 s of CPU, as much as the no-op container itself on a 2-core host.
"""

from __future__ import annotations

import heapq
import io
import json
import logging
import math
import os
import shutil
import struct
import tempfile
import time
import weakref
from collections.abc import Iterator
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from harness.store.layout import EXTERNAL_JSONL as EXTERNAL_FILE
from harness.store.layout import TRACK_JSONL as TRACK_FILE
from harness.util.safefs import READ_BLOCK, Skipped, UnsafeFile, open_beneath, walk
from harness.util.small_parquet import SMALL_TABLE_ROWS, Column, encode_table

if TYPE_CHECKING:
    import pyarrow as pa

logger = logging.getLogger(__name__)

TENSORBOARD_MARK = "tfevents"

MAX_LINE_BYTES = 64 << 10  # a longer JSON line is skipped (reason line_too_long)
MAX_NAME_CHARS = 256
MAX_METRIC_NAMES = 10_000  # distinct names per run; rows of further names are rejected
MAX_JSON_DEPTH = 32
MAX_JSONL_BYTES = 16 << 30  # what is read of one metrics file in all
MAX_EVENT_FILE_BYTES = 16 << 30
MAX_EVENT_RECORD_BYTES = 16 << 20  # a larger TensorBoard record is skipped unread
MAX_TB_DEPTH = 16
MAX_TB_FILES = 1_000
MAX_TB_ENTRIES = 20_000
FLUSH_ROWS = 1 << 16  # rows held in memory before they are spilled, sorted, to the spool
SPOOL_GROUP_ROWS = 4096
MERGE_BATCH_ROWS = 16384  # rows of the merged output built as Python objects at a time
SORT_IN_MEMORY_ROWS = 1 << 20  # up to this many rows the final table is sorted in memory
LIVE_REFRESH_MAX_ROWS = 1 << 20  # above this, metrics.parquet is only written when the run ends
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1

_SORT_KEYS = [("name", "ascending"), ("step", "ascending"), ("wall_time", "ascending")]


@cache
def row_schema() -> pa.Schema:
    """The schema of the rows held and spooled: name, step, value, wall_time."""
    import pyarrow as pa

    return pa.schema(
        [("name", pa.string()), ("step", pa.int64()), ("value", pa.float64()), ("wall_time", pa.float64())]
    )


@cache
def metrics_schema() -> pa.Schema:
    """The schema of ``metrics.parquet``: run_id, then the rows."""
    import pyarrow as pa

    return pa.schema([("run_id", pa.string()), *row_schema()])


def __getattr__(name: str) -> Any:
    """``ROW_SCHEMA`` and ``METRICS_SCHEMA``, made (with pyarrow) on first use."""
    if name == "ROW_SCHEMA":
        return row_schema()
    if name == "METRICS_SCHEMA":
        return metrics_schema()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


Row = tuple[str, int, float, float]


class Rejected(ValueError):
    """A metric line or value that is skipped; ``reason`` is the counter it goes to."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


def check_name(name: Any) -> str:
    """A metric name as stored, or Rejected: a non-empty string of at most ``MAX_NAME_CHARS``,
    valid UTF-8 (no lone surrogates), without control characters."""
    if not isinstance(name, str) or not name:
        raise Rejected("bad_name")
    if len(name) > MAX_NAME_CHARS:
        raise Rejected("name_too_long")
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        raise Rejected("name_not_utf8") from None
    if any(ord(c) < 32 or 127 <= ord(c) < 160 for c in name):
        raise Rejected("bad_name")
    return name


def check_value(value: Any) -> float:
    """A metric value: a finite float or NaN (bools and integers converted), or Rejected."""
    if isinstance(value, bool):
        return float(value)
    if isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            raise Rejected("bad_value") from None
    if not isinstance(value, (int, float)):
        raise Rejected("bad_value")
    try:
        number = float(value)
    except OverflowError:
        raise Rejected("value_out_of_range") from None
    if math.isinf(number):
        raise Rejected("value_not_finite")
    return number


def check_step(step: Any) -> int:
    """An integer step within int64 (an integral float is accepted), or Rejected."""
    if isinstance(step, bool):
        raise Rejected("bad_step")
    if isinstance(step, float):
        if not math.isfinite(step) or not step.is_integer():
            raise Rejected("bad_step")
        step = int(step)
    if not isinstance(step, int):
        raise Rejected("bad_step")
    if not INT64_MIN <= step <= INT64_MAX:
        raise Rejected("step_out_of_range")
    return step


def _json_depth(line: bytes) -> int:
    """The bracket nesting depth of a JSON text (strings skipped); only for lines with many brackets."""
    depth = deepest = 0
    in_string = escaped = False
    for byte in line:
        if in_string:
            if escaped:
                escaped = False
            elif byte == 0x5C:
                escaped = True
            elif byte == 0x22:
                in_string = False
        elif byte == 0x22:
            in_string = True
        elif byte in (0x5B, 0x7B):
            depth += 1
            deepest = max(deepest, depth)
        elif byte in (0x5D, 0x7D):
            depth -= 1
    return deepest


class _JsonlTail:
    """Reads the complete lines appended to one JSONL file of the output folder, in bounded blocks."""

    def __init__(self, out_dir: Path, name: str):
        self.out_dir = out_dir
        self.name = name
        self.offset = 0
        self.pending = b""  # a started line, at most MAX_LINE_BYTES
        self.discarding = False  # inside a line that is already too long
        self.refused: str | None = None

    def chunks(self, final: bool, reject: Any) -> Iterator[bytes]:
        """Blocks of complete lines (each ending in a newline) written since the last call.

        ``reject(reason)`` is told of each line that is dropped here (too long). With ``final``,
        a last line without a newline is taken too."""
        try:
            fd = open_beneath(self.out_dir, self.name)
        except UnsafeFile as exc:
            if exc.reason != "missing":
                self.refused = exc.reason
            return
        self.refused = None
        try:
            size = os.fstat(fd).st_size
            if size < self.offset:
                logger.warning("%s shrank; reading it again from the start", self.name)
                self.offset, self.pending, self.discarding = 0, b"", False
            while self.offset < MAX_JSONL_BYTES:
                block = os.pread(fd, min(READ_BLOCK, MAX_JSONL_BYTES - self.offset), self.offset)
                if not block:
                    break
                self.offset += len(block)
                yield from self._split(block, reject)
            else:
                self.refused = f"larger than {MAX_JSONL_BYTES} bytes; the rest is not read"
        finally:
            os.close(fd)
        if final and self.pending and not self.discarding:
            line, self.pending = self.pending, b""
            yield line + b"\n"
        if final:
            self.pending, self.discarding = b"", False

    def _split(self, block: bytes, reject: Any) -> Iterator[bytes]:
        end = block.rfind(b"\n")
        if end < 0:
            self._extend(block, reject)
            return
        head, complete, rest = self.pending, block[: end + 1], block[end + 1 :]
        first = complete.find(b"\n")
        if self.discarding:
            complete = complete[first + 1 :]
            self.discarding = False
        elif head:
            if len(head) + first > MAX_LINE_BYTES:
                reject("line_too_long")
                complete = complete[first + 1 :]
            else:
                complete = head + complete
        self.pending = b""
        if len(complete) > MAX_LINE_BYTES:
            lines = complete.split(b"\n")
            if max(map(len, lines)) > MAX_LINE_BYTES:
                for _ in range(sum(len(line) > MAX_LINE_BYTES for line in lines)):
                    reject("line_too_long")
                complete = b"".join(line + b"\n" for line in lines[:-1] if len(line) <= MAX_LINE_BYTES)
        if complete:
            yield complete
        self._extend(rest, reject)

    def _extend(self, data: bytes, reject: Any) -> None:
        if self.discarding or not data:
            return
        if len(self.pending) + len(data) > MAX_LINE_BYTES:
            reject("line_too_long")
            self.pending, self.discarding = b"", True
        else:
            self.pending += data


def _masked_crc32c(data: bytes) -> int:
    from tensorboard.compat.tensorflow_stub.pywrap_tensorflow import masked_crc32c

    return int(masked_crc32c(data))


class _EventFile:
    """One TensorBoard event file, read record by record from where the last poll stopped."""

    def __init__(self, out_dir: Path, relative: str):
        self.out_dir = out_dir
        self.relative = relative
        self.offset = 0
        self.scalar_tags: dict[str, bool] = {}
        self.broken: str | None = None

    def records(self, reject: Any) -> Iterator[bytes]:
        """Each complete record written since the last call; a truncated one waits."""
        if self.broken:
            return
        try:
            fd = open_beneath(self.out_dir, self.relative)
        except UnsafeFile as exc:
            if exc.reason != "missing":
                self.broken = exc.reason
            return
        try:
            size = min(os.fstat(fd).st_size, MAX_EVENT_FILE_BYTES)
            while self.offset + 12 <= size:
                header = os.pread(fd, 12, self.offset)
                if len(header) < 12:
                    break
                if _masked_crc32c(header[:8]) != struct.unpack("<I", header[8:])[0]:
                    self.broken = f"not a TensorBoard event file (bad record header at byte {self.offset})"
                    return
                (length,) = struct.unpack("<Q", header[:8])
                end = self.offset + 12 + length + 4
                if end > size:
                    if end > MAX_EVENT_FILE_BYTES:
                        self.broken = f"a record runs past {MAX_EVENT_FILE_BYTES} bytes"
                    break
                if length > MAX_EVENT_RECORD_BYTES:
                    reject("tb_record_too_large")
                    self.offset = end
                    continue
                data = os.pread(fd, length, self.offset + 12)
                if len(data) < length:
                    break
                self.offset = end
                yield data
        finally:
            os.close(fd)

    def rows(self, reject: Any) -> Iterator[tuple[Any, Any, Any, Any]]:
        """Raw (tag, step, value, wall_time) of the scalar summaries in new records."""
        from tensorboard.compat.proto import event_pb2, summary_pb2

        for data in self.records(reject):
            try:
                event = event_pb2.Event.FromString(data)
            except Exception:  # noqa: BLE001 — protobuf raises several types for hostile bytes: each is one rejected record
                reject("tb_bad_record")
                continue
            if not event.HasField("summary"):
                continue
            for value in event.summary.value:
                if value.HasField("metadata"):  # only the first event of a tag must carry it
                    metadata = value.metadata
                    if len(self.scalar_tags) < MAX_METRIC_NAMES or value.tag in self.scalar_tags:
                        self.scalar_tags[value.tag] = (
                            metadata.data_class == summary_pb2.DATA_CLASS_SCALAR
                            or metadata.plugin_data.plugin_name == "scalars"
                        )
                kind = value.WhichOneof("value")
                if kind == "simple_value":
                    number: float | None = float(value.simple_value)
                elif kind == "tensor" and self.scalar_tags.get(value.tag):
                    number = _tensor_scalar(value.tensor)
                    if number is None:
                        reject("tb_bad_tensor")
                        continue
                else:
                    continue
                yield value.tag, event.step, number, event.wall_time


def _tensor_scalar(tensor: Any) -> float | None:
    """The one number of a scalar TensorProto, without materialising whatever shape it claims."""
    import numpy as np
    from tensorboard.compat.proto import types_pb2

    if any(dim.size != 1 for dim in tensor.tensor_shape.dim):
        return None
    dtypes = {
        types_pb2.DT_FLOAT: np.float32,
        types_pb2.DT_DOUBLE: np.float64,
        types_pb2.DT_HALF: np.float16,
        types_pb2.DT_INT32: np.int32,
        types_pb2.DT_INT64: np.int64,
    }
    dtype = dtypes.get(tensor.dtype)
    if dtype is None:
        return None
    if tensor.tensor_content:
        if len(tensor.tensor_content) != np.dtype(dtype).itemsize:
            return None
        return float(np.frombuffer(tensor.tensor_content, dtype=dtype)[0])
    if tensor.dtype == types_pb2.DT_HALF and tensor.half_val:
        return float(np.array([tensor.half_val[0]], dtype=np.uint16).view(np.float16)[0])
    for values in (tensor.float_val, tensor.double_val, tensor.int_val, tensor.int64_val):
        if len(values):
            return float(values[0])
    return None


class MetricsIngester:
    """Collects one run's algorithm metrics from its output folder, poll after poll.

    ``rejected`` counts skipped lines and values by reason; ``skipped`` lists metric files that
    were not read (a symlink, a FIFO, a folder too deep...) with the reason."""

    def __init__(self, run_id: str, out_dir: Path, tensorboard_dir: Path | None, spool_dir: Path | None = None):
        """Read ``out_dir``'s metric files and TensorBoard files under ``tensorboard_dir`` (a folder
        inside ``out_dir``); rows past ``FLUSH_ROWS`` are spilled to ``spool_dir`` (default: a
        temporary folder, removed with the ingester)."""
        self.run_id = run_id
        self.out_dir = Path(out_dir)
        self.tensorboard_dir = Path(tensorboard_dir) if tensorboard_dir is not None else None
        self._jsonl = [_JsonlTail(self.out_dir, TRACK_FILE), _JsonlTail(self.out_dir, EXTERNAL_FILE)]
        self._event_files: dict[str, _EventFile] = {}
        self._tb_skipped: list[Skipped] = []
        self._next_step: dict[str, int] = {}  # every accepted name; for lines without a step
        self._buffer: list[pa.Table] = []  # ROW_SCHEMA tables not yet spilled
        self._pending: tuple[list[str], list[int], list[float], list[float]] = ([], [], [], [])
        self._buffered = 0
        self._rows = 0  # every row accepted so far (some perhaps handed over by take_new)
        # while small, every row is in _pending (no pyarrow loaded); past SMALL_TABLE_ROWS rows
        # the ingester turns to pyarrow tables and the spool for good
        self._small = True
        self._spool_files: list[Path] = []
        self._spool_dir = Path(spool_dir) if spool_dir is not None else None
        self._own_spool = spool_dir is None
        self._finalizer: Any = None
        self.rejected: dict[str, int] = {}
        self._summary_cache: tuple[int, int, dict[str, dict[str, Any]]] | None = None
        # a small ingester's rows sorted once for the table, its summary and the journal's tails
        self._sorted_cache: tuple[tuple[int, int], tuple[list[str], list[int], list[float], list[float]]] | None = None

    def __len__(self) -> int:
        return self._rows

    @property
    def skipped_lines(self) -> int:
        """How many lines or values were skipped, all reasons together."""
        return sum(self.rejected.values())

    @property
    def skipped(self) -> list[Skipped]:
        """Metric files left unread, with the reason (for the record)."""
        found = [Skipped(f"out/{t.name}", t.refused) for t in self._jsonl if t.refused]
        found += [Skipped(f"out/{e.relative}", e.broken) for e in self._event_files.values() if e.broken]
        return found + self._tb_skipped

    def _reject(self, reason: str) -> None:
        self.rejected[reason] = self.rejected.get(reason, 0) + 1
        if sum(self.rejected.values()) <= 3:
            logger.warning("run %s: skipped a metric line or value (%s)", self.run_id, reason)

    # -- reading ---------------------------------------------------------------------------------

    def poll(self, final: bool = False) -> int:
        """Read what is new since the last poll; the number of new rows.

        ``final=True`` (the run has ended) also takes a last line that has no newline.
        """
        before = self._rows
        for tail in self._jsonl:
            for chunk in tail.chunks(final, self._reject):
                table = None if self._small else self._parse_fast(chunk)
                if table is not None:
                    self._add_table(table)
                else:
                    for line in chunk.split(b"\n"):
                        self._parse_line(line)
        if self.tensorboard_dir is not None:
            self._poll_tensorboard()
        if not self._small:
            self._flush_pending()
        return self._rows - before

    def _poll_tensorboard(self) -> None:
        assert self.tensorboard_dir is not None
        try:
            below = self.tensorboard_dir.relative_to(self.out_dir).as_posix()
        except ValueError:
            self._tb_skipped = [Skipped(str(self.tensorboard_dir), "not inside the output folder")]
            return
        found = walk(self.out_dir, max_depth=MAX_TB_DEPTH, max_entries=MAX_TB_ENTRIES, below=below)
        self._tb_skipped = [
            Skipped(f"out/{s.path}", s.reason)
            for s in found.skipped
            if TENSORBOARD_MARK in s.path.rsplit("/", 1)[-1]
            or "limit" in s.reason
            or "deeper" in s.reason
            or s.path == below
        ]
        for entry in found.files:
            if TENSORBOARD_MARK not in entry.relative.rsplit("/", 1)[-1] or entry.relative in self._event_files:
                continue
            if len(self._event_files) >= MAX_TB_FILES:
                self._tb_skipped.append(Skipped(f"out/{entry.relative}", f"more than {MAX_TB_FILES} event files"))
                continue
            self._event_files[entry.relative] = _EventFile(self.out_dir, entry.relative)
        for event_file in self._event_files.values():
            for tag, step, value, wall_time in event_file.rows(self._reject):
                self._accept(tag, step, value, wall_time)

    def _parse_fast(self, chunk: bytes) -> pa.Table | None:
        """The chunk's rows through pyarrow's JSON reader; None if any line needs a closer look.

        Only plain chunks qualify: ASCII, no escapes, one flat object per line (so neither deep
        nesting nor lone surrogates can reach the reader)."""
        import pyarrow as pa
        import pyarrow.compute as pc
        import pyarrow.json as pa_json

        if not chunk.isascii() or b"\\" in chunk or b"[" in chunk:
            return None
        if chunk.count(b"{") != chunk.count(b"\n") or chunk.count(b"}") != chunk.count(b"\n"):
            return None
        try:
            options = pa_json.ReadOptions(block_size=max(len(chunk), 1 << 16))
            parse = pa_json.ParseOptions(explicit_schema=row_schema(), unexpected_field_behavior="ignore")
            table = pa_json.read_json(io.BytesIO(chunk), read_options=options, parse_options=parse)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            return None
        if table.num_rows == 0:
            return table
        names, steps, values, wall_times = (table.column(i) for i in range(4))
        if names.null_count or values.null_count or steps.null_count:
            return None
        lengths = pc.min_max(pc.utf8_length(names)).as_py()
        if lengths["min"] == 0 or lengths["max"] > MAX_NAME_CHARS:
            return None
        if pc.any(pc.is_inf(values)).as_py() or pc.any(pc.is_inf(wall_times)).as_py():
            return None
        if pc.any(pc.is_nan(wall_times)).as_py():
            return None
        new_names = [n for n in pc.unique(names).to_pylist() if n not in self._next_step]
        if any(not n.isprintable() for n in new_names):
            return None
        if len(self._next_step) + len(new_names) > MAX_METRIC_NAMES:
            return None
        wall_time = pc.fill_null(wall_times, time.time())
        return table.set_column(3, "wall_time", wall_time)

    def _parse_line(self, line: bytes) -> None:
        if not line.strip():
            return
        if line.count(b"[") + line.count(b"{") > MAX_JSON_DEPTH and _json_depth(line) > MAX_JSON_DEPTH:
            self._reject("too_deeply_nested")
            return
        try:
            row = json.loads(line)
        except RecursionError:
            self._reject("too_deeply_nested")
            return
        except ValueError:  # UnicodeDecodeError included
            self._reject("invalid_json")
            return
        if not isinstance(row, dict):
            self._reject("not_an_object")
            return
        if "name" not in row or "value" not in row:
            self._reject("missing_name_or_value")
            return
        self._accept(row["name"], row.get("step"), row["value"], row.get("wall_time"))

    def _accept(self, name: Any, step: Any, value: Any, wall_time: Any) -> None:
        """Validate one row and keep it, or count why not."""
        try:
            name = check_name(name)
            number = check_value(value)
            if step is None:
                step = self._next_step.get(name, 0)
            step = check_step(step)
            if wall_time is None:
                wall_time = time.time()
            else:
                try:
                    wall_time = check_value(wall_time)
                except Rejected:
                    raise Rejected("bad_wall_time") from None
                if math.isnan(wall_time):
                    raise Rejected("bad_wall_time")
            if name not in self._next_step and len(self._next_step) >= MAX_METRIC_NAMES:
                raise Rejected("too_many_names")
        except Rejected as exc:
            self._reject(exc.reason)
            return
        self._next_step[name] = max(self._next_step.get(name, 0), min(step + 1, INT64_MAX))
        names, steps, values, wall_times = self._pending
        names.append(name)
        steps.append(step)
        values.append(number)
        wall_times.append(wall_time)
        self._rows += 1
        if self._small and self._rows > SMALL_TABLE_ROWS:
            self._small = False
        if not self._small and len(names) >= FLUSH_ROWS:
            self._flush_pending()

    def _flush_pending(self) -> None:
        import pyarrow as pa

        from harness.util.arrow import float64_column, int64_column, string_column

        names, steps, values, wall_times = self._pending
        if names:
            self._pending = ([], [], [], [])
            columns = [string_column(names), int64_column(steps), float64_column(values), float64_column(wall_times)]
            self._add_table(pa.Table.from_arrays(columns, schema=row_schema()), parsed_fast=False)

    def _add_table(self, table: pa.Table, parsed_fast: bool = True) -> None:
        if table.num_rows == 0:
            return
        if parsed_fast:  # rows from the fast path: count them, keep the per-name next step up to date
            last_steps = table.group_by("name").aggregate([("step", "max")])
            for name, step in zip(last_steps.column("name").to_pylist(), last_steps.column("step_max").to_pylist()):
                self._next_step[name] = max(self._next_step.get(name, 0), min(step + 1, INT64_MAX))
            self._rows += table.num_rows
        self._buffer.append(table)
        self._buffered += table.num_rows
        if self._buffered >= FLUSH_ROWS:
            self._spill()

    # -- the spool -------------------------------------------------------------------------------

    def _spill(self) -> None:
        """Sort the rows in memory and write them as one more spool file."""
        import pyarrow as pa
        import pyarrow.parquet as pq

        if not self._buffer:
            return
        if self._spool_dir is None:
            self._spool_dir = Path(tempfile.mkdtemp(prefix="harness-metrics-"))
        if self._own_spool and self._finalizer is None:
            self._finalizer = weakref.finalize(self, shutil.rmtree, str(self._spool_dir), True)
        self._spool_dir.mkdir(parents=True, exist_ok=True)
        table = pa.concat_tables(self._buffer).sort_by(_SORT_KEYS)
        path = self._spool_dir / f"part-{len(self._spool_files):06d}.parquet"
        # small row groups: the merge holds one decoded group of every spool file at once
        pq.write_table(table, path, row_group_size=SPOOL_GROUP_ROWS)
        self._spool_files.append(path)
        self._buffer, self._buffered = [], 0

    def close(self) -> None:
        """Remove the spool (``metrics.parquet`` written by ``write_parquet`` stays)."""
        for path in self._spool_files:
            path.unlink(missing_ok=True)
        if self._spool_dir is not None and self._spool_dir.is_dir():
            shutil.rmtree(self._spool_dir, ignore_errors=True)
        self._spool_files = []
        self._spool_dir = None if self._own_spool else self._spool_dir

    def _sorted_batches(self, batch_rows: int = FLUSH_ROWS) -> Iterator[pa.RecordBatch]:
        """Every row so far as ROW_SCHEMA batches, sorted by name, step and wall time."""
        import pyarrow as pa
        import pyarrow.parquet as pq

        from harness.util.arrow import float64_column, int64_column, string_column

        self._flush_pending()
        memory = pa.concat_tables(self._buffer).sort_by(_SORT_KEYS) if self._buffer else None
        if self._rows <= SORT_IN_MEMORY_ROWS:
            parts = [pq.read_table(path, schema=row_schema()) for path in self._spool_files]
            if memory is not None:
                parts.append(memory)
            if parts:
                yield from pa.concat_tables(parts).sort_by(_SORT_KEYS).to_batches(batch_rows)
            return
        # Too many rows to sort in memory: merge the sorted spool files (and the sorted buffer).
        # heapq.merge is stable, so equal keys keep the order in which they were read.
        runs = len(self._spool_files) + (memory is not None)
        read_rows = max(256, (1 << 16) // max(runs, 1))  # rows in flight, all sources together
        sources = [_rows_of_file(path, read_rows) for path in self._spool_files]
        if memory is not None:
            sources.append(_rows_of_batches(memory.to_batches(read_rows)))
        merged = heapq.merge(*sources, key=lambda row: row[:3])
        batch_rows = min(batch_rows, MERGE_BATCH_ROWS)
        while True:
            block = [row for _, row in zip(range(batch_rows), merged)]
            if not block:
                return
            names, steps, wall_times, values = zip(*block, strict=True)
            yield pa.RecordBatch.from_arrays(
                [
                    string_column(names),
                    int64_column(steps),
                    float64_column(values),
                    float64_column(wall_times),
                ],
                schema=row_schema(),
            )

    # -- output ----------------------------------------------------------------------------------

    def live_refresh_allowed(self) -> bool:
        """Whether rewriting metrics.parquet while the run goes is cheap enough."""
        return self._rows <= LIVE_REFRESH_MAX_ROWS

    def _sorted_lists(self) -> tuple[list[str], list[int], list[float], list[float]]:
        """A small ingester's rows (names, steps, values, wall times), sorted by name, step and
        wall time; equal keys keep their order, as pyarrow's stable sort keeps them."""
        names, steps, values, wall_times = self._pending
        key = (self._rows, len(names))  # rows are only appended (or all handed over by take_new)
        if self._sorted_cache is not None and self._sorted_cache[0] == key:
            return self._sorted_cache[1]
        order = sorted(range(len(names)), key=lambda i: (names[i], steps[i], wall_times[i]))
        lists = (
            [names[i] for i in order],
            [steps[i] for i in order],
            [values[i] for i in order],
            [wall_times[i] for i in order],
        )
        self._sorted_cache = (key, lists)
        return lists

    def table(self) -> pa.Table:
        """All rows so far, sorted by name, step and wall time (in memory: for small runs and tests)."""
        import pyarrow as pa

        from harness.util.arrow import constant_string_column, float64_column, int64_column, string_column

        if self._small:
            names, steps, values, wall_times = self._sorted_lists()
            columns = [string_column(names), int64_column(steps), float64_column(values), float64_column(wall_times)]
            rows = pa.Table.from_arrays(columns, schema=row_schema())
        else:
            rows = pa.Table.from_batches(list(self._sorted_batches()), schema=row_schema())
        return rows.add_column(0, "run_id", constant_string_column(self.run_id, rows.num_rows))

    def write_parquet(self, path: Path, last_n: int = 10) -> None:
        """Write every row so far to ``path`` (tmp + rename: never half a file), in a stream;
        the summary with ``last_n`` is computed on the way."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        summary = _Summary(last_n)
        try:
            if self._small:
                self._write_small(tmp, summary)
            else:
                self._write_large(tmp, summary)
            with open(tmp, "rb") as handle:
                os.fsync(handle.fileno())
            os.replace(tmp, path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        self._summary_cache = (self._rows, last_n, summary.result())

    def _write_small(self, tmp: Path, summary: _Summary) -> None:
        names, steps, values, wall_times = self._sorted_lists()
        summary.add_lists(names, values)
        columns: list[Column] = [
            ("run_id", "string", [self.run_id] * len(names)),
            ("name", "string", names),
            ("step", "int64", steps),
            ("value", "double", values),
            ("wall_time", "double", wall_times),
        ]
        with open(tmp, "wb") as handle:
            handle.write(encode_table(columns))

    def _write_large(self, tmp: Path, summary: _Summary) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        from harness.util.arrow import constant_string_column

        schema = metrics_schema()
        with pq.ParquetWriter(tmp, schema) as writer:
            for batch in self._sorted_batches():
                summary.add(batch)
                run_ids = constant_string_column(self.run_id, batch.num_rows)
                writer.write_batch(pa.RecordBatch.from_arrays([run_ids, *batch.columns], schema=schema))

    def metric_tails(self, points: int) -> dict[str, list[float]] | None:
        """Per metric, the values of its last ``points`` points by step, as ``metrics.parquet``
        holds them (for the store's journal); None once the rows are past a small run's."""
        if not self._small:
            return None
        names, _, values, _ = self._sorted_lists()
        tails: dict[str, list[float]] = {}
        for name, value in zip(names, values):
            tails.setdefault(name, []).append(value)
        return {name: series[-points:] for name, series in tails.items()}

    def take_new(self) -> list[NewRows]:
        """Hand over the rows read since the last call and forget them: for live views that
        follow a run without keeping a second copy of its metrics (``table()`` and ``summary()``
        then cover only what was kept: rows already spilled)."""
        if self._small:
            names, steps, values, _ = self._pending
            self._pending = ([], [], [], [])
            return [_ListRows(names, steps, values)] if names else []
        self._flush_pending()
        chunks, self._buffer, self._buffered = self._buffer, [], 0
        return [_ArrowRows(table) for table in chunks]

    def summary(self, last_n: int = 10) -> dict[str, dict[str, Any]]:
        """Per metric name: last, max, min, mean_last_n (of the last ``last_n`` by step), count.

        Non-finite values are counted but left out of max, min and the mean (None when no
        finite value is left), so that record.json stays strict JSON.
        """
        if self._summary_cache is not None and self._summary_cache[:2] == (self._rows, last_n):
            return self._summary_cache[2]
        summary = _Summary(last_n)
        if self._small:
            names, _, values, _ = self._sorted_lists()
            summary.add_lists(names, values)
        else:
            for batch in self._sorted_batches():
                summary.add(batch)
        result = summary.result()
        self._summary_cache = (self._rows, last_n, result)
        return result


class NewRows(Protocol):
    """Rows a live view takes from an ingester: how far they go, and a metric's latest point."""

    def max_step(self) -> int | None:
        """The largest step among the rows (None: no rows)."""

    def latest(self, name: str) -> tuple[int, float] | None:
        """(step, value) of ``name``'s row with the largest step (the first such row), or None."""


class _ListRows:
    def __init__(self, names: list[str], steps: list[int], values: list[float]):
        self.names, self.steps, self.values = names, steps, values

    def max_step(self) -> int | None:
        return max(self.steps) if self.steps else None

    def latest(self, name: str) -> tuple[int, float] | None:
        found: tuple[int, float] | None = None
        for row_name, step, value in zip(self.names, self.steps, self.values):
            if row_name == name and (found is None or step > found[0]):
                found = (step, value)
        return found


class _ArrowRows:
    def __init__(self, table: pa.Table):
        self.table = table

    def max_step(self) -> int | None:
        import pyarrow.compute as pc

        step = pc.max(self.table.column("step")).as_py()
        return None if step is None else int(step)

    def latest(self, name: str) -> tuple[int, float] | None:
        import pyarrow.compute as pc

        rows = self.table.filter(pc.equal(self.table.column("name"), name))
        if not rows.num_rows:
            return None
        steps = rows.column("step").to_pylist()
        last = max(range(len(steps)), key=lambda i: steps[i])
        return int(steps[last]), rows.column("value")[last].as_py()


def _rows_of_batches(batches: Any) -> Iterator[tuple[str, int, float, float]]:
    """(name, step, wall_time, value) of each row, batch by batch."""
    for batch in batches:
        yield from zip(*(batch.column(i).to_pylist() for i in (0, 1, 3, 2)), strict=True)


def _rows_of_file(path: Path, read_rows: int) -> Iterator[tuple[str, int, float, float]]:
    import pyarrow.parquet as pq

    with pq.ParquetFile(path) as handle:
        yield from _rows_of_batches(handle.iter_batches(batch_size=read_rows))


class _Summary:
    """Per-metric statistics over rows that arrive sorted by name and step, in constant memory per name."""

    def __init__(self, last_n: int):
        self.last_n = max(int(last_n), 1)
        self.stats: dict[str, dict[str, Any]] = {}

    def add_lists(self, names: list[str], values: list[float]) -> None:
        """Add rows given as Python lists (sorted by name and step), as ``add`` adds a batch."""
        start = 0
        while start < len(names):
            name, end = names[start], start + 1
            while end < len(names) and names[end] == name:
                end += 1
            series = values[start:end]
            finite = [value for value in series if math.isfinite(value)]
            entry = self.stats.setdefault(name, {"count": 0, "max": None, "min": None, "tail": []})
            entry["count"] += end - start
            if finite:
                high, low = max(finite), min(finite)
                entry["max"] = high if entry["max"] is None else max(entry["max"], high)
                entry["min"] = low if entry["min"] is None else min(entry["min"], low)
            entry["tail"] = (entry["tail"] + series[-self.last_n :])[-self.last_n :]
            start = end

    def add(self, batch: pa.RecordBatch) -> None:
        import numpy as np
        import pyarrow.compute as pc

        if batch.num_rows == 0:
            return
        names = batch.column(0)
        values = batch.column(2).to_numpy(zero_copy_only=False)
        encoded = pc.dictionary_encode(names)
        indices = encoded.indices.to_numpy(zero_copy_only=False)
        dictionary = encoded.dictionary.to_pylist()
        starts = np.flatnonzero(np.r_[True, indices[1:] != indices[:-1]])
        ends = np.r_[starts[1:], len(indices)]
        for start, end in zip(starts.tolist(), ends.tolist()):
            name = dictionary[indices[start]]
            series = values[start:end]
            finite = series[np.isfinite(series)]
            entry = self.stats.setdefault(name, {"count": 0, "max": None, "min": None, "tail": []})
            entry["count"] += end - start
            if finite.size:
                high, low = float(finite.max()), float(finite.min())
                entry["max"] = high if entry["max"] is None else max(entry["max"], high)
                entry["min"] = low if entry["min"] is None else min(entry["min"], low)
            entry["tail"] = (entry["tail"] + series[-self.last_n :].tolist())[-self.last_n :]

    def result(self) -> dict[str, dict[str, Any]]:
        result = {}
        for name, entry in self.stats.items():
            tail = [value for value in entry["tail"] if math.isfinite(value)]
            last = entry["tail"][-1]
            result[name] = {
                "last": last if math.isfinite(last) else None,
                "max": entry["max"],
                "min": entry["min"],
                "mean_last_n": sum(tail) / len(tail) if tail else None,
                "count": entry["count"],
            }
        return result


def ingest_run_folder(
    run_id: str, run_dir: Path, tensorboard_subdir: str | None, spool_dir: Path | None = None
) -> MetricsIngester:
    """Read a finished (or crashed) run's ``out/`` folder fully, e.g. when recovering it."""
    out_dir = Path(run_dir) / "out"
    tensorboard_dir = out_dir / tensorboard_subdir if tensorboard_subdir else out_dir
    ingester = MetricsIngester(run_id, out_dir, tensorboard_dir, spool_dir=spool_dir)
    ingester.poll(final=True)
    return ingester
