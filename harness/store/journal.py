"""The store's journal of finished runs: what the run index needs of each run, written as it ends.

A cold look at a store of 25,000 runs must not open 25,000 record.json and 25,000 metrics.parquet
files (``harness.analysis.index``), so a run sealed with a final status writes one small parquet
file into ``<store>/journal/``: per metric, the tail of its points (the last TAIL_POINTS by step,
numbered by ``back`` from the end: the layout of the index's compacted parts) and, in the file's
metadata, the run's index row with the stamps (size and mtime) of its record.json and
metrics.parquet. Files are written whole and renamed into place, never appended to, so runs
ending at once (sweeps, Slurm, Ray: many processes, many hosts) cannot tear one another's. Every
FANOUT files of one level are merged into one of the next (the inputs removed only once the
merged file is in place), so the journal of 25,000 runs is a few dozen files.

The journal is a cache, never the truth: an entry counts only while both stamps still match the
run's files, and a store without a journal (made before it existed) is indexed from the records.
Every journal file is read without following links and with bounded sizes (``harness.util.safefs``).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import stat
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harness.store.layout import METRICS_PARQUET, RECORD
from harness.store.record import FINAL_STATUSES
from harness.util.safefs import MAX_RECORD_BYTES, UnsafeFile, open_dir, open_in, read_in

JOURNAL_DIR = "journal"
TAIL_POINTS = 100  # points per (run, metric) kept: final scores over up to this many
FANOUT = 32  # files of one level merged into one of the next
TOP_LEVEL = 2  # files of this level are never merged (1,024 runs each)
MAX_MERGE_ROWS = 2_000_000  # a merge of more tail rows than this only promotes its inputs a level
MAX_FILE_BYTES = 1 << 30  # a journal file larger than this is not read
MAX_META_BYTES = 64 << 20  # the index rows one journal file may carry
FD_DIR = "/proc/self/fd" if os.path.isdir("/proc/self/fd") else "/dev/fd"
META_KEY = b"harness.runs"
ROW_TYPES: dict[str, tuple[type, ...]] = {  # the index row's fields and the types each may hold
    "run_id": (str,),
    "name": (str, type(None)),
    "seed": (int, type(None)),
    "params": (str,),
    "status": (str, type(None)),
    "started_at": (str, type(None)),
    "duration_s": (float, int, type(None)),
    "tags": (list,),
    "primary_metric": (str, type(None)),
    "smoke": (bool,),
    "budget": (str, type(None)),
    "record_stamp": (str,),
}


@dataclass(frozen=True)
class Entry:
    """One run as a journal file holds it: its index row, its metrics file's stamp, the file."""

    row: dict[str, Any]
    metrics_stamp: str
    part: str


def stamp(info: os.stat_result) -> str:
    """What identifies one version of a file: its mtime and size."""
    return f"{info.st_mtime_ns}:{info.st_size}"


def read_record(runs_fd: int, run_id: str) -> tuple[dict[str, Any], str] | None:
    """A run's record and its stamp, read without following links (None: not a readable record)."""
    try:
        data, info = read_in(runs_fd, (run_id, RECORD), MAX_RECORD_BYTES)
        record = json.loads(data)
    except (UnsafeFile, OSError, ValueError, RecursionError):
        return None
    if not isinstance(record, dict) or not isinstance(record.get("run_id"), str):
        return None
    return record, stamp(info)


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) else None


def index_row(record: dict[str, Any], record_stamp: str) -> dict[str, Any]:
    """The run index's row of one record (``metrics_part`` still unset)."""
    seed = record.get("seed")
    duration = record.get("duration_s")
    tags = record.get("tags")
    budget = record.get("budget")
    return {
        "run_id": str(record["run_id"]),
        "name": _text(record.get("name")),
        "seed": int(seed) if isinstance(seed, (int, float)) and math.isfinite(seed) else None,
        "params": json.dumps(record.get("params") or {}, sort_keys=True, default=str),
        "status": _text(record.get("status")),
        "started_at": _text(record.get("started_at")),
        "duration_s": float(duration) if isinstance(duration, (int, float)) else None,
        "tags": [str(t) for t in tags] if isinstance(tags, list) else [],
        "primary_metric": _text(record.get("primary_metric")),
        "smoke": bool(record.get("smoke")),
        "budget": json.dumps(budget, sort_keys=True, default=str) if isinstance(budget, dict) else None,
        "record_stamp": record_stamp,
        "metrics_part": None,
    }


