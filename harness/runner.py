"""One run, end to end: build or find the image, start the job, capture while it runs, write the
record. Every caller (the CLI, the sweep backends, reproduce) goes through ``execute``."""

from __future__ import annotations

import datetime as dt
import errno
import json
import os
import secrets
import shutil
import signal
import socket
import threading
import time
from pathlib import Path
from typing import Any, Callable

import harness
from harness.errors import HarnessError
from harness.images import ImageInfo, build_image, context_files, docker_client, resolve_ref
from harness.plan import RunSpec
from harness.runtime.job import JobRequest, JobResult
from harness.store.local import SCHEMA_VERSION, LocalStore, write_json_atomic

METRICS_PARQUET = "metrics.parquet"
METRICS_SPOOL = ".metrics-spool"  # rows spilled while a run goes; removed before the record is sealed
SYSTEM_JSONL = "system.jsonl"
SYSTEM_PARQUET = "system.parquet"
PARQUET_REFRESH_S = 10.0
# Space held from the start of a run so that its final record can be written even when the
# workload fills the disk.
RESERVE_NAME = ".harness-reserve"
RESERVE_BYTES = 512 * 1024


def now_iso() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="milliseconds")


def fresh_run_id(store: LocalStore, base: str) -> str:
    """``base`` for a first attempt; later attempts (``--rerun``, reproductions) get
    ``base-r<8 hex>``, random, so that two stores never make the same id for different runs
    (their records could otherwise replace each other on the Hub)."""
    candidate = base
    while os.path.lexists(store.run_dir(candidate)):
        candidate = f"{base}-r{secrets.token_hex(4)}"
    return candidate


_prepared_images: dict[tuple, ImageInfo] = {}
_prepared_lock = threading.Lock()


def prepare_image(spec: RunSpec, ca_bundle: Path | None = None, force_build: bool = False,
                  log: Callable[[str], None] = lambda line: None) -> ImageInfo:
    """The run's image: built from its recipe (content-addressed, cached) or resolved by digest.

    Within one process (a sweep) the same recipe is resolved once: its runs share the image."""
    loaded = spec.loaded
    key = (loaded.manifest.image.ref, str(loaded.build_dir), loaded.lockfile and loaded.lockfile.read_bytes(),
           loaded.manifest.image.network)
    if not force_build:
        with _prepared_lock:
            if key in _prepared_images:
                return _prepared_images[key]
    if loaded.manifest.image.ref:
        info = resolve_ref(docker_client(), loaded.manifest.image.ref)
    else:
        assert loaded.build_dir is not None
        info = build_image(loaded.build_dir, loaded.lockfile, ca_bundle=ca_bundle, force=force_build, log=log,
                           network=loaded.manifest.image.network)
    with _prepared_lock:
        _prepared_images[key] = info
    return info


def host_gpu_status() -> dict[str, Any]:
    """What NVML sees on this host (``available``, ``reason``, ``devices``); never raises."""
    from harness.capture.gpu import open_nvml

    session = open_nvml(None)
    try:
        return session.status()
    finally:
        session.close()


def check_gpus(requested: int) -> None:
    """Refuse a GPU run on a host whose NVML sees fewer GPUs than requested."""
    if requested <= 0:
        return
    status = host_gpu_status()
    count = len(status.get("devices", []))
    if count < requested:
        reason = status.get("reason") or f"{count} GPU(s) seen"
        raise HarnessError(f"the manifest asks for {requested} GPU(s) but this host has {count} ({reason}); "
                           "use a GPU host or set hardware.gpus: 0")


def copy_inputs(spec: RunSpec, run_dir: Path) -> None:
    """Put what rebuilds and re-runs this run into its folder: manifest, lockfile, image recipe."""
    loaded = spec.loaded
    (run_dir / "manifest.yaml").write_text(loaded.text, encoding="utf-8")
    if loaded.lockfile is not None:
        shutil.copy2(loaded.lockfile, run_dir / "lockfile.txt")
    if loaded.build_dir is not None:
        for path in context_files(loaded.build_dir):
            target = run_dir / "context" / path.relative_to(loaded.build_dir)
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


