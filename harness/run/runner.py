"""One run's lifecycle: make its folder and record, start the job, end it (normally, on a signal,
on a timeout), finish the capture and seal the record. Every caller (the CLI, the sweep backends,
reproduce) goes through :func:`execute`; :func:`recover` seals runs whose harness died.

What happens around the lifecycle lives where its name says: the image in ``harness.images.build``,
the engine client in ``harness.runtime.engine``, the job itself in ``harness.runtime``, metrics and
system sampling in ``harness.capture.session``, the environment and GPUs in ``harness.capture``.
"""

from __future__ import annotations

import datetime as dt
import errno
import json
import os
import secrets
import shutil
import socket
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import harness
from harness.capture.gpu import check_gpus
from harness.errors import EngineError, HarnessError
from harness.images.build import ImageInfo, context_files
from harness.images.prepare import prepare_image
from harness.run.owner import orphaned
from harness.run.plan import RunSpec
from harness.runtime import signals
from harness.runtime.engine_api import engine_api
from harness.runtime.job import JobRequest, JobResult
from harness.runtime.signals import stop_reason
from harness.store.layout import RunLayout
from harness.store.local import LocalStore
from harness.store.record import SCHEMA_VERSION, Record, RunStatus
from harness.util.fsutil import sha256_file

CONTAINER_RUNTIMES = ("docker", "podman")
RUNTIMES = (*CONTAINER_RUNTIMES, "process")

# Space held from the start of a run so that its final record can be written even when the
# workload fills the disk.
RESERVE_BYTES = 512 * 1024


def now_iso() -> str:
    """The current time, ISO 8601 UTC with milliseconds."""
    return dt.datetime.now(dt.UTC).isoformat(timespec="milliseconds")


def fresh_run_id(store: LocalStore, base: str) -> str:
    """``base`` for a first attempt; later attempts (``--rerun``, reproductions) get
    ``base-r<8 hex>``, random, so that two stores never make the same id for different runs
    (their records could otherwise replace each other on the Hub)."""
    candidate = base
    while os.path.lexists(store.run_dir(candidate)):
        candidate = f"{base}-r{secrets.token_hex(4)}"
    return candidate


def copy_inputs(spec: RunSpec, layout: RunLayout) -> None:
    """Put what rebuilds and re-runs this run into its folder: manifest, lockfile, image recipe."""
    loaded = spec.loaded
    layout.manifest.write_text(loaded.text, encoding="utf-8")
    if loaded.lockfile is not None:
        shutil.copy2(loaded.lockfile, layout.lockfile)
    if loaded.build_dir is not None:
        for path in context_files(loaded.build_dir):
            target = layout.context / path.relative_to(loaded.build_dir)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(path, target)


def job_variables(spec: RunSpec, run_id: str) -> dict[str, str]:
    """What the job sees of its run: id, seed, params (as JSON and one variable each)."""
    variables = {
        "HARNESS_RUN_ID": run_id,
        "HARNESS_SEED": str(spec.seed),
        "HARNESS_PARAMS": json.dumps(spec.params, sort_keys=True),
        "PYTHONHASHSEED": str(spec.seed),
    }
    for name, value in spec.params.items():
        variables[f"HARNESS_PARAM_{name.upper()}"] = str(value)
    return variables


