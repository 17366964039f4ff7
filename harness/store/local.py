"""The local results store: one folder per run, each with an atomically written record.json."""

from __future__ import annotations

import itertools
import os
import stat
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import cast

from harness.errors import StoreError
from harness.store.journal import note_finished
from harness.store.layout import RECORD, RunLayout
from harness.store.record import Record
from harness.util.fsutil import write_json_atomic
from harness.util.safefs import MAX_RECORD_BYTES, Skipped, UnsafeFile, checksum_files, load_json, skipped_for_record

MAX_RUNS = 1_000_000  # run folders looked at by one listing


def store_root() -> Path:
    """The store's root folder: ``$HARNESS_HOME`` or ``./results``."""
    return Path(os.environ.get("HARNESS_HOME") or "results").absolute()


def checksum_tree(folder: Path) -> dict[str, str]:
    """sha256 of every regular file under ``folder`` except record.json, keyed by posix path.

    Symlinks, special files, bad names and what lies past the walk's limits are left out
    (``checksum_report`` says which and why)."""
    return checksum_report(folder)[0]


def checksum_report(folder: Path) -> tuple[dict[str, str], list[Skipped]]:
    """``checksum_tree`` and the list of what it left out, through the one safe walker."""
    sums, skipped = checksum_files(folder)
    layout = RunLayout(folder)
    return {
        path: digest for path, digest in sums.items() if not ("/" not in path and layout.is_record_temp(path))
    }, skipped


def read_record(path: Path) -> Record:
    """A record.json read safely (regular file, size-capped); StoreError when it is not a record."""
    try:
        data = load_json(path, MAX_RECORD_BYTES)
    except UnsafeFile as exc:
        raise StoreError(f"{path}: unreadable run record ({exc.reason})") from None
    except (OSError, ValueError) as exc:
        raise StoreError(f"{path}: unreadable run record ({type(exc).__name__})") from None
    if not isinstance(data, dict):
        raise StoreError(f"{path}: unreadable run record (not a JSON object)")
    return cast(Record, data)


class LocalStore:
    """A results store on a local (or shared) file system."""

    def __init__(self, root: Path | None = None):
        self.root = Path(root) if root else store_root()
        self.runs_dir = self.root / "runs"

    def run_dir(self, run_id: str) -> Path:
        """Folder of one run (it may not exist yet)."""
        if not run_id or "/" in run_id or run_id.startswith("."):
            raise StoreError(f"invalid run id {run_id!r}")
        return self.runs_dir / run_id

    def layout(self, run_id: str) -> RunLayout:
        """The file names of one run's folder."""
        return RunLayout(self.run_dir(run_id))

    def exists(self, run_id: str) -> bool:
        """Whether the store holds a record for ``run_id``."""
        try:
            return stat.S_ISREG(os.lstat(self.run_dir(run_id) / RECORD).st_mode)
        except OSError:
            return False

    def load(self, run_id: str) -> Record:
        """The record of one run; a clear error when there is none."""
        path = self.run_dir(run_id) / RECORD
        if not os.path.lexists(path):
            known = ", ".join(str(r.get("run_id")) for r in list(self.records())[:5]) or "none"
            raise StoreError(f"{self.root}: no run {run_id!r} (newest: {known}); see `harness ls`")
        record = read_record(path)
        if record.get("run_id") != run_id:
            raise StoreError(f"{path}: the record names run {str(record.get('run_id'))[:80]!r}, not {run_id!r}")
        return record

    def save(self, record: Record) -> Path:
        """Write ``record`` as its run's record.json, atomically."""
        path = self.run_dir(record["run_id"]) / RECORD
        write_json_atomic(path, record)
        return path

    def seal(self, record: Record, metric_tails: Mapping[str, Sequence[float]] | None = None) -> Record:
        """Checksum every file of the run folder into ``record['files']`` and save it.

        ``metric_tails``: the journal's tails of the metrics just written (see ``note_finished``)."""
        record["files"], skipped = checksum_report(self.run_dir(record["run_id"]))
        record["skipped_files"] = skipped_for_record(skipped)
        self.save(record)
        self.note_finished(record["run_id"], metric_tails)
        return record

    def note_finished(self, run_id: str, metric_tails: Mapping[str, Sequence[float]] | None = None) -> None:
        """Add a sealed run to the store's journal, which a cold run index reads instead of its
        files (best effort: see ``harness.store.journal``)."""
        note_finished(self.root, run_id, metric_tails)

    def mark(self, run_id: str, status: str, detail: str) -> Record:
        """Correct a sealed record's final status (its files are unchanged, so the checksums stand)."""
        record = self.load(run_id)
        record["status"] = str(status)
        record["detail"] = detail
        self.save(record)
        self.note_finished(run_id)
        return record

    def records(self) -> Iterator[Record]:
        """Every readable run record, newest first.

        Records are read safely (no link followed, FIFOs and huge files skipped); a record whose
        ``run_id`` is not its folder's name is left out."""
        if not self.runs_dir.is_dir():
            return iter(())
        found = []
        try:
            with os.scandir(self.runs_dir) as entries:
                names = [e.name for e in itertools.islice(entries, MAX_RUNS) if not e.name.startswith(".")]
        except OSError:
            return iter(())
        for name in names:
            try:
                record = read_record(self.runs_dir / name / RECORD)
            except StoreError:
                continue
            if record.get("run_id") != name:
                continue
            found.append(record)
        found.sort(key=lambda r: str(r.get("started_at") or ""), reverse=True)
        return iter(found)

    def find_by_config(self, config_key: str) -> list[Record]:
        """Records of earlier attempts of the same (manifest, params, seed)."""
        return [r for r in self.records() if r.get("config_key") == config_key]

    def verify(self, run_id: str) -> list[str]:
        """Problems found when checking a run's files against its record (empty: all good)."""
        record = self.load(run_id)
        folder = self.run_dir(run_id)
        expected = record.get("files") or {}
        if not isinstance(expected, dict):
            return ["record.json: files is not a mapping"]
        actual = checksum_tree(folder)
        problems = [f"missing {p}" for p in sorted(set(expected) - set(actual))]
        problems += [f"extra {p}" for p in sorted(set(actual) - set(expected))]
        problems += [f"checksum mismatch {p}" for p in sorted(set(expected) & set(actual)) if expected[p] != actual[p]]
        return problems