def initial_record(spec: RunSpec, run_id: str, runtime: str, image: ImageInfo | None, reproduces: str | None) -> dict[str, Any]:
    manifest = spec.loaded.manifest
    lockfile_sha = None
    if spec.loaded.lockfile is not None:
        from harness.store.local import sha256_file

        lockfile_sha = sha256_file(spec.loaded.lockfile)
    return {
        "schema_version": SCHEMA_VERSION,
        "run_id": run_id,
        "config_key": spec.config_key,
        "name": manifest.name,
        "description": manifest.description,
        "tags": list(manifest.tags),
        "status": "running",
        "exit_code": None,
        "detail": "",
        "started_at": now_iso(),
        "ended_at": None,
        "duration_s": None,
        "seed": spec.seed,
        "params": spec.params,
        "smoke": spec.smoke,
        "command": spec.command(),
        "runtime": runtime,
        "hermetic": runtime == "docker",
        "manifest_sha256": spec.loaded.sha256,
        "lockfile_sha256": lockfile_sha,
        "image": image.as_record() if image else None,
        "hardware": manifest.hardware.model_dump(),
        "expect": manifest.expect.model_dump(),
        "primary_metric": manifest.metrics.primary,
        "harness_version": harness.__version__,
        "reproduces": reproduces,
        "owner": {"pid": os.getpid(), "hostname": socket.gethostname()},
        "files": {},
    }


class _Capture:
    """Metric ingestion and system sampling around a running job."""

    def __init__(self, spec: RunSpec, run_id: str, run_dir: Path):
        from harness.capture.metrics import MetricsIngester

        metrics = spec.loaded.manifest.metrics
        tensorboard = run_dir / "out" / metrics.tensorboard if metrics.tensorboard else None
        self.run_dir = run_dir
        self.ingester = MetricsIngester(run_id, run_dir / "out", tensorboard, spool_dir=run_dir / METRICS_SPOOL)
        self.last_n = metrics.summary_last_n
        self.interval = float(metrics.system_interval)
        self.run_id = run_id
        self.sampler: Any = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="harness-ingest", daemon=True)

    def start(self, container: Any = None, pid: int | None = None, gpus: int = 0) -> None:
        from harness.capture.system import SystemSampler

        self.sampler = SystemSampler(
            self.run_id, self.run_dir / SYSTEM_JSONL, interval=self.interval, container=container, pid=pid,
            gpu_indices=list(range(gpus)) if gpus else None,
        )
        self.sampler.start()
        self._thread.start()

    def _loop(self) -> None:
        last_write = time.monotonic()
        while not self._stop.wait(1.0):
            try:
                if (self.ingester.poll() and time.monotonic() - last_write > PARQUET_REFRESH_S
                        and self.ingester.live_refresh_allowed()):
                    self.ingester.write_parquet(self.run_dir / METRICS_PARQUET, self.last_n)
                    last_write = time.monotonic()
            except Exception:  # noqa: BLE001 - finish() reads again and reports what still fails
                continue

    def finish(self) -> None:
        """Stop sampling, read what is left and write both tables."""
        from harness.capture.system import system_jsonl_to_parquet

        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5)
        if self.sampler is not None:
            self.sampler.stop()
        self.ingester.poll(final=True)
        self.ingester.write_parquet(self.run_dir / METRICS_PARQUET, self.last_n)
        self.ingester.close()
        system_jsonl_to_parquet(self.run_id, self.run_dir / SYSTEM_JSONL, self.run_dir / SYSTEM_PARQUET)


