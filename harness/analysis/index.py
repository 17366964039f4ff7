"""Store-level read path for analysis: a run index and metric queries over the parquet files.

Opening 25,000 record.json files one by one is too slow for interactive analysis, so the
store keeps ``<store>/index.parquet``: one row per run (run_id, name, seed, params as JSON,
status, started_at, duration_s, tags, primary_metric, smoke, budget: the params the manifest's
``smoke`` changes, as JSON), refreshed incrementally: a record is
re-read only when its record.json changed (size or mtime) since the index was written.
The tails of finished runs' metrics are also compacted into ``<store>/metrics/tail-*.parquet``
(a cache: each run's own metrics.parquet stays the checksummed truth): per (run, metric), the
last TAIL_POINTS points by step, with ``back``, a point's position from the end of its series.
DuckDB pays a few tenths of a millisecond per file opened, so final scores and metric names of
25,000 runs come from a few parts instead of 25,000 files (benchmarks/bench_analysis.py measures
both). A run that finished wrote its row and the same tails into the store's journal
(``harness.store.journal``) as it ended, so a cold index of a store reads a few dozen journal
files, not every run's two; only runs the journal lacks (stores from before it, runs changed
since) are read from their own files and compacted here. Curves (every point) and runs still
running are read from the runs' own files.

Every record and metrics file is opened without following links and checked on its descriptor
(``harness.util.safefs``); DuckDB is handed ``/proc/self/fd/N`` of the checked descriptor, never a
path it would resolve itself.
"""

from __future__ import annotations

import os
import resource
import time
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from harness.errors import HarnessError, StoreError
from harness.store import journal
from harness.store.journal import FD_DIR, TAIL_POINTS, index_row, read_record, stamp
from harness.store.layout import METRICS_PARQUET
from harness.store.layout import RECORD as RECORD_NAME
from harness.store.local import LocalStore
from harness.store.record import FINAL_STATUSES
from harness.util.fsutil import write_table_atomic
from harness.util.safefs import UnsafeFile, open_dir, open_in

INDEX_NAME = "index.parquet"
PARTS_DIR = "metrics"
PART_PREFIX = "tail-"  # earlier layouts (part-*: full copies) are compacted again
PART_RUNS = 5000  # runs per compacted part (fewer when the descriptor limit is low)
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
        ("smoke", pa.bool_()),
        ("budget", pa.string()),
        ("record_stamp", pa.string()),
        ("metrics_part", pa.string()),
    ]
)


def _connect() -> Any:
    import duckdb

    return duckdb.connect()


def _duckdb_error(exc: Exception) -> StoreError:
    return StoreError(f"cannot read metrics: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}")


