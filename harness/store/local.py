"""The local results store: one folder per run, each with an atomically written record.json."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

from harness.errors import StoreError
from harness.fsutil import sha256_file, write_json_atomic
from harness.layout import RECORD, RunLayout
from harness.record import Record


def store_root() -> Path:
    """The store's root folder: ``$HARNESS_HOME`` or ``./results``."""
    return Path(os.environ.get("HARNESS_HOME") or "results").absolute()


def checksum_tree(folder: Path) -> dict[str, str]:
    """sha256 of every regular file under ``folder`` except record.json, keyed by posix path."""
    sums: dict[str, str] = {}
    for path in sorted(folder.rglob("*")):
        if path.is_symlink() or not path.is_file():
            continue
        relative = path.relative_to(folder).as_posix()
        if relative == RECORD or (path.parent == folder and RunLayout(folder).is_record_temp(path.name)):
            continue
        sums[relative] = sha256_file(path)
    return sums


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
        return (self.run_dir(run_id) / RECORD).is_file()

    def load(self, run_id: str) -> Record:
        """The record of one run; a clear error when there is none."""
        path = self.run_dir(run_id) / RECORD
        if not path.is_file():
            known = ", ".join(r["run_id"] for r in list(self.records())[:5]) or "none"
            raise StoreError(f"{self.root}: no run {run_id!r} (newest: {known}); see `harness ls`")
        try:
            return json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            raise StoreError(f"{path}: unreadable run record ({exc})") from exc

    def save(self, record: Record) -> Path:
        """Write ``record`` as its run's record.json, atomically."""
        path = self.run_dir(record["run_id"]) / RECORD
        write_json_atomic(path, record)
        return path

    def seal(self, record: Record) -> Record:
        """Checksum every file of the run folder into ``record['files']`` and save it."""
        record["files"] = checksum_tree(self.run_dir(record["run_id"]))
        self.save(record)
        return record

    def mark(self, run_id: str, status: str, detail: str) -> Record:
        """Correct a sealed record's final status (its files are unchanged, so the checksums stand)."""
        record = self.load(run_id)
        record["status"] = str(status)
        record["detail"] = detail
        self.save(record)
        return record

    def records(self) -> Iterator[Record]:
        """Every readable run record, newest first."""
        if not self.runs_dir.is_dir():
            return iter(())
        found = []
        for path in self.runs_dir.glob(f"*/{RECORD}"):
            try:
                found.append(json.loads(path.read_text()))
            except (OSError, ValueError):
                continue
        found.sort(key=lambda r: r.get("started_at") or "", reverse=True)
        return iter(found)

    def find_by_config(self, config_key: str) -> list[Record]:
        """Records of earlier attempts of the same (manifest, params, seed)."""
        return [r for r in self.records() if r.get("config_key") == config_key]

    def verify(self, run_id: str) -> list[str]:
        """Problems found when checking a run's files against its record (empty: all good)."""
        record = self.load(run_id)
        folder = self.run_dir(run_id)
        expected = record.get("files") or {}
        actual = checksum_tree(folder)
        problems = [f"missing {p}" for p in sorted(set(expected) - set(actual))]
        problems += [f"extra {p}" for p in sorted(set(actual) - set(expected))]
        problems += [
            f"checksum mismatch {p}" for p in sorted(set(expected) & set(actual)) if expected[p] != actual[p]
        ]
        return problems