def _cached_environment(key: str, capture: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """An environment capture, kept on disk under ``key`` (plus the capture script's hash);
    a failed capture is returned but not kept."""
    import hashlib

    from harness.capture.environment import ENVIRONMENT_SCRIPT
    from harness.images import wheel_cache_dir

    script = hashlib.sha256(ENVIRONMENT_SCRIPT.encode()).hexdigest()[:12]
    cache = wheel_cache_dir().parent / "environments" / f"{key}-{script}.json"
    if cache.is_file():
        try:
            return json.loads(cache.read_text())
        except ValueError:
            pass
    environment = capture()
    if "error" not in environment:
        write_json_atomic(cache, environment)
    return environment


def image_environment(client: Any, image: ImageInfo) -> dict[str, Any]:
    """What is inside the image (pip freeze, Python, torch/CUDA...), captured once per image id."""
    from harness.capture.environment import ENVIRONMENT_SCRIPT
    from harness.runtime.docker import run_in_image

    def capture() -> dict[str, Any]:
        try:
            return json.loads(run_in_image(client, image.id, ["python", "-c", ENVIRONMENT_SCRIPT]))
        except Exception as exc:  # noqa: BLE001 - an image without Python still runs; say what is missing
            return {"error": f"environment capture failed: {exc}"}

    return _cached_environment(image.id.replace(":", "_"), capture)


def process_environment() -> dict[str, Any]:
    """The same capture for the process runtime, with the host's interpreter; cached until the
    interpreter's package folders change (installing or removing a package changes their mtime)."""
    import hashlib
    import subprocess
    import sys
    import sysconfig

    from harness.capture.environment import ENVIRONMENT_SCRIPT

    def capture() -> dict[str, Any]:
        result = subprocess.run([sys.executable, "-c", ENVIRONMENT_SCRIPT], capture_output=True, text=True, timeout=120)
        try:
            return json.loads(result.stdout)
        except ValueError:
            return {"error": f"environment capture failed: {result.stderr.strip()[-300:]}"}

    folders = sorted({sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]})
    stamp = json.dumps([sys.executable] + [[f, os.stat(f).st_mtime_ns] for f in folders if os.path.isdir(f)])
    return _cached_environment(f"host-{hashlib.sha256(stamp.encode()).hexdigest()[:24]}", capture)


def execute(
    spec: RunSpec,
    store: LocalStore,
    runtime: str = "docker",
    reproduces: str | None = None,
    on_start: Callable[..., None] | None = None,
    echo: Callable[[str], None] | None = None,
    ca_bundle: Path | None = None,
    force_build: bool = False,
    build_log: Callable[[str], None] = lambda line: None,
) -> dict[str, Any]:
    """Run one run and return its sealed record. Bad input raises before anything is written.

    ``on_start(record, job)`` is called once the record exists and before the job starts; the job
    has ``stop(reason)`` for a scheduler that must end it early.
    """
    if runtime not in {"docker", "process"}:
        raise HarnessError(f"--runtime {runtime}: choose docker or process")
    threading.Thread(target=_warm_imports, name="harness-imports", daemon=True).start()
    manifest = spec.loaded.manifest
    check_gpus(manifest.hardware.gpus)
    client = docker_client() if runtime == "docker" else None
    image = prepare_image(spec, ca_bundle, force_build, build_log) if runtime == "docker" else None
    from harness.pins import fetch_pins

    pins = fetch_pins(manifest)

    previous_term = _raise_on_sigterm()
    try:
        return _execute_run(spec, store, runtime, reproduces, on_start, echo, client, image, pins)
    finally:
        _restore_sigterm(previous_term)


