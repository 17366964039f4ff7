"""Run a sweep on this machine: as many runs at once as the host's CPUs, memory and GPUs allow.

Runs execute in worker threads, each through :func:`harness.run.runner.execute` (the containers and
processes do the work; the threads only wait on them). A failing run does not stop the others.
Ctrl-C (or SIGTERM) cancels the runs that have not started, stops the running ones and marks their
records ``interrupted`` (``cancelled``), from the moment the first run starts: :func:`run_sweep` calls
:meth:`LocalBackend.interrupt` whichever line the signal lands on.
"""

from __future__ import annotations

import math
import os
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor, as_completed
from typing import TYPE_CHECKING, Any

from harness.backends import Backend, BackendOptions, Echo, Job
from harness.backends.sweeps import Submission, SweepState, save_state
from harness.errors import HarnessError
from harness.runtime.engine import resolve_runtime
from harness.store.local import LocalStore
from harness.store.record import RunStatus

if TYPE_CHECKING:
    from harness.loaded_manifest import HardwareView
    from harness.manifest import Hardware
    from harness.run.plan import RunSpec

Execute = Callable[..., Any]
MEMORY_HEADROOM = 0.9  # leave a tenth of the host's memory to the harness, the engine and the system


def host_resources() -> dict[str, float]:
    """CPUs (this process may use), memory bytes and GPUs (seen by NVML) of this host."""
    import psutil

    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    from harness.capture.gpu import host_gpu_count

    return {"cpus": cpus, "memory_bytes": psutil.virtual_memory().total, "gpus": host_gpu_count()}


def parallel_slots(
    hardware: Hardware | HardwareView, jobs: int | None = None, host: dict[str, float] | None = None
) -> int:
    """How many runs of this hardware target fit on the host at once, capped by ``jobs``."""
    host = host or host_resources()
    limits = {
        "cpus": math.floor(host["cpus"] / float(hardware.cpus) + 1e-9),
        "memory": math.floor(host["memory_bytes"] * MEMORY_HEADROOM / hardware.memory_bytes),
    }
    if hardware.gpus > 0:
        limits["gpus"] = int(host["gpus"]) // hardware.gpus
    short = [name for name, count in limits.items() if count < 1]
    if short:
        wanted = {
            "cpus": f"{hardware.cpus} cpus",
            "memory": f"{hardware.memory} memory",
            "gpus": f"{hardware.gpus} gpus",
        }
        has = {
            "cpus": f"{host['cpus']:g} cpus",
            "memory": f"{host['memory_bytes'] / 2**30:.1f} GiB memory",
            "gpus": f"{int(host['gpus'])} gpus",
        }
        raise HarnessError(
            f"one run needs {', '.join(wanted[n] for n in short)} but this host has "
            f"{', '.join(has[n] for n in short)}: lower the manifest's hardware target or use --backend slurm"
        )
    slots = min(limits.values())
    return min(slots, jobs) if jobs else slots


class LocalJob(Job):
    """A run in the local pool."""

    def __init__(self, spec: RunSpec, future: Future[dict[str, Any]], backend: LocalBackend):
        self.spec = spec
        self.run_id = spec.run_id
        self.future = future
        self.backend = backend

    def status(self) -> str:
        if self.future.cancelled():
            return "cancelled"
        if self.future.done():
            return str(self.future.result().get("status", "failed"))
        return "running" if self.run_id in self.backend.started else "queued"

    def result(self, timeout: float | None = None) -> dict[str, Any]:
        if self.future.cancelled():
            return {
                "run_id": self.run_id,
                "config_key": self.spec.config_key,
                "status": "cancelled",
                "detail": "not started: the sweep was interrupted",
            }
        return self.future.result(timeout)


