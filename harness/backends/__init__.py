"""Where many runs are scheduled: a small common interface in submitit's style.

A :class:`Backend` takes run specs and returns one :class:`Job` per run; a job answers
``status()`` and ``result()`` (the run's sealed record). Every backend runs each run through the
same single-run function, :func:`harness.run.runner.execute`. :func:`run_sweep` is what
``harness run`` calls: it decides which runs still need running, records the sweep's state and
hands the runs to the chosen backend.

May import: run, images, runtime, capture, analysis, store, manifest, lockfile, util, errors.
"""

from __future__ import annotations

import abc
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from harness.backends.sweeps import (
    SweepState,
    attempt_records,
    load_state,
    run_statuses,
    state_path,
    sweep_id_for,
)
from harness.errors import HarnessError
from harness.store.local import LocalStore
from harness.store.record import DONE, FAILED, RUNNING, status_group

if TYPE_CHECKING:
    from harness.run.plan import RunSpec

CONFIRM_ABOVE = 10_000
Echo = Callable[[str], None]


class Job(abc.ABC):
    """One run handed to a backend."""

    run_id: str

    @abc.abstractmethod
    def status(self) -> str:
        """The run's state: queued, running, completed, failed, timeout, oom, interrupted,
        cancelled, node_fail or preempted."""

    @abc.abstractmethod
    def result(self, timeout: float | None = None) -> dict[str, Any]:
        """Wait for the run to end and return its record."""

    def done(self) -> bool:
        """Whether the run has ended, one way or another."""
        return status_group(self.status()) in (DONE, FAILED)


@dataclass
class BackendOptions:
    """What ``harness run`` hands to whichever backend it picks."""

    jobs: int | None = None
    partition: str | None = None
    account: str | None = None
    runtime: str = "auto"
    echo: Echo = print
    address: str | None = None  # Ray: the cluster's Jobs API


class Backend(abc.ABC):
    """Schedules runs somewhere: this machine, a Slurm cluster, ...

    A backend is one module under ``harness.backends`` with one class; :data:`BACKENDS` names it."""

    name: str

    @classmethod
    @abc.abstractmethod
    def create(cls, store: LocalStore, options: BackendOptions) -> Backend:
        """A backend for ``options``; HarnessError for options it cannot honour."""

    @abc.abstractmethod
    def submit(self, specs: list[RunSpec], sweep: SweepState) -> list[Job]:
        """Start (or queue) every spec; one job per spec, in the same order."""

    def wait(self, jobs: list[Job]) -> list[dict[str, Any]]:
        """Wait for every job; their records, in order."""
        return [job.result() for job in jobs]

    def interrupt(self, reason: str = "interrupted") -> None:  # noqa: ARG002 — the interface; a backend that started jobs uses it
        """Ctrl-C (``interrupted``) or SIGTERM (``cancelled``) while :func:`run_sweep` submits or
        waits: stop what this process started and is waiting on (by default, nothing: the jobs run on)."""
        return None

    def collect(self, jobs: list[Job], sweep: SweepState, outcome: SweepOutcome) -> None:  # noqa: ARG002 — the interface's signature; a subclass may use the sweep
        """What :func:`run_sweep` does once the jobs are submitted: by default, wait for them."""
        outcome.records = self.wait(jobs)

    @classmethod
    def run_states(cls, sweep: SweepState, store: LocalStore) -> dict[str, str]:
        """Each run of a sweep sent to this backend, with its state (by default: from the store)."""
        return {run_id: status or "queued" for run_id, status in run_statuses(store, sweep.run_ids).items()}


# backend name -> (module under harness.backends, class); imported only when used
BACKENDS: dict[str, tuple[str, str]] = {
    "local": ("local", "LocalBackend"),
    "slurm": ("slurm", "SlurmBackend"),
    "ray": ("ray", "RayBackend"),
}


def backend_class(name: str) -> type[Backend]:
    """The class of backend ``name``; HarnessError for an unknown one."""
    import importlib

    if name not in BACKENDS:
        raise HarnessError(f"unknown backend {name!r}: choose one of {', '.join(BACKENDS)}")
    module, attribute = BACKENDS[name]
    cls: type[Backend] = getattr(importlib.import_module(f"harness.backends.{module}"), attribute)
    return cls


