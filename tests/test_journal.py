"""The store's journal of finished runs: what a run writes as it is sealed, merged as runs pile
up, and read by a cold run index instead of every run's files; runs changed afterwards, runs
ending at once in many processes, and journal files that are links, FIFOs or garbage."""

from __future__ import annotations

import multiprocessing
import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from harness.analysis import index as run_index
from harness.store import journal
from harness.store.local import LocalStore
from tests.test_analysis import METRIC, add_run


def _values(seed: int, points: int = 150) -> np.ndarray:
    return np.linspace(0, 1, points) * 100 + seed


def _store(root: Path, runs: int, first: int = 0) -> LocalStore:
    store = LocalStore(root)
    for seed in range(first, first + runs):
        add_run(store, f"r{seed:03d}", f"agent{seed % 2}", {"env_id": f"E{seed % 3}"}, seed, _values(seed))
    return store


def _from_files(store: LocalStore, index: pa.Table, last_n: int) -> dict[str, float]:
    """Final values read from every run's own metrics.parquet (no part, no journal)."""
    loose = index.set_column(
        index.schema.get_field_index("metrics_part"), "metrics_part", pa.nulls(index.num_rows, pa.string())
    )
    return run_index.final_values(store, loose, METRIC, last_n)


def _cold(store: LocalStore) -> pa.Table:
    (store.root / run_index.INDEX_NAME).unlink(missing_ok=True)
    shutil.rmtree(store.root / run_index.PARTS_DIR, ignore_errors=True)
    return run_index.refresh_index(store)


def _journal_files(store: LocalStore) -> list[str]:
    return sorted(p.name for p in (store.root / journal.JOURNAL_DIR).iterdir() if p.name != ".merge.lock")


def test_a_cold_index_is_read_from_the_journal(tmp_path: Path) -> None:
    """Every sealed run is in the journal: the cold index compacts nothing, and its rows and
    final values are those read from the runs' own records and metrics files."""
    store = _store(tmp_path / "results", 12)
    add_run(store, "nometrics", "agent0", {"env_id": "E0"}, 99, _values(99))
    (store.run_dir("nometrics") / "metrics.parquet").unlink()
    store.seal(store.load("nometrics"))  # sealed again without a metrics file: an entry with no tails
    index = _cold(store)
    assert index.num_rows == 13
    assert all(journal.is_journal_part(part) for part in index.column("metrics_part").to_pylist())
    assert not (store.root / run_index.PARTS_DIR).exists()  # nothing compacted from the runs' files
    for last_n in (1, 10, 100):
        finals = run_index.final_values(store, index, METRIC, last_n)
        assert finals == pytest.approx(_from_files(store, index, last_n), rel=1e-12) and len(finals) == 12
    assert run_index.metric_names(store, index) == [METRIC]
    # the same rows as an index made from the records alone (a store from before the journal)
    shutil.rmtree(store.root / journal.JOURNAL_DIR)
    from_records = _cold(store)
    assert index.drop_columns(["metrics_part"]).equals(from_records.drop_columns(["metrics_part"]))