class LocalBackend(Backend):
    """Bounded parallelism on this machine."""

    name = "local"

    def __init__(
        self,
        store: LocalStore,
        jobs: int | None = None,
        runtime: str = "auto",
        echo: Echo = print,
        execute: Execute | None = None,
    ):
        self.store = store
        self.jobs = jobs
        self.runtime = runtime
        self.echo = echo
        self._execute = execute
        self.started: dict[str, str] = {}  # spec run id -> the run id execute gave it
        self.stopping = threading.Event()
        self._reason = "interrupted"
        self._handles: dict[str, Any] = {}
        self._progress: dict[str, Any] = {}  # spec run id -> harness.run.progress.RunProgress while it runs
        self._lock = threading.Lock()
        self._pool: ThreadPoolExecutor | None = None

    @classmethod
    def create(cls, store: LocalStore, options: BackendOptions) -> LocalBackend:
        """Local runs take no Slurm options."""
        if options.partition or options.account:
            raise HarnessError("--partition and --account are for --backend slurm")
        return cls(store, jobs=options.jobs, runtime=options.runtime, echo=options.echo)

    def submit(self, specs: list[RunSpec], sweep: SweepState) -> list[Job]:
        """Start the pool; runs begin at once, as many at a time as fit."""
        slots = parallel_slots(specs[0].loaded.view.hardware, self.jobs)
        self.runtime = resolve_runtime(self.runtime)
        if self.runtime in ("docker", "podman") and self._execute is None:
            from harness.images.prepare import prepare_image

            prepare_image(
                specs[0].loaded, log=self.echo, runtime=self.runtime
            )  # once, before the pool: every run shares the image
        sweep.submissions.append(Submission(backend=self.name, run_ids=[s.run_id for s in specs], runtime=self.runtime))
        save_state(self.store, sweep)
        self.echo(f"running {len(specs)} runs locally, {slots} at a time ({self.runtime} runtime)")
        self._pool = ThreadPoolExecutor(max_workers=slots, thread_name_prefix="harness-run")
        return [LocalJob(spec, self._pool.submit(self._run_one, spec), self) for spec in specs]

    def wait(self, jobs: list[Job]) -> list[dict[str, Any]]:
        """Wait for every run, reporting each as it ends (Ctrl-C goes up to run_sweep, which calls interrupt)."""
        local_jobs = [job for job in jobs if isinstance(job, LocalJob)]
        by_future = {job.future: job for job in local_jobs}
        finished = 0
        all_done = threading.Event()
        reporter = threading.Thread(
            target=self._report_progress, args=(all_done,), name="harness-progress", daemon=True
        )
        try:
            reporter.start()
            for future in as_completed(by_future):
                finished += 1
                record = by_future[future].result()
                duration = record.get("duration_s")
                took = f" in {duration:.1f}s" if isinstance(duration, (int, float)) else ""
                detail = (
                    f" ({record['detail']})" if record.get("status") != "completed" and record.get("detail") else ""
                )
                self.echo(f"[{finished}/{len(local_jobs)}] {record.get('run_id')} {record.get('status')}{took}{detail}")
        finally:
            all_done.set()  # Ctrl-C propagates to run_sweep, which calls interrupt()
        if self._pool is not None:
            self._pool.shutdown(wait=True)
        return [job.result() for job in local_jobs]

    def _report_progress(self, done: threading.Event) -> None:
        """One plain progress line per running run every few seconds (harness.run.progress), until ``done``."""
        from harness.run.progress import plain_interval

        interval = plain_interval()
        while not done.wait(interval):
            with self._lock:
                running = list(self._progress.values())
            for progress in running:
                try:
                    self.echo(f"[progress] {progress.poll().line()}")
                except Exception:  # noqa: BLE001 — a progress line is a courtesy; the capture owns the data
                    continue

    def interrupt(self, reason: str = "interrupted") -> None:
        """Cancel runs not yet started, stop the running ones and wait until their records are sealed
        (``reason``: ``interrupted`` for Ctrl-C, ``cancelled`` for SIGTERM)."""
        if self._pool is None:
            return
        self.echo(f"{reason}: stopping the running runs")
        self._reason = reason
        self.stopping.set()  # a run still being set up stops itself in on_start
        self._pool.shutdown(wait=False, cancel_futures=True)
        with self._lock:
            running = dict(self.started)
            handles = dict(self._handles)
        for spec_run_id, run_id in running.items():
            handle = handles.get(spec_run_id)
            if handle is not None and hasattr(handle, "stop"):
                handle.stop(reason)  # sticks: a job stopped before it started never runs
            else:
                stop_run(run_id, self.runtime)
        while True:
            try:
                self._pool.shutdown(wait=True)
                return
            except KeyboardInterrupt:  # a second Ctrl-C: the records are being sealed, keep waiting
                continue

    def _run_one(self, spec: RunSpec) -> dict[str, Any]:
        if self.stopping.is_set():
            return {
                "run_id": spec.run_id,
                "config_key": spec.config_key,
                "status": "cancelled",
                "detail": "not started: the sweep was interrupted",
            }
        from harness.run.runner import execute as run_one

        execute: Execute = self._execute or run_one

        def on_start(record: dict[str, Any], job: Any = None) -> None:
            progress = _run_progress(spec, self.store, record["run_id"])
            with self._lock:
                self.started[spec.run_id] = record["run_id"]
                if progress is not None:
                    self._progress[spec.run_id] = progress
                if job is not None:
                    self._handles[spec.run_id] = job
            if self.stopping.is_set() and job is not None:
                job.stop(self._reason)  # Ctrl-C came while this run was being set up: it never runs

        try:
            record = execute(spec, self.store, runtime=self.runtime, on_start=on_start)
        except HarnessError as exc:
            return {"run_id": spec.run_id, "config_key": spec.config_key, "status": "failed", "detail": str(exc)}
        except Exception as exc:  # noqa: BLE001 — one run's unexpected fault is that run's failure, never the sweep's
            return {
                "run_id": spec.run_id,
                "config_key": spec.config_key,
                "status": "failed",
                "detail": f"{type(exc).__name__}: {exc}",
            }
        finally:
            with self._lock:
                self.started.pop(spec.run_id, None)
                self._handles.pop(spec.run_id, None)
                self._progress.pop(spec.run_id, None)
        if self.stopping.is_set() and record.get("status") not in ("completed", "interrupted", "cancelled"):
            # Stopped from outside the runner (no job handle): say why, not just "exit 137".
            why = "Ctrl-C" if self._reason == RunStatus.INTERRUPTED else "SIGTERM"
            record = self.store.mark(record["run_id"], RunStatus(self._reason), f"stopped by {why} on the sweep")
        return record