def metrics_stamp(runs_fd: int, run_id: str) -> str | None:
    """The stamp of a run's metrics.parquet as it is now ("" when there is none; None when it is
    something other than a regular file, which no journal entry matches)."""
    try:
        info = os.stat(f"{run_id}/{METRICS_PARQUET}", dir_fd=runs_fd, follow_symlinks=False)
    except FileNotFoundError:
        return ""
    except OSError:
        return None
    return stamp(info) if stat.S_ISREG(info.st_mode) else None


# -- writing -------------------------------------------------------------------------------------


def note_finished(root: Path, run_id: str, metric_tails: Mapping[str, Sequence[float]] | None = None) -> None:
    """Add a sealed run to its store's journal (and merge the journal when a level is full).

    ``metric_tails``: per metric, its last TAIL_POINTS values by step, from the rows the run's
    metrics.parquet was just written from (a small run: its entry then needs no pyarrow); None
    reads them from that file.

    Best effort, and cheap next to the run: a run whose files cannot be read back, whose metrics
    are not sorted the way the harness writes them, or a full disk leaves no entry, and the index
    reads that run from its own files instead."""
    try:
        runs_fd = open_dir(root / "runs")
    except (UnsafeFile, OSError):
        return
    try:
        entry = _entry_writer(runs_fd, run_id, metric_tails)
    except Exception:  # noqa: BLE001 — the journal is a cache: any fault leaves the run to the slow path
        entry = None
    finally:
        os.close(runs_fd)
    if entry is None:
        return
    try:
        journal = root / JOURNAL_DIR
        journal.mkdir(exist_ok=True)
        os.close(open_dir(journal))  # a link planted in its place is refused, not written through
        _write(journal, 0, entry)
        merge(journal)
    except Exception:  # noqa: BLE001 — as above
        return


def _entry_writer(
    runs_fd: int, run_id: str, metric_tails: Mapping[str, Sequence[float]] | None
) -> Callable[[Path], None] | None:
    """What writes the journal file of one run (its tails, its row in the metadata); None when
    it has none."""
    found = read_record(runs_fd, run_id)
    if found is None or found[0].get("run_id") != run_id or found[0].get("status") not in FINAL_STATUSES:
        return None
    row = index_row(*found)
    del row["metrics_part"]
    if metric_tails is not None:
        metrics = metrics_stamp(runs_fd, run_id)
        if metrics is None:
            return None
        data = _small_entry(run_id, metric_tails, [{"row": row, "metrics_stamp": metrics}])

        def write(path: Path) -> None:
            path.write_bytes(data)

        return write
    try:
        fd, info = open_in(runs_fd, (run_id, METRICS_PARQUET))
    except UnsafeFile as exc:
        if exc.reason != "missing":
            return None
        return _arrow_writer(_table(run_id, {}, [{"row": row, "metrics_stamp": ""}]))
    try:
        tails = _tails(f"{FD_DIR}/{fd}")
    finally:
        os.close(fd)
    if tails is None:
        return None
    return _arrow_writer(_table(run_id, tails, [{"row": row, "metrics_stamp": stamp(info)}]))