def test_the_journal_merges_its_levels_and_keeps_every_run(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(journal, "FANOUT", 4)
    store = _store(tmp_path / "results", 21)
    levels = [name[:2] for name in _journal_files(store)]
    assert sorted(levels) == ["j0", "j1", "j2"]  # 16 runs merged twice, 4 once, the last alone
    index = _cold(store)
    assert set(index.column("metrics_part").to_pylist()) == set(_journal_files(store))
    assert run_index.final_values(store, index, METRIC, 10) == pytest.approx(_from_files(store, index, 10))
    # a warm index whose parts were merged away finds its runs in the merged files
    add_run(store, "r900", "agent0", {"env_id": "E0"}, 900, _values(900))
    index = run_index.refresh_index(store)
    assert set(index.column("metrics_part").to_pylist()) <= set(_journal_files(store))
    assert run_index.final_values(store, index, METRIC, 10) == pytest.approx(_from_files(store, index, 10))


def test_entries_made_from_a_runs_own_rows_merge_with_the_others(tmp_path: Path, monkeypatch) -> None:
    """A short run's entry is written from the rows it has just written to metrics.parquet, by the
    harness's own Parquet writer (no pyarrow); such entries and those read back from the file
    merge into the same levels and give the same index and final values."""
    monkeypatch.setattr(journal, "FANOUT", 4)
    seal = LocalStore.seal

    def seal_with_tails(self: LocalStore, record: dict, metric_tails: Any = None) -> dict:
        if record["seed"] % 2:
            metric_tails = {METRIC: _values(record["seed"])[-journal.TAIL_POINTS :].tolist()}
        return seal(self, record, metric_tails)

    monkeypatch.setattr(LocalStore, "seal", seal_with_tails)
    store = _store(tmp_path / "results", 21)
    assert sorted(name[:2] for name in _journal_files(store)) == ["j0", "j1", "j2"]
    index = _cold(store)
    assert index.num_rows == 21 and set(index.column("metrics_part").to_pylist()) == set(_journal_files(store))
    for last_n in (1, 10, 100):
        finals = run_index.final_values(store, index, METRIC, last_n)
        assert finals == pytest.approx(_from_files(store, index, last_n), rel=1e-12) and len(finals) == 21


def test_a_merge_drops_the_entries_of_runs_removed_or_saved_again(tmp_path: Path, monkeypatch) -> None:
    """Entries that can never be used again (the run folder was removed, the record was saved
    again without a new entry) are not carried into the merged file."""
    monkeypatch.setattr(journal, "FANOUT", 4)
    store = _store(tmp_path / "results", 3)
    shutil.rmtree(store.run_dir("r000"))
    record = store.load("r001")
    record["tags"] = ["edited"]
    store.save(record)
    add_run(store, "r003", "agent1", {"env_id": "E0"}, 3, _values(3))  # the fourth entry: level 0 merges
    assert [name[:2] for name in _journal_files(store)] == ["j1"]
    assert set(journal.read_journal(store.root)) == {"r002", "r003"}
    index = _cold(store)
    assert sorted(index.column("run_id").to_pylist()) == ["r001", "r002", "r003"]
    parts = dict(zip(index.column("run_id").to_pylist(), index.column("metrics_part").to_pylist()))
    assert not journal.is_journal_part(parts["r001"]) and journal.is_journal_part(parts["r002"])
    assert run_index.final_values(store, index, METRIC, 10) == pytest.approx(_from_files(store, index, 10))


def test_a_run_changed_after_its_entry_is_read_from_its_files(tmp_path: Path) -> None:
    """An entry counts only while the record and the metrics file are the ones it was made from."""
    store = _store(tmp_path / "results", 4)
    record = store.load("r000")
    record["name"] = "renamed"
    store.save(record)  # no new entry: the record no longer matches the journal's
    table = pq.read_table(store.run_dir("r001") / "metrics.parquet")
    table = table.set_column(3, "value", pa.array(np.full(table.num_rows, 7.0)))
    pq.write_table(table, store.run_dir("r001") / "metrics.parquet")  # nor the metrics file
    record = store.load("r002")
    record["name"] = "resealed"
    store.seal(record)  # a second entry, which is the one that counts
    add_run(store, "unsorted", "agent0", {"env_id": "E0"}, 5, _values(5), steps=np.arange(150, 0, -1))
    index = _cold(store)
    rows = {row["run_id"]: row for row in index.to_pylist()}
    assert rows["r000"]["name"] == "renamed" and rows["r002"]["name"] == "resealed"
    assert not journal.is_journal_part(rows["r001"]["metrics_part"])  # compacted from its file
    assert journal.is_journal_part(rows["r002"]["metrics_part"])
    assert not journal.is_journal_part(rows["unsorted"]["metrics_part"])  # not sorted: no entry
    finals = run_index.final_values(store, index, METRIC, 10)
    assert finals["r001"] == 7.0 and finals == pytest.approx(_from_files(store, index, 10), rel=1e-12)
    assert finals["unsorted"] == pytest.approx(_values(5)[:10].mean())  # the last steps come first in the file


def _seal_some(root: str, first: int, start: Any) -> None:
    start.wait(60)
    _store(Path(root), 12, first)


def test_runs_ending_at_once_in_many_processes(tmp_path: Path, monkeypatch) -> None:
    """Four processes seal runs into one store at once (a sweep with --jobs 4): every run is in
    the journal, no file is torn or left half-written, and the index reads them all from it."""
    monkeypatch.setattr(journal, "FANOUT", 4)  # merges all the time, often in several processes
    context = multiprocessing.get_context("fork")
    start = context.Barrier(4)
    root = tmp_path / "results"
    workers = [context.Process(target=_seal_some, args=(str(root), 100 * i, start)) for i in range(4)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(120)
        assert worker.exitcode == 0
    store = LocalStore(root)
    assert [name for name in os.listdir(root / journal.JOURNAL_DIR) if name.endswith(".tmp")] == []
    assert set(journal.read_journal(root)) == {f"r{100 * i + k:03d}" for i in range(4) for k in range(12)}
    index = _cold(store)
    assert index.num_rows == 48 and all(journal.is_journal_part(p) for p in index.column("metrics_part").to_pylist())
    assert run_index.final_values(store, index, METRIC, 10) == pytest.approx(_from_files(store, index, 10))


def test_journal_files_that_are_links_fifos_or_garbage_are_not_read(tmp_path: Path) -> None:
    """A journal file linked from elsewhere (holding a forged tail for a run, with stamps that
    match it), a FIFO and garbage named like journal files, and then a journal folder that is a
    link: none is followed, waited on or trusted; the runs are read from their own files."""
    store = _store(tmp_path / "results", 6)
    journal_dir = store.root / journal.JOURNAL_DIR
    real = journal.read_journal(store.root)["r003"][0]
    outside = tmp_path / "outside"
    outside.mkdir()
    forged = journal._table(
        "r003", {METRIC: np.full(100, 1e9)}, [{"row": real.row, "metrics_stamp": real.metrics_stamp}]
    )
    name = journal._write(outside, 0, journal._arrow_writer(forged))
    (journal_dir / real.part).unlink()
    (journal_dir / "j0-0000000000000000-1-linked.parquet").symlink_to(outside / name)
    os.mkfifo(journal_dir / "j0-0000000000000000-2-fifo.parquet")
    (journal_dir / "j1-0000000000000000-3-garbage.parquet").write_bytes(b"PAR1" + os.urandom(4000) + b"PAR1")
    index = _cold(store)
    assert index.num_rows == 6
    finals = run_index.final_values(store, index, METRIC, 10)
    assert finals == pytest.approx(_from_files(store, index, 10)) and max(finals.values()) < 1e9
    # more runs end: the merge drops what is not a journal file and keeps every real entry
    for seed in range(6, 6 + journal.FANOUT):
        add_run(store, f"r{seed:03d}", "agent0", {"env_id": "E0"}, seed, _values(seed))
    assert (outside / name).is_file() and not (journal_dir / "j0-0000000000000000-2-fifo.parquet").exists()
    index = _cold(store)
    finals = run_index.final_values(store, index, METRIC, 10)
    assert finals == pytest.approx(_from_files(store, index, 10)) and max(finals.values()) < 1e9
    shutil.rmtree(journal_dir)
    journal_dir.symlink_to(outside)
    index = _cold(store)
    assert not any(journal.is_journal_part(p) for p in index.column("metrics_part").to_pylist())
    assert max(run_index.final_values(store, index, METRIC, 10).values()) < 1e9