def _fd_budget() -> int:
    """Files held open at once for one DuckDB query: well inside the process's descriptor limit."""
    soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    return PART_RUNS if soft == resource.RLIM_INFINITY else max(16, min(PART_RUNS, soft // 2))


class _OpenFiles:
    """Metric files opened without following links and checked on their descriptors, named for
    DuckDB by ``/proc/self/fd/N``: DuckDB reads exactly the regular file that was checked, never
    what a path might point at by the time it opens it. Closed on exit."""

    def __init__(self) -> None:
        self.fds: list[int] = []

    def open(self, dir_fd: int, names: tuple[str, ...]) -> str | None:
        """The DuckDB path of ``dir_fd/names...``; None when it is missing or not a safe regular file."""
        try:
            fd, _ = open_in(dir_fd, names)
        except (UnsafeFile, OSError):
            return None
        self.fds.append(fd)
        return f"{FD_DIR}/{fd}"

    def __enter__(self) -> _OpenFiles:
        return self

    def __exit__(self, *exc: object) -> None:
        for fd in self.fds:
            os.close(fd)
        self.fds.clear()


def _compact(store: LocalStore, runs_fd: int, run_ids: list[str]) -> tuple[str | None, set[str]]:
    """Write the tails of these runs' metrics into one new part; its name and the runs it holds.

    A part holds, per (run, metric), the last TAIL_POINTS points by step, numbered by ``back``
    (1 = the last), found with DuckDB's top-N aggregate: no sort, and a tenth of the points
    written (a full sorted copy of 25,000 runs' points cost several times the scan itself)."""
    parts = store.root / PARTS_DIR
    parts.mkdir(exist_ok=True)
    name = f"{PART_PREFIX}{time.time_ns():x}-{os.getpid()}.parquet"
    tmp = parts / f".{name}.tmp"
    held: set[str] = set()
    try:
        with _OpenFiles() as files, _connect() as con:
            paths = []
            for run_id in run_ids:
                path = files.open(runs_fd, (run_id, METRICS_PARQUET))
                if path is not None:
                    paths.append(path)
                    held.add(run_id)
            if not paths:
                return None, held
            con.execute(
                "COPY (SELECT run_id, name, unnest(range(1, len(t) + 1)) AS back, unnest(t) AS value FROM "
                f"(SELECT run_id, name, max_by(value, step, {TAIL_POINTS}) AS t FROM read_parquet(?) "
                f"GROUP BY run_id, name)) TO {_sql_text(tmp)} (FORMAT parquet)",
                [paths],
            )
        os.replace(tmp, parts / name)
    except Exception as exc:
        raise _duckdb_error(exc) from exc
    finally:  # also on Ctrl-C, which is no Exception: nothing else removes a half-written part
        tmp.unlink(missing_ok=True)
    return name, held


def _sql_text(path: Path) -> str:
    return "'" + str(path).replace("'", "''") + "'"


def _remove_unreferenced_parts(store: LocalStore, referenced: set[str]) -> None:
    parts = store.root / PARTS_DIR
    if not parts.is_dir():
        return
    now = time.time()
    for path in parts.glob("*.parquet"):
        if path.name not in referenced and now - path.stat().st_mtime > STALE_PART_S:
            path.unlink(missing_ok=True)


def _load_index(path: Path) -> dict[str, dict[str, Any]]:
    if not path.is_file():
        return {}
    try:
        old = pq.read_table(path)
    except (OSError, pa.ArrowInvalid):
        return {}  # a damaged index is rebuilt from the records
    if not old.schema.equals(INDEX_SCHEMA):
        return {}
    return {row["run_id"]: row for row in old.to_pylist()}


class _Journal:
    """The store's journal of finished runs (``harness.store.journal``), read at most once per
    refresh and only when a run is not in the index yet: a run's entry is used only while its
    record.json and metrics.parquet are still the files it was made from."""

    def __init__(self, store: LocalStore, runs_fd: int):
        self.root = store.root
        self.runs_fd = runs_fd
        self.present = os.path.isdir(store.root / journal.JOURNAL_DIR)
        self.entries: dict[str, list[journal.Entry]] | None = None

    def row(self, run_id: str, record_stamp: str) -> dict[str, Any] | None:
        """The run's index row from the journal, its ``metrics_part`` the journal file; None when
        no entry matches the run's files as they are now."""
        if not self.present:
            return None
        if self.entries is None:
            self.entries = journal.read_journal(self.root)
        candidates = self.entries.get(run_id)
        if not candidates:
            return None
        now = journal.metrics_stamp(self.runs_fd, run_id)
        for entry in candidates:
            if entry.row["record_stamp"] == record_stamp and entry.metrics_stamp == now:
                return {**entry.row, "metrics_part": entry.part}
        return None


def _scan_records(
    runs_fd: int, known: dict[str, dict[str, Any]], finished: _Journal
) -> tuple[list[dict[str, Any]], bool]:
    """Index rows of every readable record (cached rows where the record is unchanged, journal
    rows where the journal holds the run as it is); whether any row is new or changed."""
    rows: list[dict[str, Any]] = []
    changed = False
    with os.scandir(runs_fd) as entries:
        for entry in entries:
            run_id = entry.name
            if run_id.startswith("."):
                continue
            cached = known.get(run_id)
            if cached is not None or finished.present:
                try:
                    info = os.stat(f"{run_id}/{RECORD_NAME}", dir_fd=runs_fd, follow_symlinks=False)
                except OSError:
                    continue
                record_stamp = stamp(info)
                if cached is not None and cached["record_stamp"] == record_stamp:
                    rows.append(cached)
                    continue
                row = finished.row(run_id, record_stamp)
                if row is not None:
                    rows.append(row)
                    changed = True
                    continue
            found = read_record(runs_fd, run_id)
            if found is not None:
                rows.append(index_row(*found))
                changed = True
    return rows, changed


def _part_location(part: str) -> tuple[str, str] | None:
    """The folder (below the store) and name of a row's metrics part; None for an older layout."""
    if journal.is_journal_part(part):
        return journal.JOURNAL_DIR, part
    return (PARTS_DIR, part) if part.startswith(PART_PREFIX) else None


def _parts_present(store: LocalStore, rows: list[dict[str, Any]]) -> None:
    """Forget a row's part when it is gone (merged away, removed) or of an older layout."""
    present: dict[str, bool] = {}
    for row in rows:
        part = row["metrics_part"]
        if part is None:
            continue
        if part not in present:
            where = _part_location(part)
            present[part] = where is not None and (store.root / where[0] / where[1]).is_file()
        if not present[part]:
            row["metrics_part"] = None


def refresh_index(store: LocalStore, compact: bool = True) -> pa.Table:
    """The store's run index, brought up to date with the records on disk (and saved).

    Runs not yet in the index come from the store's journal where it holds them as they are, else
    from their records. With ``compact``, finished runs in no metrics part yet are looked up in the
    journal, and the rest compacted into new parts.
    """
    path = store.root / INDEX_NAME
    known = _load_index(path)
    rows: list[dict[str, Any]] = []
    changed = False
    try:
        runs_fd: int | None = open_dir(store.runs_dir)
    except UnsafeFile:
        runs_fd = None
    try:
        if runs_fd is not None:
            finished = _Journal(store, runs_fd)
            rows, changed = _scan_records(runs_fd, known, finished)
        changed = changed or len(rows) != len(known)
        rows.sort(key=lambda r: r["run_id"])
        if compact and runs_fd is not None:
            before = [r["metrics_part"] for r in rows]
            _parts_present(store, rows)
            changed = changed or before != [r["metrics_part"] for r in rows]
            pending = []
            for r in rows:
                if r["metrics_part"] is None and r["status"] in FINAL_STATUSES:
                    found = finished.row(r["run_id"], r["record_stamp"])
                    if found is None:
                        pending.append(r)
                    else:
                        r["metrics_part"] = found["metrics_part"]
                        changed = True
            size = _fd_budget()
            for start in range(0, len(pending), size):
                batch = pending[start : start + size]
                part, held = _compact(store, runs_fd, [r["run_id"] for r in batch])
                for r in batch:
                    if r["run_id"] in held:
                        r["metrics_part"] = part
                        changed = True
    finally:
        if runs_fd is not None:
            os.close(runs_fd)
    table = pa.Table.from_pylist(rows, schema=INDEX_SCHEMA)
    if changed and store.root.is_dir():
        write_table_atomic(table, path)
        _remove_unreferenced_parts(store, {r["metrics_part"] for r in rows if r["metrics_part"]})
    return table


def _concat(results: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    results = [r for r in results if r]
    if len(results) <= 1:
        return results[0] if results else {}
    return {key: np.concatenate([r[key] for r in results]) for key in results[0]}


def _run_query(
    store: LocalStore,
    runs: pa.Table,
    part_sql: str | None,
    file_sql: str,
    params: list[Any],
    file_params: list[Any] | None = None,
) -> dict[str, np.ndarray]:
    """Run a query over the compacted parts (``part_sql``; None: the question needs every point,
    read from the per-run files) and the per-run files (``file_sql``); each is a SELECT over a
    relation called ``src``, and its result rows per run depend only on that run's points (the
    per-run files are read in batches)."""
    results: list[dict[str, np.ndarray]] = []
    compacted: dict[str, list[str]] = {}
    loose: list[str] = []
    for run_id, part in zip(runs.column("run_id").to_pylist(), runs.column("metrics_part").to_pylist()):
        if part and part_sql is not None:
            compacted.setdefault(part, []).append(run_id)
        else:
            loose.append(run_id)
    root_fd: int | None = None
    try:
        if compacted:
            try:
                root_fd = open_dir(store.root)
            except UnsafeFile:
                root_fd = None
            with _OpenFiles() as files:
                wanted_ids: list[str] = []
                wanted_paths: list[str] = []
                for part, ids in compacted.items():
                    where = _part_location(part)
                    opened = files.open(root_fd, where) if root_fd is not None and where is not None else None
                    if opened is None:
                        loose += ids  # a part removed since the index was read
                        continue
                    wanted_ids += ids
                    wanted_paths += [opened] * len(ids)
                if wanted_ids and part_sql is not None:
                    wanted = pa.table({"run_id": wanted_ids, "part": wanted_paths})
                    with _connect() as con:
                        con.register("wanted", wanted)
                        results.append(
                            con.execute(
                                "WITH src AS (SELECT m.* EXCLUDE (filename) FROM read_parquet(?, filename = true) m "
                                "JOIN wanted w ON m.run_id = w.run_id AND m.filename = w.part) " + part_sql,
                                [sorted(set(wanted_paths)), *params],
                            ).fetchnumpy()
                        )
        if loose:
            runs_fd = open_dir(store.runs_dir)
            try:
                size = _fd_budget()
                for start in range(0, len(loose), size):
                    with _OpenFiles() as files:
                        paths = [files.open(runs_fd, (r, METRICS_PARQUET)) for r in loose[start : start + size]]
                        present = [p for p in paths if p is not None]
                        if present:
                            with _connect() as con:
                                results.append(
                                    con.execute(
                                        "WITH src AS (SELECT * FROM read_parquet(?)) " + file_sql,
                                        [present, *(params if file_params is None else file_params)],
                                    ).fetchnumpy()
                                )
            finally:
                os.close(runs_fd)
    except HarnessError:
        raise
    except UnsafeFile as exc:
        raise StoreError(f"cannot read metrics: {exc}") from None
    except Exception as exc:  # duckdb's own IOException, InvalidInputException, ...
        raise _duckdb_error(exc) from exc
    finally:
        if root_fd is not None:
            os.close(root_fd)
    return _concat(results)


def metric_names(store: LocalStore, runs: pa.Table) -> list[str]:
    """Every metric name logged by these runs (rows of the run index)."""
    sql = "SELECT DISTINCT name FROM src"
    result = _run_query(store, runs, sql, sql, [])
    return sorted(set(result["name"].tolist())) if result else []


def final_values(store: LocalStore, runs: pa.Table, metric: str, last_n: int = 10) -> dict[str, float]:
    """Per run, the mean of the last ``last_n`` points (by step) of ``metric``; runs without it are absent."""
    if last_n < 1:
        raise HarnessError(f"--last must be at least 1, got {last_n}")
    top = (
        f"SELECT run_id, list_avg(max_by(value, step, {int(last_n)})) AS final FROM src WHERE name = ? GROUP BY run_id"
    )
    if last_n <= TAIL_POINTS:
        tail = "SELECT run_id, avg(value) AS final FROM src WHERE name = ? AND back <= ? GROUP BY run_id"
        result = _run_query(store, runs, tail, top, [metric, last_n], file_params=[metric])
    else:
        result = _run_query(store, runs, None, top, [metric])
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
    result = _run_query(store, runs, None, sql, [metric])
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