def _execute_run(spec: RunSpec, store: LocalStore, runtime: str, reproduces: str | None,
                 on_start: Callable[..., None] | None, echo: Callable[[str], None] | None,
                 client: Any, image: ImageInfo | None, pins: list[dict[str, Any]]) -> dict[str, Any]:
    from harness.capture.environment import capture_host
    from harness.pins import hub_cache_dir

    manifest = spec.loaded.manifest
    run_id = fresh_run_id(store, spec.run_id)
    run_dir = store.run_dir(run_id)
    (run_dir / "out").mkdir(parents=True)
    (run_dir / "logs").mkdir()
    copy_inputs(spec, run_dir)
    (run_dir / RESERVE_NAME).write_bytes(b"\0" * RESERVE_BYTES)
    record = initial_record(spec, run_id, runtime, image, reproduces)
    record["host"] = capture_host()
    record["pins"] = pins
    if client is not None:
        from harness.runtime.docker import engine_version

        record["docker_version"] = engine_version(client)
    store.save(record)

    request = JobRequest(
        run_id=run_id, command=spec.command(), environment=job_variables(spec, run_id), out_dir=run_dir / "out",
        log_path=run_dir / "logs" / "output.log", cpus=float(manifest.hardware.cpus),
        memory_bytes=manifest.hardware.memory_bytes, gpus=manifest.hardware.gpus,
        timeout_seconds=manifest.hardware.timeout_seconds, echo=echo,
        workload_dir=(spec.loaded.build_dir / "workload") if spec.loaded.build_dir else None,
        hub_cache=hub_cache_dir() if pins else None,
    )
    capture = _Capture(spec, run_id, run_dir)
    if runtime == "docker":
        from harness.runtime.docker import DockerJob

        assert image is not None
        job: Any = DockerJob(client, image.id, request)
    else:
        from harness.runtime.process import ProcessJob

        job = ProcessJob(request)
    started = time.monotonic()
    try:
        if on_start is not None:
            on_start(record, job)
        job.start()
        capture.start(container=getattr(job, "container", None), pid=None if runtime == "docker" else job.pid,
                      gpus=manifest.hardware.gpus)
        try:
            result = job.wait()
        except KeyboardInterrupt as exc:
            job.stop(_stop_reason(exc))
            result = job.wait()
    except KeyboardInterrupt as exc:
        job.stop(_stop_reason(exc))
        result = JobResult(_stop_reason(exc), None, "stopped before the job started")
    record.update(status=result.status, exit_code=result.exit_code, detail=result.detail,
                  ended_at=now_iso(), duration_s=round(time.monotonic() - started, 3))
    try:
        return _finish(store, record, capture, job, manifest, client, image)
    finally:
        job.remove()


def _finish(store: LocalStore, record: dict[str, Any], capture: _Capture, job: Any, manifest: Any,
            client: Any, image: ImageInfo | None) -> dict[str, Any]:
    """Write the tables and seal the record; a full disk is said plainly and leaves a consistent record."""
    try:
        capture.finish()
        record["metrics_summary"] = capture.ingester.summary(manifest.metrics.summary_last_n)
        _note_ingestion(record, capture.ingester)
        if capture.sampler is not None:
            record["peak_memory_bytes"] = capture.sampler.peak_memory_bytes
            if record["status"] == "oom":
                # the kernel kills at the limit; a 1 Hz sampler may not have seen the last climb
                record["peak_memory_bytes"] = max(record["peak_memory_bytes"], manifest.hardware.memory_bytes)
            record["gpu"] = capture.sampler.gpu_status()
        record["environment"] = image_environment(client, image) if image is not None else process_environment()
        record.pop("owner", None)
        (store.run_dir(record["run_id"]) / RESERVE_NAME).unlink(missing_ok=True)
        return store.seal(record)
    except Exception as exc:  # noqa: BLE001 - whatever happens, the record reaches a final status
        if not (isinstance(exc, OSError) and exc.errno == errno.ENOSPC):
            return _finish_with_error(store, record, exc)
        (store.run_dir(record["run_id"]) / RESERVE_NAME).unlink(missing_ok=True)
        record["detail"] = f"disk full while writing the record: {exc.strerror}; the tables may be incomplete"
        record.pop("owner", None)
        try:
            store.save(record)
        except OSError:
            pass  # the earlier record.json stays whole: writes are atomic
        raise HarnessError(f"{store.run_dir(record['run_id'])}: disk full while writing the run record "
                           f"({exc.strerror}); free space, then `harness recover`") from None


def _note_ingestion(record: dict[str, Any], ingester: Any) -> None:
    """Put what metric ingestion skipped into the record: counts of bad lines by reason, files."""
    from harness.safefs import skipped_for_record

    record["metrics_rejected"] = dict(sorted(ingester.rejected.items()))
    record["metrics_skipped"] = skipped_for_record(ingester.skipped)