def initial_record(spec: RunSpec, run_id: str, runtime: str, image: ImageInfo | None, reproduces: str | None) -> Record:
    """The record as it stands when the job starts (status ``running``, with its owner)."""
    manifest = spec.loaded.view
    lockfile_sha = sha256_file(spec.loaded.lockfile) if spec.loaded.lockfile is not None else None
    return {
        "schema_version": SCHEMA_VERSION,
        "run_id": run_id,
        "config_key": spec.config_key,
        "name": manifest.name,
        "description": manifest.description,
        "tags": list(manifest.tags),
        "status": RunStatus.RUNNING.value,
        "exit_code": None,
        "detail": "",
        "started_at": now_iso(),
        "ended_at": None,
        "duration_s": None,
        "seed": spec.seed,
        "params": spec.params,
        "smoke": spec.smoke,
        # the params a smoke run shrinks: runs that differ in them are not comparable results
        "budget": {key: spec.params.get(key) for key in sorted(manifest.smoke)},
        "command": spec.command(),
        "runtime": runtime,
        "hermetic": runtime in CONTAINER_RUNTIMES,
        "manifest_sha256": spec.loaded.sha256,
        "lockfile_sha256": lockfile_sha,
        "image": image.as_record() if image else None,  # type: ignore[typeddict-item]
        "hardware": manifest.hardware.as_dict(),
        "expect": manifest.expect,
        "primary_metric": manifest.metrics.primary,
        "summary_last_n": manifest.metrics.summary_last_n,  # the N of metrics_summary's mean_last_n
        "harness_version": harness.__version__,
        "reproduces": reproduces,
        "owner": {"pid": os.getpid(), "hostname": socket.gethostname()},
        "files": {},
    }


def execute(  # noqa: PLR0913 — one run's options, each a `harness run` option or a backend's hook
    spec: RunSpec,
    store: LocalStore,
    runtime: str = "docker",
    reproduces: str | None = None,
    on_start: Callable[..., None] | None = None,
    echo: Callable[[str], None] | None = None,
    ca_bundle: Path | None = None,
    force_build: bool = False,
    build_log: Callable[[str], None] = lambda line: None,
    image: ImageInfo | None = None,
    require_limits: bool | None = None,
) -> Record:
    """Run one run and return its sealed record. Bad input raises before anything is written.

    ``on_start(record, job)`` is called once the record exists and before the job starts; the job
    has ``stop(reason)`` for a scheduler that must end it early. ``image``: an image already in the
    runtime's engine (reproduce with a registry image) instead of the manifest's. ``require_limits``
    (default: ``HARNESS_REQUIRE_LIMITS=1``): refuse a Podman host that cannot enforce every limit.
    """
    if runtime not in RUNTIMES:
        raise HarnessError(f"--runtime {runtime}: choose {', '.join(RUNTIMES)}")
    manifest = spec.loaded.view
    check_gpus(manifest.hardware.gpus)
    client: Any = None
    sandbox: dict[str, Any] | None = None
    if runtime == "docker":
        client = engine_api()
    elif runtime == "podman":
        from harness.runtime.podman import REQUIRE_LIMITS_ENV, check_limits, podman_api, podman_facts

        client = podman_api()
        sandbox = podman_facts(client)
        if require_limits is None:
            require_limits = os.environ.get(REQUIRE_LIMITS_ENV) == "1"
        _say_once(check_limits(sandbox, require_limits))
    if runtime in CONTAINER_RUNTIMES and image is None:
        image = prepare_image(spec.loaded, ca_bundle, force_build, build_log, runtime=runtime)
    from harness.store.pins import fetch_pins

    pins = fetch_pins(manifest)

    # SIGTERM and SIGHUP stop the run like Ctrl-C, so its record is marked, not lost
    previous_handlers = signals.install()
    try:
        return _execute_run(spec, store, runtime, reproduces, on_start, echo, client, image, pins, sandbox)
    finally:
        signals.restore(previous_handlers)


_said: set[str] = set()


def _say_once(line: str | None) -> None:
    """A warning for the person starting the run (stderr), once per process."""
    if line and line not in _said:
        _said.add(line)
        print(line, file=sys.stderr, flush=True)


