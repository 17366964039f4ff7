"""Metric ingestion: track, external JSONL and real TensorBoard files into one parquet table."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from torch.utils.tensorboard import SummaryWriter

import harness
from harness.capture.metrics import METRICS_SCHEMA, MetricsIngester, ingest_run_folder

REPO_ROOT = Path(harness.__file__).resolve().parent.parent

# values exactly representable in float32, since TensorBoard stores scalars as float32
CURVE = {
    "charts/episodic_return": [(0, 9.0), (500, 12.5), (1000, 31.0), (1500, 88.25)],
    "losses/td_loss": [(0, 1.5), (500, 0.75), (1000, 0.375), (1500, 0.125)],
    "charts/SPS": [(500, 1024.0), (1500, 2048.0)],
}


def log_with_track(out_dir: Path) -> None:
    code = f"""
        from harness import track
        for name, points in {CURVE!r}.items():
            for step, value in points:
                track.log({{name: value}}, step=step)
        """
    env = {key: value for key, value in os.environ.items() if not key.startswith("HARNESS_")}
    env.update(PYTHONPATH=str(REPO_ROOT), HARNESS_OUT=str(out_dir))
    subprocess.run([sys.executable, "-c", textwrap.dedent(code)], env=env, check=True, timeout=60)


def log_with_tensorboard(log_dir: Path) -> None:
    writer = SummaryWriter(str(log_dir))
    for name, points in CURVE.items():
        for step, value in points:
            writer.add_scalar(name, value, step)
    writer.add_histogram("weights", np.arange(10.0), 0)  # not a scalar: must be ignored
    writer.add_text("notes", "hello", 0)
    writer.close()


def rows(table) -> set[tuple[str, int, float]]:
    return set(
        zip(
            table.column("name").to_pylist(),
            table.column("step").to_pylist(),
            table.column("value").to_pylist(),
        )
    )


def expected_rows() -> set[tuple[str, int, float]]:
    return {(name, step, value) for name, points in CURVE.items() for step, value in points}


def test_track_jsonl_to_parquet(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    log_with_track(out)
    ingester = MetricsIngester("run-a", out, None)
    assert ingester.poll() == 10
    assert ingester.poll() == 0
    ingester.write_parquet(tmp_path / "metrics.parquet")
    table = pq.read_table(tmp_path / "metrics.parquet")
    assert table.schema.equals(METRICS_SCHEMA)
    assert set(table.column("run_id").to_pylist()) == {"run-a"}
    assert rows(table) == expected_rows()
    assert not list(tmp_path.glob(".metrics.parquet.*"))  # no temporary left behind


def test_tensorboard_files_give_the_same_table(tmp_path):
    out = tmp_path / "out"
    log_with_tensorboard(out / "runs" / "dqn__1")
    ingester = MetricsIngester("run-b", out, out / "runs")
    assert ingester.poll() == 10
    table = ingester.table()
    assert rows(table) == expected_rows()
    wall_times = table.column("wall_time").to_pylist()
    assert all(abs(t - wall_times[0]) < 120 for t in wall_times)


def test_tensorboard_file_is_read_incrementally_while_written(tmp_path):
    writer = SummaryWriter(str(tmp_path / "tb"))
    writer.add_scalar("charts/x", 1.0, 1)
    writer.flush()
    ingester = MetricsIngester("run-c", tmp_path, tmp_path / "tb")
    assert ingester.poll() == 1
    writer.add_scalar("charts/x", 2.0, 2)
    writer.add_scalar("charts/y", 3.0, 2)
    writer.flush()
    assert ingester.poll() == 2
    assert ingester.poll() == 0
    writer.close()
    assert rows(ingester.table()) == {
        ("charts/x", 1, 1.0),
        ("charts/x", 2, 2.0),
        ("charts/y", 2, 3.0),
    }


def test_external_jsonl_lines_from_any_program(tmp_path):
    path = tmp_path / "metrics.external.jsonl"
    lines = [
        {"name": "eval/score", "step": 10, "value": 0.5, "wall_time": 1700000000.0},
        {"name": "eval/score", "step": 20, "value": 0.75},
        {"name": "eval/score", "value": 1},  # no step: the next one after 20
        {"name": "eval/other", "step": 3, "value": "2.5"},
    ]
    text = "".join(json.dumps(line) + "\n" for line in lines)
    text += "this is not json\n" + '{"name": "no value"}\n' + '{"name": "x", "step": 1.5, "value": 1}\n'
    # a shell one-liner, as a program in another language would append lines
    subprocess.run(["sh", "-c", f"cat >> '{path}'"], input=text, text=True, check=True)
    ingester = MetricsIngester("run-d", tmp_path, None)
    assert ingester.poll() == 4
    assert ingester.skipped_lines == 3
    assert rows(ingester.table()) == {
        ("eval/score", 10, 0.5),
        ("eval/score", 20, 0.75),
        ("eval/score", 21, 1.0),
        ("eval/other", 3, 2.5),
    }
    wall_times = dict(
        zip(
            ingester.table().column("step").to_pylist(),
            ingester.table().column("wall_time").to_pylist(),
        )
    )
    assert wall_times[10] == 1700000000.0


def test_half_written_line_waits_for_its_end(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"name": "a", "step": 0, "value": 1.0, "wall_time": 1.0}\n{"name": "a", "st')
    ingester = MetricsIngester("run-e", tmp_path, None)
    assert ingester.poll() == 1
    assert ingester.poll() == 0
    with open(path, "a") as handle:
        handle.write('ep": 1, "value": 2.0, "wall_time": 2.0}\n')
    assert ingester.poll() == 1
    assert ingester.skipped_lines == 0
    assert rows(ingester.table()) == {("a", 0, 1.0), ("a", 1, 2.0)}


def test_recovery_reads_a_crashed_runs_folder_fully(tmp_path):
    out = tmp_path / "run" / "out"
    out.mkdir(parents=True)
    log_with_track(out)
    log_with_tensorboard(out / "tb")
    with open(out / "metrics.external.jsonl", "w") as handle:
        handle.write('{"name": "last", "step": 5, "value": 4.0}')  # killed before its newline
    ingester = ingest_run_folder("run-f", tmp_path / "run", "tb")
    assert len(ingester) == 21
    assert ("last", 5, 4.0) in rows(ingester.table())


def test_summary_per_metric(tmp_path):
    path = tmp_path / "metrics.jsonl"
    values = [3.0, 1.0, 4.0, 1.0, 5.0, float("nan")]
    with open(path, "w") as handle:
        for step, value in reversed(list(enumerate(values))):  # out of order on purpose
            handle.write(json.dumps({"name": "r", "step": step, "value": value, "wall_time": 1.0}) + "\n")
    ingester = MetricsIngester("run-g", tmp_path, None)
    ingester.poll()
    summary = ingester.summary(last_n=3)
    assert summary["r"]["count"] == 6
    assert summary["r"]["last"] is None  # NaN stays out of record.json
    assert summary["r"]["max"] == 5.0 and summary["r"]["min"] == 1.0
    assert summary["r"]["mean_last_n"] == pytest.approx(3.0)  # steps 3, 4 (5 is NaN)
    json.dumps(summary, allow_nan=False)
    assert not math.isnan(ingester.summary()["r"]["mean_last_n"])


def test_missing_folders_are_empty_not_errors(tmp_path):
    ingester = MetricsIngester("run-h", tmp_path / "nothing", tmp_path / "nothing" / "tb")
    assert ingester.poll() == 0
    ingester.write_parquet(tmp_path / "metrics.parquet")
    assert pq.read_table(tmp_path / "metrics.parquet").num_rows == 0


def _ingest_with(monkeypatch, out_dir: Path, small_rows: int, path: Path) -> tuple[MetricsIngester, dict]:
    from harness.capture import metrics as metrics_module

    monkeypatch.setattr(metrics_module, "SMALL_TABLE_ROWS", small_rows)
    ingester = MetricsIngester("run-1", out_dir, None)
    ingester.poll(final=True)
    ingester.write_parquet(path, last_n=7)
    return ingester, ingester.summary(7)


def test_a_small_run_and_a_large_one_write_the_same_table(tmp_path, monkeypatch):
    """The rows of a small run stay Python lists and go through the harness's own Parquet writer;
    past SMALL_TABLE_ROWS they go through pyarrow. The same lines give the same table, summary and
    journal tails either way: unsorted and repeated steps, lines without a step or wall time,
    NaN, negative zero, names outside ASCII, a bad line among them."""
    from harness.store.journal import TAIL_POINTS, _tails

    out = tmp_path / "out"
    out.mkdir()
    lines = []
    for i in range(5000):
        name = ("charts/return", "losses/qé", "媒体/π", "a")[i % 4]
        step = (i * 7919) % 1200 if i % 5 else i // 3
        row = {"name": name, "step": step, "value": float("nan") if i % 97 == 0 else -0.0 if i % 89 == 0 else i * 0.25}
        if i % 11:
            row["wall_time"] = 1e9 + i % 13
        if i % 17 == 0:
            del row["step"]
        lines.append(json.dumps(row))
    lines.insert(50, "{not json")
    (out / "metrics.jsonl").write_text("\n".join(lines) + "\n")
    # wall times of lines without one are the time of reading: read both from the same moment
    monkeypatch.setattr("time.time", lambda: 1.5e9)
    results = {}
    for label, small_rows in (("small", 10**6), ("large", 0), ("default", 4096)):
        ingester, summary = _ingest_with(monkeypatch, out, small_rows, tmp_path / f"{label}.parquet")
        assert ingester.rejected == {"invalid_json": 1}
        table = pq.read_table(tmp_path / f"{label}.parquet")
        assert table.schema.remove_metadata().equals(METRICS_SCHEMA) and table.num_rows == 5000
        results[label] = (table, summary, ingester.metric_tails(TAIL_POINTS))
    small, large, default = results["small"], results["large"], results["default"]
    as_text = [json.dumps(result[0].to_pydict()) for result in (small, large, default)]  # NaN, -0.0 kept
    assert as_text[0] == as_text[1] == as_text[2]
    assert json.dumps(small[1], sort_keys=True) == json.dumps(large[1], sort_keys=True)
    assert large[2] is None and default[2] is None  # past a small run's rows: read from the file
    from_file = _tails(str(tmp_path / "large.parquet"))
    assert from_file is not None and set(from_file) == set(small[2])
    for name, values in small[2].items():
        np.testing.assert_array_equal(np.array(values), from_file[name])
    signs = [math.copysign(1, v) for v in small[0].column("value").to_pylist() if v == 0]
    assert -1.0 in signs
