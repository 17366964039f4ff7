"""Store-level read path for analysis: a run index and metric queries over the parquet files.

Opening 25,000 record.json files one by one is too slow for interactive analysis, so the
store keeps ``<store>/index.parquet``: one row per run (run_id, name, seed, params as JSON,
status, started_at, duration_s, tags, primary_metric), refreshed incrementally: a record is
re-read only when its record.json changed (size or mtime) since the index was written.
Metric values of finished runs are also compacted into ``<store>/metrics/part-*.parquet``
(a cache: each run's own metrics.parquet stays the checksummed truth), because DuckDB pays
about half a millisecond per file opened: 25,000 per-run files cost over 10 s, a few parts
well under one (benchmarks/bench_analysis.py measures both). A part also holds ``back``, a
point's position from the end of its series, so "mean of the last N points" reads only N rows
per run. Runs still running are read from their own files.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from harness.errors import HarnessError, StoreError
from harness.store.layout import METRICS_PARQUET
from harness.store.layout import RECORD as RECORD_NAME
from harness.store.local import LocalStore, read_record
from harness.store.record import FINAL_STATUSES
from harness.util.fsutil import write_table_atomic

INDEX_NAME = "index.parquet"
PARTS_DIR = "metrics"
PART_RUNS = 5000  # runs per compacted part: bounds the memory of one compaction
STALE_PART_S = 3600  # unreferenced parts older than this are removed (younger: a refresh in flight)
INDEX_SCHEMA = pa.schema(
    [
        ("run_id", pa.string()),
        ("name", pa.string()),
        ("seed", pa.int64()),
        ("params", pa.string()),
        ("status", pa.string()),
        ("started_at", pa.string()),
        ("duration_s", pa.float64()),
        ("tags", pa.list_(pa.string())),
        ("primary_metric", pa.string()),
        ("record_stamp", pa.string()),
        ("metrics_part", pa.string()),
    ]
)


def _stamp(stat: os.stat_result) -> str:
    return f"{stat.st_mtime_ns}:{stat.st_size}"


def _row(record: dict[str, Any], stamp: str) -> dict[str, Any]:
    seed = record.get("seed")
    duration = record.get("duration_s")
    return {
        "run_id": str(record["run_id"]),
        "name": record.get("name"),
        "seed": int(seed) if isinstance(seed, (int, float)) else None,
        "params": json.dumps(record.get("params") or {}, sort_keys=True, default=str),
        "status": record.get("status"),
        "started_at": record.get("started_at"),
        "duration_s": float(duration) if isinstance(duration, (int, float)) else None,
        "tags": [str(t) for t in record.get("tags") or []],
        "primary_metric": record.get("primary_metric"),
        "record_stamp": stamp,
        "metrics_part": None,
    }


def _connect() -> Any:
    import duckdb

    return duckdb.connect()


def _duckdb_error(exc: Exception) -> StoreError:
    return StoreError(f"cannot read metrics: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}")


def _compact(store: LocalStore, run_ids: list[str]) -> str:
    """Copy these runs' metrics into one new part file; its name."""
    parts = store.root / PARTS_DIR
    parts.mkdir(exist_ok=True)
    name = f"part-{time.time_ns():x}-{os.getpid()}.parquet"
    tmp = parts / f".{name}.tmp"
    files = [str(store.run_dir(r) / METRICS_PARQUET) for r in run_ids]
    query = """
        COPY (
            SELECT run_id, name, step, value, wall_time,
                   row_number() OVER (PARTITION BY run_id, name ORDER BY step DESC) AS back
            FROM read_parquet(?) ORDER BY run_id, name, step
        ) TO '{tmp}' (FORMAT parquet)
    """
    try:
        with _connect() as con:
            con.execute(query.format(tmp=str(tmp).replace("'", "''")), [files])
        os.replace(tmp, parts / name)
    except Exception as exc:
        raise _duckdb_error(exc) from exc
    finally:  # also on Ctrl-C, which is no Exception: nothing else removes a half-written part
        tmp.unlink(missing_ok=True)
    return name


def _remove_unreferenced_parts(store: LocalStore, referenced: set[str]) -> None:
    parts = store.root / PARTS_DIR
    if not parts.is_dir():
        return
    now = time.time()
    for path in parts.glob("part-*.parquet"):
        if path.name not in referenced and now - path.stat().st_mtime > STALE_PART_S:
            path.unlink(missing_ok=True)


def refresh_index(store: LocalStore, compact: bool = True) -> pa.Table:
    """The store's run index, brought up to date with the records on disk (and saved).

    With ``compact``, finished runs not yet in a metrics part are compacted into new parts.
    """
    path = store.root / INDEX_NAME
    known: dict[str, dict[str, Any]] = {}
    if path.is_file():
        try:
            old = pq.read_table(path)
            if old.schema.equals(INDEX_SCHEMA):
                known = {row["run_id"]: row for row in old.to_pylist()}
        except (OSError, pa.ArrowInvalid):
            known = {}  # a damaged index is rebuilt from the records
    rows: list[dict[str, Any]] = []
    changed = False
    if store.runs_dir.is_dir():
        with os.scandir(store.runs_dir) as entries:
            for entry in entries:
                if entry.name.startswith("."):
                    continue
                try:
                    stamp = _stamp(os.stat(Path(entry.path) / RECORD_NAME))
                except OSError:
                    continue
                cached = known.get(entry.name)
                if cached is not None and cached["record_stamp"] == stamp:
                    rows.append(cached)
                    continue
                try:
                    record = dict(read_record(Path(entry.path) / RECORD_NAME))
                except StoreError:
                    continue
                rows.append(_row(record, stamp))
                changed = True
    changed = changed or len(rows) != len(known)
    rows.sort(key=lambda r: r["run_id"])
    if compact and store.root.is_dir():
        pending = [
            r
            for r in rows
            if r["metrics_part"] is None
            and r["status"] in FINAL_STATUSES
            and (store.run_dir(r["run_id"]) / METRICS_PARQUET).is_file()
        ]
        for start in range(0, len(pending), PART_RUNS):
            batch = pending[start : start + PART_RUNS]
            part = _compact(store, [r["run_id"] for r in batch])
            for r in batch:
                r["metrics_part"] = part
            changed = True
    table = pa.Table.from_pylist(rows, schema=INDEX_SCHEMA)
    if changed and store.root.is_dir():
        write_table_atomic(table, path)
        _remove_unreferenced_parts(store, {r["metrics_part"] for r in rows if r["metrics_part"]})
    return table