def _execute_run(  # noqa: PLR0913 — one run's options, each a `harness run` option or a backend's hook
    spec: RunSpec,
    store: LocalStore,
    runtime: str,
    reproduces: str | None,
    on_start: Callable[..., None] | None,
    echo: Callable[[str], None] | None,
    client: Any,
    image: ImageInfo | None,
    pins: list[dict[str, Any]],
    sandbox: dict[str, Any] | None = None,
) -> Record:
    from harness.capture.environment import capture_host
    from harness.capture.session import CaptureSession

    manifest = spec.loaded.view
    run_id = fresh_run_id(store, spec.run_id)
    layout = store.layout(run_id)
    layout.out.mkdir(parents=True)
    layout.logs.mkdir()
    copy_inputs(spec, layout)
    layout.reserve.write_bytes(b"\0" * RESERVE_BYTES)
    record = initial_record(spec, run_id, runtime, image, reproduces)
    record["host"] = capture_host()
    record["pins"] = pins
    if runtime == "docker":
        from harness.runtime.docker import engine_version

        record["docker_version"] = engine_version(client)
    if sandbox is not None:
        record["sandbox"] = sandbox
    capture = CaptureSession(run_id, layout, manifest.metrics)
    job: Any = None
    started = time.monotonic()
    store.save(record)
    try:
        job = _make_job(spec, runtime, run_id, layout, client, image, sandbox, echo, pins)
        if on_start is not None:
            on_start(record, job)
        result = _start_and_wait(job, runtime, capture, manifest.hardware.gpus)
    except KeyboardInterrupt as exc:
        # from the record's first save on, a signal ends in a sealed record, never one left "running"
        if job is not None:
            job.stop(stop_reason(exc))
        result = JobResult(stop_reason(exc), None, "stopped before the job started")
    if result.status == "failed":
        from harness.runtime.hints import read_only_hint

        hint = read_only_hint(layout.output_log, manifest.workdir)
        result.detail = f"{result.detail}; {hint}" if hint else result.detail
    record.update(
        {
            "status": result.status,
            "exit_code": result.exit_code,
            "detail": result.detail,
            "ended_at": now_iso(),
            "duration_s": round(time.monotonic() - started, 3),
        }
    )
    engine_lost: str | None = getattr(job, "engine_lost", None)
    if engine_lost is not None:
        record["pending"] = ["container"]
    remover = None
    if job is not None:
        try:
            capture.stop_sampling()
        except Exception:  # noqa: BLE001 — _finish stops it again and seals the record with the fault
            pass
        else:
            # nothing reads the container any more: the engine removes it while the record is sealed
            remover = threading.Thread(target=job.remove, name="harness-remove")
            remover.start()
    try:
        return _finish(store, record, capture, manifest.hardware.memory_bytes, client, image, engine_lost)
    finally:
        if remover is not None:
            remover.join()
        elif job is not None:
            job.remove()


def _make_job(  # noqa: PLR0913 — everything a job is made of, gathered by the caller
    spec: RunSpec,
    runtime: str,
    run_id: str,
    layout: Any,
    client: Any,
    image: ImageInfo | None,
    sandbox: dict[str, Any] | None,
    echo: Callable[[str], None] | None,
    pins: list[dict[str, Any]],
) -> Any:
    """The run's job (created, not started) in ``runtime``."""
    from harness.store.pins import hub_cache_dir

    manifest = spec.loaded.view
    request = JobRequest(
        run_id=run_id,
        command=spec.command(),
        environment=job_variables(spec, run_id),
        out_dir=layout.out,
        log_path=layout.output_log,
        cpus=float(manifest.hardware.cpus),
        memory_bytes=manifest.hardware.memory_bytes,
        gpus=manifest.hardware.gpus,
        timeout_seconds=manifest.hardware.timeout_seconds,
        echo=echo,
        workload_dir=(spec.loaded.build_dir / "workload") if spec.loaded.build_dir else None,
        hub_cache=hub_cache_dir() if pins else None,
        workdir=manifest.workdir,
    )
    if runtime == "docker":
        from harness.runtime.docker import DockerJob

        assert image is not None
        return DockerJob(client, image.id, request)
    if runtime == "podman":
        from harness.runtime.podman import PodmanJob

        assert image is not None and sandbox is not None
        return PodmanJob(client, image.id, request, sandbox)
    from harness.runtime.process import ProcessJob

    return ProcessJob(request)


