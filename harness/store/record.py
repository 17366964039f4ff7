"""The run record: its status vocabulary and its fields, as ``docs/architecture.md`` lists them.

A record is stored as JSON (``record.json``), so in code it is a ``dict`` typed as :class:`Record`;
the keys below are all it may hold.
"""

from __future__ import annotations

import enum
from typing import Any, TypedDict

SCHEMA_VERSION = 1
# The metric analysis and verdicts fall back to when a run names no primary metric.
DEFAULT_METRIC = "charts/episodic_return"


class RunStatus(enum.StrEnum):
    """Every state a run (or a scheduler task holding one) can be in."""

    QUEUED = "queued"
    PENDING = "pending"
    REQUEUED = "requeued"
    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"
    TIMEOUT = "timeout"
    OOM = "oom"
    INTERRUPTED = "interrupted"
    CANCELLED = "cancelled"
    ERROR = "error"  # the harness itself failed while finishing the run; detail says why
    NODE_FAIL = "node_fail"
    PREEMPTED = "preempted"
    IMPORTED = "imported"  # a run another tool published (harness import): read-only, never re-published

    def __str__(self) -> str:
        return self.value

    @property
    def final(self) -> bool:
        """Whether a record with this status is sealed (nothing will change it)."""
        return self in FINAL_STATUSES

    @property
    def group(self) -> str:
        """The display group: queued, running, done or failed."""
        return GROUP_OF_STATUS[self]


# the statuses a sealed run record can hold
FINAL_STATUSES = frozenset(
    {
        RunStatus.COMPLETED,
        RunStatus.FAILED,
        RunStatus.TIMEOUT,
        RunStatus.OOM,
        RunStatus.INTERRUPTED,
        RunStatus.CANCELLED,
        RunStatus.ERROR,
        RunStatus.IMPORTED,
    }
)
# the statuses of runs that finished and whose metrics stand as results
DONE_STATUSES = frozenset({RunStatus.COMPLETED, RunStatus.IMPORTED})
QUEUED, RUNNING, DONE, FAILED = "queued", "running", "done", "failed"
GROUP_OF_STATUS: dict[RunStatus, str] = {
    RunStatus.QUEUED: QUEUED,
    RunStatus.PENDING: QUEUED,
    RunStatus.REQUEUED: QUEUED,
    RunStatus.RUNNING: RUNNING,
    RunStatus.COMPLETED: DONE,
    RunStatus.IMPORTED: DONE,
    **{
        status: FAILED
        for status in RunStatus
        if status
        not in (
            RunStatus.QUEUED,
            RunStatus.PENDING,
            RunStatus.REQUEUED,
            RunStatus.RUNNING,
            RunStatus.COMPLETED,
            RunStatus.IMPORTED,
        )
    },
}


def status_group(status: str | None) -> str:
    """The display group of a status string; an unknown one counts as failed."""
    try:
        return RunStatus(status or "").group
    except ValueError:
        return FAILED


class ImageRecord(TypedDict, total=False):
    """``record["image"]``: what ran (see :class:`harness.images.build.ImageInfo`)."""

    ref: str
    id: str
    tag: str | None
    content_hash: str | None
    cached: bool
    build_seconds: float
    packages: list[str]
    registry_ref: str | None  # host/name@sha256:… once pushed (harness push) or when pulled from one
    source: str  # build | local | registry


class Record(TypedDict, total=False):
    """One run's ``record.json``."""

    schema_version: int
    run_id: str
    config_key: str
    name: str
    description: str
    tags: list[str]
    status: str  # a RunStatus value
    exit_code: int | None
    detail: str
    started_at: str
    ended_at: str | None
    duration_s: float | None
    seed: int
    params: dict[str, Any]
    smoke: bool
    budget: dict[str, Any]  # the params the manifest's smoke changes (total_timesteps, ...), as run
    command: list[str]
    runtime: str
    hermetic: bool
    manifest_sha256: str
    lockfile_sha256: str | None
    image: ImageRecord | None
    hardware: dict[str, Any]
    expect: dict[str, Any]
    primary_metric: str | None
    summary_last_n: int
    harness_version: str
    reproduces: str | None
    reproduction_verdict: str  # identical | consistent | diverged | inconclusive
    reproduction: dict[str, Any]  # the group verdict (harness.reproduce.group_verdict), environment comparison included
    owner: dict[str, Any]  # pid and host of the harness while the run goes; removed when sealed
    host: dict[str, Any]
    pins: list[dict[str, Any]]
    docker_version: str
    sandbox: dict[str, Any]  # podman: engine, version, rootless, cgroup_version, limits_enforced
    metrics_summary: dict[str, dict[str, Any]]
    peak_memory_bytes: int
    gpu: dict[str, Any]
    environment: dict[str, Any]
    pulled_from: dict[str, Any]
    imported_from: dict[str, Any]  # harness import: format, repo, revision, endpoint, every file's hash, dropped flags
    provenance: dict[str, Any]  # the signed in-toto/SLSA statement's DSSE envelope (harness.store.provenance)
    files: dict[str, str]  # posix path -> sha256 of every file but record.json
    skipped_files: list[dict[str, str]]  # {path, reason} of what the checksums left out (links, FIFOs...)
    metrics_rejected: dict[str, int]  # skipped metric lines or values, counted by reason
    metrics_skipped: list[dict[str, str]]  # {path, reason} of metric files left unread
    # what `harness recover` must still do for a run with a final status: "seal" (a full disk left
    # its files unchecksummed), "container" (a lost engine kept its container); removed once done
    pending: list[str]