def _sources(store: LocalStore, runs: pa.Table) -> tuple[pa.Table, list[str]]:
    """Split selected runs into (run_id, part path) pairs for compacted ones and per-run files."""
    compacted_ids: list[str] = []
    compacted_parts: list[str] = []
    files: list[str] = []
    parts_dir = store.root / PARTS_DIR
    present: dict[str, bool] = {}
    for run_id, part in zip(runs.column("run_id").to_pylist(), runs.column("metrics_part").to_pylist()):
        if part and part not in present:
            present[part] = (parts_dir / part).is_file()
        if part and present[part]:
            compacted_ids.append(run_id)
            compacted_parts.append(str(parts_dir / part))
        else:
            path = store.run_dir(run_id) / METRICS_PARQUET
            if path.is_file():
                files.append(str(path))
    wanted = pa.table({"run_id": compacted_ids, "part": compacted_parts})
    return wanted, files


def _run_query(
    store: LocalStore, runs: pa.Table, part_sql: str, file_sql: str, params: list[Any]
) -> dict[str, np.ndarray]:
    """Run a query over the compacted parts (``part_sql``) and the per-run files (``file_sql``).

    Both are SELECTs over a relation called ``src``; their results are concatenated.
    """
    wanted, files = _sources(store, runs)
    selects: list[str] = []
    arguments: list[Any] = []
    if wanted.num_rows:
        parts = sorted(set(wanted.column("part").to_pylist()))
        selects.append(
            "SELECT * FROM (WITH src AS (SELECT m.* FROM read_parquet(?, filename = true) m "
            "JOIN wanted w ON m.run_id = w.run_id AND m.filename = w.part) " + part_sql + ")"
        )
        arguments += [parts, *params]
    if files:
        selects.append("SELECT * FROM (WITH src AS (SELECT * FROM read_parquet(?)) " + file_sql + ")")
        arguments += [files, *params]
    if not selects:
        return {}
    try:
        with _connect() as con:
            con.register("wanted", wanted)
            return con.execute(" UNION ALL ".join(selects), arguments).fetchnumpy()
    except HarnessError:
        raise
    except Exception as exc:  # duckdb's own IOException, InvalidInputException, ...
        raise _duckdb_error(exc) from exc


def metric_names(store: LocalStore, runs: pa.Table) -> list[str]:
    """Every metric name logged by these runs (rows of the run index)."""
    sql = "SELECT DISTINCT name FROM src"
    result = _run_query(store, runs, sql, sql, [])
    return sorted(set(result["name"].tolist())) if result else []


def final_values(store: LocalStore, runs: pa.Table, metric: str, last_n: int = 10) -> dict[str, float]:
    """Per run, the mean of the last ``last_n`` points (by step) of ``metric``; runs without it are absent."""
    if last_n < 1:
        raise HarnessError(f"--last must be at least 1, got {last_n}")
    part_sql = "SELECT run_id, avg(value) AS final FROM src WHERE name = ? AND back <= ? GROUP BY run_id"
    file_sql = (
        "SELECT run_id, avg(value) AS final FROM (SELECT run_id, value, row_number() OVER "
        "(PARTITION BY run_id ORDER BY step DESC) AS back FROM src WHERE name = ?) WHERE back <= ? GROUP BY run_id"
    )
    result = _run_query(store, runs, part_sql, file_sql, [metric, last_n])
    if not result:
        return {}
    return dict(zip(result["run_id"].tolist(), result["final"].astype(float).tolist()))


def metric_series(
    store: LocalStore, runs: pa.Table, metric: str, x: str = "step"
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Per run, the (x, value) points of ``metric`` sorted by x (``x`` is step or wall_time)."""
    if x not in ("step", "wall_time"):
        raise HarnessError(f"x axis must be step or wall_time, not {x!r}")
    sql = f"SELECT run_id, CAST({x} AS DOUBLE) AS x, value FROM src WHERE name = ?"
    result = _run_query(store, runs, sql, sql, [metric])
    series: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    if not result or len(result["run_id"]) == 0:
        return series
    run_ids = result["run_id"].astype(str)
    order = np.lexsort((result["x"], run_ids))
    run_ids, xs, values = (
        run_ids[order],
        np.asarray(result["x"], float)[order],
        np.asarray(result["value"], float)[order],
    )
    starts = np.flatnonzero(np.r_[True, run_ids[1:] != run_ids[:-1]])
    ends = np.r_[starts[1:], len(run_ids)]
    for start, end in zip(starts, ends):
        series[str(run_ids[start])] = (xs[start:end], values[start:end])
    return series