def _start_and_wait(job: Any, runtime: str, capture: Any, gpus: int) -> JobResult:
    """Start the job and the capture around it, and wait for the job to end (Ctrl-C stops it)."""
    try:
        job.start()
    except EngineError as exc:  # the engine failed (or went away) between create and start
        return JobResult(RunStatus.ERROR.value, None, str(exc))
    # rootless Podman on cgroup v1 gives the container no cgroup of its own: follow its processes
    pid = job.pid if runtime == "process" or getattr(job, "sample_by_pid", False) else None
    capture.start(container=job.container if pid is None else None, pid=pid, gpus=gpus)
    try:
        result: JobResult = job.wait()
    except KeyboardInterrupt as exc:
        job.stop(stop_reason(exc))
        result = job.wait()
    return result


def _finish(
    store: LocalStore,
    record: Record,
    capture: Any,
    memory_limit: int,
    client: Any,
    image: ImageInfo | None,
    engine_lost: str | None = None,
) -> Record:
    """Write the tables and seal the record. A full disk is said plainly and leaves a consistent
    record that ``recover`` seals once there is space; any other fault of the harness itself seals
    the record as ``error`` with the reason."""
    from harness.capture.environment import image_environment, process_environment

    layout = store.layout(record["run_id"])
    try:
        capture.finish()
        record["metrics_summary"] = capture.summary()
        _note_ingestion(record, capture.ingester)
        if capture.sampler is not None:
            record["peak_memory_bytes"] = capture.sampler.peak_memory_bytes
            if record["status"] == RunStatus.OOM:
                # the kernel kills at the limit; a 1 Hz sampler may not have seen the last climb
                record["peak_memory_bytes"] = max(record["peak_memory_bytes"], memory_limit)
            record["gpu"] = capture.sampler.gpu_status()
        record["environment"] = (
            image_environment(client, image, engine_lost) if image is not None else process_environment()
        )
        record.pop("owner", None)
        layout.reserve.unlink(missing_ok=True)
        from harness.store.journal import TAIL_POINTS

        return store.seal(record, capture.ingester.metric_tails(TAIL_POINTS))
    except OSError as exc:
        if exc.errno != errno.ENOSPC:
            return _seal_as_error(store, record, exc)
        layout.reserve.unlink(missing_ok=True)
        record["detail"] = f"disk full while writing the record: {exc.strerror}; the tables may be incomplete" + (
            f" ({record['detail']})" if record.get("detail") else ""
        )
        record["pending"] = sorted({*record.get("pending", []), "seal"})
        record.pop("owner", None)
        try:
            store.save(record)
        except OSError:
            pass  # the earlier record.json stays whole: writes are atomic
        raise HarnessError(
            f"{layout.root}: disk full while writing the run record "
            f"({exc.strerror}); free space, then `harness recover`"
        ) from None
    except Exception as exc:  # noqa: BLE001 — any fault while finishing ends as an honest error record
        return _seal_as_error(store, record, exc)


def _seal_as_error(store: LocalStore, record: Record, exc: BaseException) -> Record:
    """Seal a record whose finishing failed: status ``error``, what the job did kept in ``detail``."""
    job_status = record.get("status")
    record["status"] = RunStatus.ERROR.value
    record["detail"] = (
        f"the harness failed while finishing the run (the job ended {job_status}): "
        f"{type(exc).__name__}: {str(exc)[:500]}"
    )
    record.pop("owner", None)
    store.layout(record["run_id"]).reserve.unlink(missing_ok=True)
    shutil.rmtree(store.layout(record["run_id"]).metrics_spool, ignore_errors=True)
    try:
        return store.seal(record)
    except Exception:  # noqa: BLE001 — a record that cannot be sealed is still saved, unsealed
        store.save(record)
        return record


def _note_ingestion(record: Record, ingester: Any) -> None:
    """Put what metric ingestion skipped into the record: counts of bad lines by reason, files."""
    from harness.util.safefs import skipped_for_record

    record["metrics_rejected"] = dict(sorted(ingester.rejected.items()))
    record["metrics_skipped"] = skipped_for_record(ingester.skipped)