@dataclass
class SweepPlan:
    """What a sweep holds and which of its runs will run now."""

    sweep_id: str
    specs: list[RunSpec]
    to_run: list[RunSpec]
    completed: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)  # skipped: ended badly, no --retry-failed
    running: list[str] = field(default_factory=list)  # skipped: a record says it is running

    def summary(self) -> str:
        """One line: how many run now and why the others do not."""
        parts = [f"{len(self.to_run)} of {len(self.specs)} runs to run"]
        if self.completed:
            parts.append(f"{len(self.completed)} already completed")
        if self.failed:
            parts.append(f"{len(self.failed)} failed earlier (--retry-failed re-runs them)")
        if self.running:
            parts.append(f"{len(self.running)} still running (or stale: see `harness recover`)")
        return f"sweep {self.sweep_id}: " + ", ".join(parts)


@dataclass
class SweepOutcome:
    """What :func:`run_sweep` did."""

    plan: SweepPlan
    backend: str
    dry_run: bool
    records: list[dict[str, Any]] = field(default_factory=list)  # local backend: every run's record
    slurm_job_ids: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """Whether every run that ran completed."""
        return all(r.get("status") == "completed" for r in self.records)

    @property
    def exit_code(self) -> int:
        """0 when every run that ran here completed (or was only listed or submitted), else 1."""
        return 0 if self.ok else 1


def plan_sweep(specs: list[RunSpec], store: LocalStore, retry_failed: bool = False, rerun: bool = False) -> SweepPlan:
    """Split a sweep's runs into those to run now and those the store already holds
    (``rerun`` runs completed ones again; ``retry_failed`` runs the ones that ended badly)."""
    if not specs:
        raise HarnessError("the manifest expands to no runs")
    run_ids = [spec.run_id for spec in specs]
    if len(set(run_ids)) != len(run_ids):
        raise HarnessError("the sweep holds the same (params, seed) twice: make each sweep entry distinct")
    plan = SweepPlan(sweep_id=sweep_id_for(specs[0].name, run_ids), specs=specs, to_run=[])
    statuses = run_statuses(store, run_ids)
    for spec in specs:
        status = statuses[spec.run_id]
        if status is None or (rerun and status == "completed"):
            plan.to_run.append(spec)
        elif status == "completed":
            plan.completed.append(spec.run_id)
        elif status == "running":
            plan.running.append(spec.run_id)
        elif retry_failed:
            plan.to_run.append(spec)
        else:
            plan.failed.append(spec.run_id)
    return plan


def sweep_state_for(plan: SweepPlan, store: LocalStore) -> SweepState:
    """The sweep's state file contents: the existing one, or a new one."""
    if state_path(store, plan.sweep_id).is_file():
        return load_state(store, plan.sweep_id)
    loaded = plan.specs[0].loaded
    return SweepState(
        sweep_id=plan.sweep_id,
        name=plan.specs[0].name,
        manifest_path=str(loaded.path.resolve()),
        manifest_sha256=loaded.sha256,
        run_ids=[spec.run_id for spec in plan.specs],
    )


def run_sweep(  # noqa: PLR0913 — the sweep's options, each a `harness run` option passed through
    specs: list[RunSpec],
    backend: str = "local",
    jobs: int | None = None,
    partition: str | None = None,
    account: str | None = None,
    retry_failed: bool = False,
    dry_run: bool = False,
    yes: bool = False,
    runtime: str = "auto",
    store: LocalStore | None = None,
    echo: Echo = print,
    rerun: bool = False,
    address: str | None = None,
) -> SweepOutcome:
    """Run a sweep's missing runs on ``backend`` ("local" and "ray" wait for them; "slurm" submits and returns).

    ``runtime`` is "docker", "process" or "auto" (docker where the machine has an engine). On
    Slurm, "process" and "podman" are used on every node; anything else means docker on nodes with an
    engine and process on the others.
    ``rerun`` runs completed runs again (each as a new attempt). ``address``: the Ray cluster's Jobs API.
    Raises HarnessError for bad input: an unknown backend, a sweep over 10,000 runs without
    ``yes``, an unreachable Slurm, a missing partition, a store the Slurm nodes cannot see.
    """
    if backend not in BACKENDS:
        raise HarnessError(f"unknown backend {backend!r}: choose one of {', '.join(BACKENDS)}")
    if jobs is not None and jobs < 1:
        raise HarnessError(f"--jobs {jobs}: give at least 1")
    if runtime not in ("auto", "docker", "podman", "process"):
        raise HarnessError(f"unknown runtime {runtime!r}: choose docker, podman, process or auto")
    if len(specs) > CONFIRM_ABOVE and not yes:
        raise HarnessError(
            f"the sweep expands to {len(specs):,} runs (more than {CONFIRM_ABOVE:,}): add --yes to run them all"
        )
    store = store or LocalStore()
    plan = plan_sweep(specs, store, retry_failed, rerun)
    echo(plan.summary())
    outcome = SweepOutcome(plan=plan, backend=backend, dry_run=dry_run)
    chosen = backend_class(backend).create(store, BackendOptions(jobs, partition, account, runtime, echo, address))
    if dry_run:
        for spec in plan.to_run:
            swept = {k: spec.params[k] for k in spec.loaded.view.sweep_keys()}
            echo(f"would run {spec.run_id}  seed={spec.seed}  {_format_params(swept)}".rstrip())
        return outcome
    if not plan.to_run:
        return outcome
    state = sweep_state_for(plan, store)
    from harness.runtime import signals

    previous_handlers = signals.install()  # SIGTERM and SIGHUP stop the sweep like Ctrl-C
    try:
        chosen.collect(chosen.submit(plan.to_run, state), state, outcome)
    except KeyboardInterrupt as exc:
        # here, not in the backend's wait: a signal that lands while the runs are being submitted counts too
        chosen.interrupt(signals.stop_reason(exc))
        raise
    finally:
        signals.restore(previous_handlers)
    return outcome