def _small_entry(run_id: str, tails: Mapping[str, Sequence[float]], entries: list[dict[str, Any]]) -> bytes:
    """The journal file of one small run, the layout of ``_table``, written without pyarrow."""
    from harness.util.small_parquet import Column, encode_table

    names = [name for name, values in tails.items() for _ in values]
    backs = [back for values in tails.values() for back in range(len(values), 0, -1)]
    columns: list[Column] = [
        ("run_id", "string", [run_id] * len(names)),
        ("name", "string", names),
        ("back", "int64", backs),
        ("value", "double", [float(value) for values in tails.values() for value in values]),
    ]
    return encode_table(columns, {META_KEY.decode(): json.dumps(entries, separators=(",", ":"))})


def _tails(path: str) -> dict[str, Any] | None:
    """Per metric, the values of its last TAIL_POINTS points by step, read in one streaming pass
    over a file sorted by (name, step) as the harness writes it; None when it is not so sorted."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    from harness.util.arrow import numpy_of

    tails: dict[str, Any] = {}
    last: tuple[str, int] | None = None
    with pq.ParquetFile(path) as handle:
        types = {f.name: f.type for f in handle.schema_arrow}
        if types.get("name") != pa.string() or not pa.types.is_integer(types.get("step", pa.null())):
            return None
        for batch in handle.iter_batches(batch_size=1 << 16, columns=["name", "step", "value"]):
            names, steps_col, values_col = batch.columns
            if names.null_count or steps_col.null_count or values_col.null_count:
                return None
            if not len(names):
                continue
            steps = numpy_of(steps_col, np.int64)
            values = numpy_of(values_col, np.float64)
            encoded = pc.dictionary_encode(names)
            indices = numpy_of(encoded.indices, np.int32)
            dictionary = encoded.dictionary.to_pylist()
            same = indices[1:] == indices[:-1]
            if np.any(np.diff(steps)[same] < 0):
                return None
            starts = np.flatnonzero(np.r_[True, ~same])
            ends = np.r_[starts[1:], len(indices)]
            for start, end in zip(starts.tolist(), ends.tolist()):
                name = dictionary[indices[start]]
                if last is not None and (name < last[0] or (name == last[0] and steps[start] < last[1])):
                    return None
                if last is not None and name == last[0] and name in tails:
                    tails[name] = np.concatenate([tails[name], values[start:end]])[-TAIL_POINTS:]
                elif name in tails:
                    return None  # a name seen before another: not sorted by name
                else:
                    tails[name] = values[start:end][-TAIL_POINTS:].copy()
                last = (name, int(steps[end - 1]))
    return tails


def _table(run_id: str, tails: dict[str, Any], entries: list[dict[str, Any]]) -> Any:
    import numpy as np

    from harness.util.arrow import constant_string_column, numpy_column, string_column, table

    counts = [len(values) for values in tails.values()]
    empty = np.zeros(0)
    rows = table(
        {
            "run_id": constant_string_column(run_id, sum(counts)),
            "name": string_column([name for name, count in zip(tails, counts) for _ in range(count)]),
            "back": numpy_column(
                np.concatenate([np.arange(c, 0, -1, dtype=np.int64) for c in counts] or [np.zeros(0, np.int64)])
            ),
            "value": numpy_column(np.concatenate([*tails.values(), empty]).astype(np.float64)),
        }
    )
    return rows.replace_schema_metadata({META_KEY: json.dumps(entries, separators=(",", ":")).encode()})


def _arrow_writer(table: Any) -> Callable[[Path], None]:
    """What writes ``table`` as a journal file, its schema metadata as the file's."""

    def write(path: Path) -> None:
        import pyarrow.parquet as pq

        metadata = table.schema.metadata
        with pq.ParquetWriter(path, table.schema.remove_metadata(), store_schema=False) as writer:
            writer.write_table(table.replace_schema_metadata(None))
            writer.add_key_value_metadata(metadata)

    return write


def _write(journal: Path, level: int, write: Callable[[Path], None]) -> str:
    """Write one journal file of ``level`` whole, then rename it into place; its name."""
    name = f"j{level}-{time.time_ns():016x}-{os.getpid()}-{os.urandom(4).hex()}.parquet"
    tmp = journal / f".{name}.tmp"
    try:
        write(tmp)
        os.replace(tmp, journal / name)
    finally:  # also on Ctrl-C: nothing else removes a half-written file
        tmp.unlink(missing_ok=True)
    return name


