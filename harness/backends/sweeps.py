"""Sweep state: which runs a sweep holds, where they were sent, and how far they got.

One JSON file per sweep, ``<store>/sweeps/<sweep_id>.json``, written atomically. The sweep id is
derived from the manifest name and the ids of all the runs it expands to, so re-running the same
sweep finds its earlier state and adds a submission to it.
"""

from __future__ import annotations

import hashlib
import json
import re
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from harness.errors import StoreError
from harness.store.layout import RECORD
from harness.store.local import LocalStore, read_record
from harness.util.fsutil import write_json_atomic

ATTEMPT_SUFFIX = re.compile(r"-r[0-9a-f]{8}|-[0-9]+")  # a later attempt's id: <run_id><suffix>


def utc_now() -> str:
    """The current time as ISO 8601 UTC."""
    return datetime.now(UTC).isoformat(timespec="seconds")


def sweep_id_for(name: str, run_ids: Iterable[str]) -> str:
    """A stable id for the set of runs a manifest expands to."""
    digest = hashlib.sha256("\n".join(sorted(run_ids)).encode()).hexdigest()[:12]
    return f"{name}-{digest}"


@dataclass
class Submission:
    """One hand-over of some of a sweep's runs to a backend."""

    backend: str
    run_ids: list[str]
    submitted_at: str = field(default_factory=utc_now)
    runtime: str = "auto"
    partition: str | None = None
    account: str | None = None
    slurm_job_ids: list[str] = field(default_factory=list)  # one per array chunk
    slurm_chunk_size: int = 0  # task i of chunk k runs run_ids[k * chunk_size + i]
    ray_address: str | None = None  # the Ray Jobs API the runs went to
    ray_job_ids: list[str] = field(default_factory=list)  # one Ray job per run, in run_ids' order


@dataclass
class SweepState:
    """Everything ``harness status`` and the Slurm tasks need to know about a sweep."""

    sweep_id: str
    name: str
    manifest_path: str
    manifest_sha256: str
    run_ids: list[str]
    created_at: str = field(default_factory=utc_now)
    started: float = field(default_factory=time.time)
    submissions: list[Submission] = field(default_factory=list)

    @property
    def backend(self) -> str:
        """The backend of the latest submission ("none" before any)."""
        return self.submissions[-1].backend if self.submissions else "none"

    def to_json(self) -> dict[str, Any]:
        """The state as plain JSON data."""
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> SweepState:
        """Rebuild a state from :meth:`to_json` output."""
        data = dict(data)
        data["submissions"] = [Submission(**s) for s in data.get("submissions", [])]
        return cls(**data)


def sweeps_dir(store: LocalStore) -> Path:
    """Folder holding the sweep state files (and per-sweep Slurm scripts and logs)."""
    return store.root / "sweeps"


def state_path(store: LocalStore, sweep_id: str) -> Path:
    """Path of one sweep's state file."""
    if not sweep_id or "/" in sweep_id or sweep_id.startswith("."):
        raise StoreError(f"invalid sweep id {sweep_id!r}")
    return sweeps_dir(store) / f"{sweep_id}.json"


def save_state(store: LocalStore, state: SweepState) -> Path:
    """Write a sweep's state atomically."""
    path = state_path(store, state.sweep_id)
    write_json_atomic(path, state.to_json())
    return path


def load_state(store: LocalStore, sweep_id: str) -> SweepState:
    """A sweep's state; a clear error naming the known sweeps when there is no such sweep."""
    path = state_path(store, sweep_id)
    if not path.is_file():
        matches = [s for s in list_sweep_ids(store) if s.startswith(sweep_id)]
        if len(matches) == 1:
            path = state_path(store, matches[0])
        else:
            known = ", ".join(list_sweep_ids(store)[:5]) or "none"
            raise StoreError(f"{store.root}: no sweep {sweep_id!r} (newest: {known})")
    try:
        return SweepState.from_json(json.loads(path.read_text()))
    except (OSError, ValueError, TypeError) as exc:
        raise StoreError(f"{path}: unreadable sweep state ({exc})") from exc


def list_sweep_ids(store: LocalStore) -> list[str]:
    """Ids of the sweeps in the store, most recently changed first."""
    folder = sweeps_dir(store)
    if not folder.is_dir():
        return []
    paths = sorted(folder.glob("*.json"), key=lambda p: p.stat().st_mtime, reverse=True)
    return [p.stem for p in paths]


def attempt_records(store: LocalStore, run_id: str) -> list[dict[str, Any]]:
    """Records of every attempt of a run (``<run_id>``, then ``<run_id>-r<8 hex>``; ``-2``, ``-3``...
    from older stores), oldest first."""
    records: list[dict[str, Any]] = []
    for folder in [store.run_dir(run_id), *store.runs_dir.glob(f"{run_id}-*")]:
        suffix = folder.name[len(run_id) :]
        if suffix and not ATTEMPT_SUFFIX.fullmatch(suffix):
            continue
        try:
            records.append(dict(read_record(folder / RECORD)))
        except StoreError:
            continue
    records.sort(key=lambda r: str(r.get("started_at") or ""))
    return records


def run_statuses(store: LocalStore, run_ids: Iterable[str]) -> dict[str, str | None]:
    """Each run's status over its attempts: ``completed`` if any attempt completed, else the latest
    attempt's status, or None where the store holds no attempt yet."""
    statuses: dict[str, str | None] = {}
    for run_id in run_ids:
        attempts = attempt_records(store, run_id)
        if any(r.get("status") == "completed" for r in attempts):
            statuses[run_id] = "completed"
        else:
            statuses[run_id] = attempts[-1].get("status") if attempts else None
    return statuses
