"""The local results store: one folder per run, each with an atomically written record.json."""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Iterator

from harness.errors import StoreError

RECORD_NAME = "record.json"
SCHEMA_VERSION = 1
FINAL_STATUSES = {"completed", "failed", "timeout", "oom", "interrupted", "cancelled"}


def store_root() -> Path:
    """The store's root folder: ``$HARNESS_HOME`` or ``./results``."""
    return Path(os.environ.get("HARNESS_HOME") or "results").absolute()


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file's bytes, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def write_json_atomic(path: Path, data: Any) -> None:
    """Write JSON so that a reader sees the old file or the new one, never half of one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as handle:
            json.dump(data, handle, indent=2, sort_keys=True, default=str)
            handle.write("\n")
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def checksum_tree(folder: Path) -> dict[str, str]:
    """sha256 of every regular file under ``folder`` except record.json, keyed by posix path."""
    sums: dict[str, str] = {}
    for path in sorted(folder.rglob("*")):
        if path.is_symlink() or not path.is_file():
            continue
        relative = path.relative_to(folder).as_posix()
        if relative == RECORD_NAME or path.name.startswith(f".{RECORD_NAME}."):
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

    def exists(self, run_id: str) -> bool:
        """Whether the store holds a record for ``run_id``."""
        return (self.run_dir(run_id) / RECORD_NAME).is_file()

    def load(self, run_id: str) -> dict[str, Any]:
        """The record of one run; a clear error when there is none."""
        path = self.run_dir(run_id) / RECORD_NAME
        if not path.is_file():
            known = ", ".join(r["run_id"] for r in list(self.records())[:5]) or "none"
            raise StoreError(f"{self.root}: no run {run_id!r} (newest: {known}); see `harness ls`")
        try:
            return json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            raise StoreError(f"{path}: unreadable run record ({exc})") from exc

    def save(self, record: dict[str, Any]) -> Path:
        """Write ``record`` as its run's record.json, atomically."""
        path = self.run_dir(record["run_id"]) / RECORD_NAME
        write_json_atomic(path, record)
        return path

    def seal(self, record: dict[str, Any]) -> dict[str, Any]:
        """Checksum every file of the run folder into ``record['files']`` and save it."""
        record["files"] = checksum_tree(self.run_dir(record["run_id"]))
        self.save(record)
        return record

    def records(self) -> Iterator[dict[str, Any]]:
        """Every readable run record, newest first."""
        if not self.runs_dir.is_dir():
            return iter(())
        found = []
        for path in self.runs_dir.glob(f"*/{RECORD_NAME}"):
            try:
                found.append(json.loads(path.read_text()))
            except (OSError, ValueError):
                continue
        found.sort(key=lambda r: r.get("started_at") or "", reverse=True)
        return iter(found)

    def find_by_config(self, config_key: str) -> list[dict[str, Any]]:
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
