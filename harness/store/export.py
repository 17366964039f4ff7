"""Export runs to the tools people already have: TensorBoard event files, one folder per run,
so ``tensorboard --logdir DIR`` shows every selected run's curves side by side.

The files are written with TensorBoard's own event writer (no TensorFlow needed). Exporting again
replaces what an earlier export wrote for that run and leaves every other file alone.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pyarrow.parquet as pq

from harness.errors import HarnessError
from harness.store.local import LocalStore

SUFFIX = ".harness"
SYSTEM_PREFIX = "system/"


@dataclass(frozen=True)
class Exported:
    """What one run's export wrote."""

    run_id: str
    folder: Path
    scalars: int
    tags: int


def _events(table, tag_prefix: str, x_column: str, relative_x: bool):  # type: ignore[no-untyped-def]
    """(tag, step, wall_time, value) of a long metrics/system table, non-finite values skipped."""
    import math

    names = table.column("name").to_pylist()
    xs = table.column(x_column).to_pylist()
    values = table.column("value").to_pylist()
    walls = table.column("wall_time").to_pylist() if "wall_time" in table.column_names else xs
    start = min((x for x in xs if x is not None), default=0.0)
    for name, x, value, wall in zip(names, xs, values, walls):
        if name is None or x is None or value is None or not math.isfinite(value):
            continue
        step = round(x - start) if relative_x else int(x)
        yield tag_prefix + str(name), step, float(wall or 0.0), float(value)


def export_tensorboard(store: LocalStore, run_ids: list[str], out_dir: Path, system: bool = True) -> list[Exported]:
    """Write ``out_dir/<run_id>/events.out.tfevents.*.harness`` for each run from its metrics
    (and, with ``system``, its system metrics under ``system/``, step = seconds since the first sample)."""
    from tensorboard.compat.proto import event_pb2, summary_pb2
    from tensorboard.summary.writer.event_file_writer import EventFileWriter

    if out_dir.exists() and not out_dir.is_dir():
        raise HarnessError(f"--tensorboard {out_dir}: exists and is not a folder")
    done: list[Exported] = []
    for run_id in run_ids:
        run_dir = store.run_dir(run_id)
        metrics_path = run_dir / "metrics.parquet"
        if not metrics_path.is_file():
            raise HarnessError(f"{metrics_path}: missing; the run has no metrics table to export")
        folder = out_dir / run_id
        folder.mkdir(parents=True, exist_ok=True)
        for old in folder.glob(f"events.out.tfevents.*{SUFFIX}"):
            old.unlink()
        tables = [(pq.read_table(metrics_path), "", "step", False)]
        system_path = run_dir / "system.parquet"
        if system and system_path.is_file():
            tables.append((pq.read_table(system_path), SYSTEM_PREFIX, "time", True))
        writer = EventFileWriter(str(folder), max_queue_size=1000, flush_secs=3600, filename_suffix=SUFFIX)
        count, tags = 0, set()
        try:
            for table, prefix, x_column, relative in tables:
                for tag, step, wall, value in _events(table, prefix, x_column, relative):
                    summary = summary_pb2.Summary(value=[summary_pb2.Summary.Value(tag=tag, simple_value=value)])
                    writer.add_event(event_pb2.Event(wall_time=wall, step=step, summary=summary))
                    count += 1
                    tags.add(tag)
        finally:
            writer.close()
        done.append(Exported(run_id, folder, count, len(tags)))
    return done