def _format_params(params: dict[str, Any]) -> str:
    return "  ".join(f"{k}={v}" for k, v in params.items())


def run_states(sweep: SweepState, store: LocalStore) -> dict[str, str]:
    """Each run of a sweep with its state (from the store, and from Slurm for Slurm sweeps)."""
    if sweep.backend not in BACKENDS:  # "none": nothing submitted yet
        return Backend.run_states(sweep, store)
    return backend_class(sweep.backend).run_states(sweep, store)


def sweep_progress(sweep: SweepState, store: LocalStore) -> dict[str, Any]:
    """Counts of queued / running / done / failed runs, elapsed time and an ETA, as JSON data."""
    import time
    from datetime import datetime

    states = run_states(sweep, store)
    counts = dict.fromkeys(("queued", "running", "done", "failed"), 0)
    for state in states.values():
        counts[status_group(state)] += 1
    latest = sweep.submissions[-1] if sweep.submissions else None
    elapsed = eta = None
    if latest is not None:
        started = datetime.fromisoformat(latest.submitted_at).timestamp()
        elapsed = max(0.0, time.time() - started)
        in_latest = [states[r] for r in latest.run_ids if r in states]
        ended = sum(status_group(s) in (DONE, FAILED) for s in in_latest)
        remaining = len(in_latest) - ended
        if remaining == 0:
            eta = 0.0
            ended_at = [r.get("ended_at") for run_id in latest.run_ids for r in attempt_records(store, run_id)]
            ends = [datetime.fromisoformat(e).timestamp() for e in ended_at if e]
            if ends:
                elapsed = max(0.0, max(ends) - started)
        elif ended:
            eta = elapsed / ended * remaining
        if sweep.backend == "local" and remaining:
            eta = _running_eta(store, [r for r in latest.run_ids if status_group(states.get(r, "")) == RUNNING], eta)
    return {
        "sweep_id": sweep.sweep_id,
        "name": sweep.name,
        "backend": sweep.backend,
        "total": len(states),
        **counts,
        "elapsed_s": None if elapsed is None else round(elapsed, 1),
        "eta_s": None if eta is None else round(eta, 1),
        "finished": counts["queued"] == 0 and counts["running"] == 0,
        "slurm_job_ids": [j for s in sweep.submissions for j in s.slurm_job_ids],
        "ray_job_ids": [j for s in sweep.submissions for j in s.ray_job_ids],
        "runs": [{"run_id": run_id, "state": state} for run_id, state in states.items()],
    }


def _running_eta(store: LocalStore, running: list[str], eta: float | None) -> float | None:
    """The sweep's ETA once its running local runs say how far they are (their metric files, as
    the run's own progress line reads them): the latest of their ends when they run side by side,
    and never sooner than ``eta`` (the pace of the runs that ended)."""
    from harness.run.progress import eta_from_start, record_progress

    ends = []
    for run_id in running:
        try:
            ends.append(eta_from_start(record_progress(store.layout(run_id), store.load(run_id)).poll()))
        except Exception:  # noqa: BLE001 — a run's unreadable metrics leave its ETA unknown, never fail status
            ends.append(None)
    if not ends or None in ends:
        return eta
    latest = max(e for e in ends if e is not None)
    return latest if eta is None else max(eta, latest)