def recover(store: LocalStore) -> list[str]:
    """Mark runs whose harness process died as ``interrupted``: kill their container, convert what
    reached disk into tables, and seal the record. Also finish what a final record left
    ``pending``: seal a run a full disk left unsealed, remove a container a lost engine kept.
    Returns the run ids recovered."""
    recovered = []
    hostname = socket.gethostname()
    for record in store.records():
        pending = record.get("pending")
        # only a run made here leaves work pending: a pulled record's claim is not acted on
        # (re-sealing it would bless files that no longer match what was published)
        if isinstance(pending, list) and pending and "pulled_from" not in record and _is_final(record.get("status")):
            if _finish_pending(store, record, [str(item) for item in pending]):
                recovered.append(record["run_id"])
            continue
        if not orphaned(record, hostname):
            continue
        run_id = record["run_id"]
        record.update(
            {
                "status": RunStatus.INTERRUPTED.value,
                "ended_at": record.get("ended_at") or now_iso(),
                "detail": "the harness process ended before the run finished (recovered)",
            }
        )
        try:
            _remove_container(record)
            _rebuild_tables(store, record)
            record.pop("owner", None)
            store.layout(run_id).reserve.unlink(missing_ok=True)
            store.seal(record)
        except Exception as exc:  # noqa: BLE001 — any fault while recovering one run ends as its error record, and recovery goes on
            _seal_as_error(store, record, exc)
        recovered.append(run_id)
    return recovered


def _finish_pending(store: LocalStore, record: Record, pending: list[str]) -> bool:
    """Do what a final record left for later; True once nothing is left. A step that still
    cannot be done (the engine does not answer, the disk is still full) stays pending."""
    left = list(pending)
    if "container" in left and _remove_container(record, timeout=10):
        left.remove("container")
    if "seal" in left:
        try:
            _rebuild_tables(store, record)
            store.layout(record["run_id"]).reserve.unlink(missing_ok=True)
            left.remove("seal")
            record["detail"] = str(record.get("detail", "")).replace(
                "the tables may be incomplete", "sealed later by `harness recover`"
            )
        except Exception:  # noqa: BLE001 — still no space (or the tables cannot be made): try again next time
            pass
    if left:
        record["pending"] = left
    else:
        record.pop("pending", None)
    try:
        if "seal" in left:
            store.save(record)
        else:
            store.seal(record)
    except OSError:
        return False
    return not left


def _remove_container(record: Record, timeout: float | None = None) -> bool:
    """Kill and remove the container of a run whose harness died or lost its engine; False when
    its engine does not answer (there may still be one)."""
    runtime = record.get("runtime")
    if runtime not in CONTAINER_RUNTIMES:
        return True
    from harness.runtime.docker import kill_orphan

    try:
        if runtime == "docker":
            api = engine_api(timeout)
        else:
            from harness.runtime.podman import podman_api

            api = podman_api()
    except HarnessError:
        return False  # no engine here any more: nothing of the run can still be running on it
    kill_orphan(record["run_id"], api)
    return True


def _rebuild_tables(store: LocalStore, record: Record) -> None:
    """Convert what reached the run folder into its tables and summaries again, from scratch."""
    from harness.capture.metrics import ingest_run_folder
    from harness.capture.system import system_jsonl_to_parquet

    run_id = record["run_id"]
    layout = store.layout(run_id)
    manifest_metrics: dict[str, Any] = {}
    try:
        from harness.manifest import parse_manifest

        manifest_metrics = parse_manifest(layout.manifest).metrics.model_dump()
    except HarnessError:
        pass
    last_n = manifest_metrics.get("summary_last_n", 10)
    shutil.rmtree(layout.metrics_spool, ignore_errors=True)
    ingester = ingest_run_folder(
        run_id, layout.root, manifest_metrics.get("tensorboard"), spool_dir=layout.metrics_spool
    )
    ingester.write_parquet(layout.metrics_parquet, last_n)
    ingester.close()
    system_jsonl_to_parquet(run_id, layout.system_jsonl, layout.system_parquet)
    record["metrics_summary"] = ingester.summary(last_n)
    _note_ingestion(record, ingester)


def _is_final(status: Any) -> bool:
    try:
        return RunStatus(str(status)).final
    except ValueError:
        return False