def _finish_with_error(store: LocalStore, record: dict[str, Any], exc: BaseException) -> dict[str, Any]:
    """Seal a run whose finishing failed inside the harness as ``error``, with the reason."""
    from harness.safefs import printable

    run_dir = store.run_dir(record["run_id"])
    (run_dir / RESERVE_NAME).unlink(missing_ok=True)
    shutil.rmtree(run_dir / METRICS_SPOOL, ignore_errors=True)
    reason = printable(f"{type(exc).__name__}: {exc}", 300)
    workload = f"the workload ended {record.get('status')}" + (f" ({record['detail']})" if record.get("detail") else "")
    record.update(status="error", detail=f"harness error while finishing the run: {reason}; {workload}")
    record.pop("owner", None)
    try:
        return store.seal(record)
    except Exception:  # noqa: BLE001 - a record without checksums still says what happened
        try:
            store.save(record)
        except OSError:
            pass
        return record


def _warm_imports() -> None:
    """Import the table libraries while the engine starts the container: the first ``pa.array``
    also imports pandas (pyarrow checks for it), about half a second that need not be serial."""
    import pyarrow as pa
    import pyarrow.parquet  # noqa: F401

    import harness.capture.metrics  # noqa: F401
    import harness.capture.system  # noqa: F401

    pa.array([0])


class Terminated(KeyboardInterrupt):
    """SIGTERM: the run was cancelled from outside (Slurm's scancel, `kill`)."""


def _stop_reason(exc: BaseException) -> str:
    return "cancelled" if isinstance(exc, Terminated) else "interrupted"


def _raise_on_sigterm() -> Any:
    """Treat SIGTERM like Ctrl-C so the record is marked (``cancelled``), not lost."""
    if threading.current_thread() is not threading.main_thread():
        return None

    def handler(signum: int, frame: Any) -> None:
        raise Terminated

    return signal.signal(signal.SIGTERM, handler)


def _restore_sigterm(previous: Any) -> None:
    if previous is not None:
        signal.signal(signal.SIGTERM, previous)


def recover(store: LocalStore) -> list[str]:
    """Mark runs whose harness process died as ``interrupted``: kill their container, convert what
    reached disk into tables, and seal the record. Returns the run ids recovered."""
    from harness.capture.metrics import ingest_run_folder
    from harness.capture.system import system_jsonl_to_parquet

    recovered = []
    hostname = socket.gethostname()
    for record in store.records():
        owner = record.get("owner") if isinstance(record.get("owner"), dict) else {}
        if record.get("status") != "running" or owner.get("hostname") != hostname or _alive(owner.get("pid")):
            continue
        run_id = record["run_id"]
        run_dir = store.run_dir(run_id)
        record.update(status="interrupted", ended_at=record.get("ended_at") or now_iso(),
                      detail="the harness process ended before the run finished (recovered)")
        try:
            if record.get("runtime") == "docker":
                from harness.runtime.docker import kill_orphan

                kill_orphan(run_id)
            manifest_metrics: dict[str, Any] = {}
            try:
                from harness.manifest import parse_manifest

                manifest_metrics = parse_manifest(run_dir / "manifest.yaml").metrics.model_dump()
            except HarnessError:
                pass
            last_n = manifest_metrics.get("summary_last_n", 10)
            shutil.rmtree(run_dir / METRICS_SPOOL, ignore_errors=True)
            ingester = ingest_run_folder(run_id, run_dir, manifest_metrics.get("tensorboard"),
                                         spool_dir=run_dir / METRICS_SPOOL)
            ingester.write_parquet(run_dir / METRICS_PARQUET, last_n)
            ingester.close()
            system_jsonl_to_parquet(run_id, run_dir / SYSTEM_JSONL, run_dir / SYSTEM_PARQUET)
            record["metrics_summary"] = ingester.summary(last_n)
            _note_ingestion(record, ingester)
            record.pop("owner", None)
            (run_dir / RESERVE_NAME).unlink(missing_ok=True)
            store.seal(record)
        except Exception as exc:  # noqa: BLE001 - one broken run folder must not stop `harness ls`
            _finish_with_error(store, record, exc)
        recovered.append(run_id)
    return recovered


def _alive(pid: Any) -> bool:
    if not isinstance(pid, int) or isinstance(pid, bool) or not 0 < pid < 2**31:
        return False
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, OverflowError):
        return False
    except PermissionError:
        return True
    return True