def stop_run(run_id: str, runtime: str) -> None:
    """Stop a run started by this process: kill its container, or its process group."""
    if runtime == "podman":
        import json

        from harness.runtime.docker import RUN_LABEL
        from harness.runtime.podman import podman_api

        try:
            api = podman_api()
            for found in api.call(
                "GET", "/containers/json", query={"filters": json.dumps({"label": [f"{RUN_LABEL}={run_id}"]})}
            ):
                api.call("POST", f"/containers/{found['Id']}/kill")
        except (HarnessError, OSError):
            pass
        return
    if runtime == "docker":
        from harness.runtime.docker import RUN_LABEL
        from harness.runtime.engine import docker_client

        try:
            client = docker_client(timeout=30)
            for container in client.containers.list(filters={"label": f"{RUN_LABEL}={run_id}"}):
                container.kill()
        except Exception:  # noqa: BLE001 — killing a cancelled run's container is best effort; the record says cancelled either way
            pass
        return
    import signal

    import psutil

    for child in psutil.Process().children(recursive=True):
        try:
            if child.environ().get("HARNESS_RUN_ID") == run_id:
                os.killpg(child.pid, signal.SIGKILL)
        except (psutil.Error, ProcessLookupError, PermissionError):
            continue


def _run_progress(spec: RunSpec, store: LocalStore, run_id: str) -> Any:
    """A follower of one run's metric files for the sweep's progress lines (None if it cannot be made)."""
    try:
        from harness.run.progress import RunProgress, total_steps

        metrics = spec.loaded.view.metrics
        return RunProgress(run_id, store.layout(run_id), metrics.primary, metrics.tensorboard, total_steps(spec.params))
    except Exception:  # noqa: BLE001 — progress must never fail a run
        return None