@contextlib.contextmanager
def _merge_lock(journal: Path) -> Iterator[bool]:
    """Whether this process may merge now: an advisory lock, so that runs ending together do not
    all merge the same files (where the file system has no locks, merges may overlap: harmless,
    a run in two files is read from either)."""
    import fcntl

    try:
        fd = os.open(journal / ".merge.lock", os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
    except OSError:
        yield True
        return
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        except OSError:
            pass
        yield True
    finally:
        os.close(fd)


def _level_files(journal_fd: int) -> dict[int, list[str]]:
    levels: dict[int, list[str]] = {}
    with os.scandir(journal_fd) as entries:
        for entry in entries:
            level = _level(entry.name)
            if level is not None:
                levels.setdefault(level, []).append(entry.name)
    for names in levels.values():
        names.sort()
    return levels


def _level(name: str) -> int | None:
    if len(name) > 2 and name[0] == "j" and name[1].isdigit() and name[2] == "-" and name.endswith(".parquet"):
        return int(name[1])
    return None


def merge(journal: Path) -> None:
    """Merge every level that holds FANOUT files or more into one file of the next level."""
    with _merge_lock(journal) as allowed:
        if not allowed:
            return
        journal_fd = open_dir(journal)
        try:
            for level in range(TOP_LEVEL):
                names = _level_files(journal_fd).get(level, [])
                if len(names) >= FANOUT:
                    _merge_level(journal, journal_fd, level, names)
        finally:
            os.close(journal_fd)


def _merge_level(journal: Path, journal_fd: int, level: int, names: list[str]) -> None:
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    from harness.util.arrow import string_column

    read: list[tuple[str, Any, list[dict[str, Any]]]] = []
    rows = 0
    for name in names:
        try:
            fd, _ = open_in(journal_fd, (name,), MAX_FILE_BYTES)
        except UnsafeFile as exc:
            if exc.reason != "missing":
                _remove(journal, name)  # not a file this journal wrote: never read, so drop it
            continue
        try:
            with pq.ParquetFile(f"{FD_DIR}/{fd}") as handle:
                entries = _entries_of(handle.metadata.metadata)
                if entries is None:
                    raise ValueError("no journal rows")
                rows += handle.metadata.num_rows
                if rows > MAX_MERGE_ROWS:
                    break
                read.append((name, handle.read(), entries))
        except Exception:  # noqa: BLE001 — a damaged file is dropped: its runs are read from their folders
            _remove(journal, name)
        finally:
            os.close(fd)
    if rows > MAX_MERGE_ROWS:  # too many points for one merge: the files move up a level as they are
        for name in names:
            with contextlib.suppress(OSError):
                os.rename(journal / name, journal / f"j{level + 1}{name[2:]}")
        return
    if not read:
        return
    newest: dict[str, tuple[int, int]] = {}  # run -> (its record's mtime, the file that holds it)
    for position, (_, _, entries) in enumerate(read):
        for entry in entries:
            key = (int(entry["row"]["record_stamp"].split(":")[0]), position)
            if newest.get(entry["row"]["run_id"], (-1, -1)) < key:
                newest[entry["row"]["run_id"]] = key
    current = _current_entries(journal.parent, [e for _, _, entries in read for e in entries])
    tables, kept = [], []
    for position, (_, table, entries) in enumerate(read):
        mine = [e for e in entries if newest[e["row"]["run_id"]][1] == position and id(e) in current]
        kept += mine
        ids = string_column([e["row"]["run_id"] for e in mine])
        tables.append(table.filter(pc.is_in(table.column("run_id"), value_set=ids)).replace_schema_metadata(None))
    if kept:
        merged = pa.concat_tables(tables).replace_schema_metadata(
            {META_KEY: json.dumps(kept, separators=(",", ":")).encode()}
        )
        _write(journal, level + 1, _arrow_writer(merged))
    for name, _, _ in read:
        _remove(journal, name)


def _current_entries(root: Path, entries: list[dict[str, Any]]) -> set[int]:
    """The ``id`` of each entry whose run's record.json is still the one it was made from: an
    entry of a removed run, or of a record saved again since (which has a newer entry, or is read
    from its files), can never be used, so a merge drops it. All are kept when the runs folder
    cannot be opened."""
    try:
        runs_fd = open_dir(root / "runs")
    except (UnsafeFile, OSError):
        return {id(entry) for entry in entries}
    try:
        current = set()
        for entry in entries:
            run_id = entry["row"]["run_id"]
            if "/" in run_id or run_id in ("", ".", ".."):
                continue
            try:
                info = os.stat(f"{run_id}/{RECORD}", dir_fd=runs_fd, follow_symlinks=False)
            except (OSError, ValueError):  # gone, or a name no run folder can have
                continue
            if stat.S_ISREG(info.st_mode) and stamp(info) == entry["row"]["record_stamp"]:
                current.add(id(entry))
        return current
    finally:
        os.close(runs_fd)


def _remove(journal: Path, name: str) -> None:
    with contextlib.suppress(OSError):
        os.unlink(journal / name)


# -- reading -------------------------------------------------------------------------------------


def _entries_of(metadata: dict[bytes, bytes] | None) -> list[dict[str, Any]] | None:
    """The well-formed entries a journal file's metadata carries (None: not a journal file)."""
    blob = (metadata or {}).get(META_KEY)
    if blob is None or len(blob) > MAX_META_BYTES:
        return None
    try:
        entries = json.loads(blob)
    except (ValueError, RecursionError):
        return None
    if not isinstance(entries, list):
        return None
    return [e for e in entries if _well_formed(e)]


def _well_formed(entry: Any) -> bool:
    if not isinstance(entry, dict) or not isinstance(entry.get("metrics_stamp"), str):
        return False
    row = entry.get("row")
    if not isinstance(row, dict) or row.keys() != ROW_TYPES.keys():
        return False
    for key, types in ROW_TYPES.items():
        value = row[key]
        if not isinstance(value, types) or (isinstance(value, bool) and bool not in types):
            return False
    return all(isinstance(tag, str) for tag in row["tags"])


def read_journal(root: Path) -> dict[str, list[Entry]]:
    """Every run the store's journal holds, with each file that holds it (newest files first);
    empty when the store has no journal. A file merged away while it is read makes the listing
    start again (a few times at most; then those runs are left to the slow path)."""
    try:
        journal_fd = open_dir(root / JOURNAL_DIR)
    except (UnsafeFile, OSError):
        return {}
    try:
        for _ in range(3):
            found, complete = _read_all(journal_fd)
            if complete:
                break
        return found
    finally:
        os.close(journal_fd)


def _read_all(journal_fd: int) -> tuple[dict[str, list[Entry]], bool]:
    import pyarrow.parquet as pq

    found: dict[str, list[Entry]] = {}
    complete = True
    levels = _level_files(journal_fd)
    names = sorted((name for files in levels.values() for name in files), reverse=True)
    for name in names:
        try:
            fd, _ = open_in(journal_fd, (name,), MAX_FILE_BYTES)
        except UnsafeFile as exc:
            complete = complete and exc.reason != "missing"
            continue
        try:
            entries = _entries_of(pq.read_metadata(f"{FD_DIR}/{fd}").metadata)
        except Exception:  # noqa: BLE001 — pyarrow's errors for a damaged footer are many
            entries = None
        finally:
            os.close(fd)
        for entry in entries or []:
            found.setdefault(entry["row"]["run_id"], []).append(Entry(entry["row"], entry["metrics_stamp"], name))
    return found, complete


def is_journal_part(name: str) -> bool:
    """Whether a run index's ``metrics_part`` names a journal file (else a compacted part)."""
    return _level(name) is not None
