"""Run a sweep on a Ray cluster: one Ray job per run, through the Jobs API.

Each job runs ``python -m harness.backends.ray_task`` (the venv's Python, by path) on whichever
node has the manifest's CPUs, memory and GPUs free; the task runs the harness's own sandboxed run
into a store on that node and prints the sha256 of every file it wrote. The submitting side waits,
copies each run folder into its own store (no link followed) and checks every file against those
sums before the run counts as there. A job whose node died before it printed its sums is submitted
once more (Ray places it on a live node); a run that still has no record is reported with Ray's
reason, never left ``running``.
"""

from __future__ import annotations

import json
import os
import secrets
import shlex
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from harness.backends import Backend, BackendOptions, Echo, Job, SweepOutcome
from harness.backends.ray_task import MARKER_FILE, RESULT_MARK, image_note
from harness.backends.sweeps import ATTEMPT_SUFFIX, Submission, SweepState, attempt_records, save_state
from harness.errors import HarnessError
from harness.store.layout import RECORD
from harness.store.local import LocalStore, read_record
from harness.util.fsutil import write_json_atomic
from harness.util.safefs import UnsafeFile, copy_beneath, relative_path_problem, sha256_beneath

if TYPE_CHECKING:
    from harness.manifest import Hardware
    from harness.reproduce.reproduction import SeedJob, SeedRunner
    from harness.run.plan import RunSpec
    from harness.store.record import Record

ADDRESS_ENV = ("HARNESS_RAY_ADDRESS", "RAY_ADDRESS")
FILES_ENV = "HARNESS_RAY_FILES"
MEMORY_MARGIN = 512 * 2**20  # the harness process on the node shares the job's memory
ATTEMPTS = 2  # a job lost with its node runs once more elsewhere
POLL_S = 1.0
STOP_WAIT_S = 120.0
STOP_GRACE_S = 60
UNREACHABLE_S = 180.0  # how long the head may not answer before the runs still out are given up
LOG_TAIL = 1 << 20
# what the Jobs API client raises when the head is down or says no: requests' errors (OSError),
# RuntimeError for an HTTP error status, ValueError for an address it cannot use
CLIENT_ERRORS: tuple[type[Exception], ...] = (
    OSError,
    RuntimeError,
    ValueError,
)  # only the end of a job's log is read for its result line
# Ray job status -> harness run state (a job that ended leaves the run's record to say more)
STATE_OF_RAY = {
    "PENDING": "queued",
    "RUNNING": "running",
    "SUCCEEDED": "completed",
    "FAILED": "failed",
    "STOPPED": "cancelled",
}


def cluster_address(address: str | None) -> str:
    """The Jobs API address: ``--address``, else $HARNESS_RAY_ADDRESS, else $RAY_ADDRESS."""
    for candidate in (address, *(os.environ.get(name) for name in ADDRESS_ENV)):
        if candidate:
            return candidate if "://" in candidate else f"http://{candidate}"
    raise HarnessError(
        "--backend ray needs the cluster's Jobs API: give --address http://HEAD:8265 or set HARNESS_RAY_ADDRESS"
    )


def job_client(address: str) -> Any:
    """A JobSubmissionClient for ``address``; one line when Ray is missing or the head does not answer."""
    try:
        from ray.job_submission import JobSubmissionClient
    except ImportError:
        raise HarnessError("--backend ray needs the ray package: pip install 'harness[ray]'") from None
    try:
        return JobSubmissionClient(address)
    except CLIENT_ERRORS as exc:
        raise HarnessError(f"the Ray cluster at {address} does not answer: {str(exc).splitlines()[0][:200]}") from None


def node_resources(address: str) -> list[dict[str, float]]:
    """The total resources of each alive node of the cluster."""
    from ray.util.state import list_nodes
    from ray.util.state.exception import RayStateApiException

    try:
        # filtered here, not by the server: a server-side filter counts dead nodes against the limit
        nodes = [
            n for n in list_nodes(address=address, timeout=30, raise_on_missing_output=False) if n.state == "ALIVE"
        ]
    except CLIENT_ERRORS + (RayStateApiException,) as exc:
        raise HarnessError(
            f"the Ray cluster at {address} does not list its nodes: {str(exc).splitlines()[0][:200]}"
        ) from None
    return [dict(node.resources_total or {}) for node in nodes]


def entrypoint_resources(hardware: Hardware) -> dict[str, Any]:
    """The Ray resources one run of this hardware target asks for."""
    return {
        "entrypoint_num_cpus": float(hardware.cpus),
        "entrypoint_num_gpus": int(hardware.gpus),
        "entrypoint_memory": int(hardware.memory_bytes + MEMORY_MARGIN),
    }


def check_fits(hardware: Hardware, nodes: list[dict[str, float]], address: str, manifest: str) -> None:
    """Refuse, before anything is submitted, a run that no node of the cluster could ever hold."""
    if not nodes:
        raise HarnessError(f"the Ray cluster at {address} has no alive node")
    asked = entrypoint_resources(hardware)
    wanted = (
        ("GPUs", "GPU", asked["entrypoint_num_gpus"], ""),
        ("CPUs", "CPU", asked["entrypoint_num_cpus"], ""),
        ("memory", "memory", asked["entrypoint_memory"], " bytes of"),
    )
    for what, key, need, unit in wanted:
        if need <= 0:
            continue
        largest = max(node.get(key, 0.0) for node in nodes)
        if need > largest:
            raise HarnessError(
                f"{manifest}: hardware asks for {need:g}{unit} {what} per run, but no node of the Ray cluster at "
                f"{address} has that many (largest: {largest:g}): change hardware in the manifest or use a bigger cluster"
            )


def result_of(log: str) -> dict[str, Any] | None:
    """The run id, status and file sums the job printed last (None when it printed none)."""
    tail = log[-LOG_TAIL:]
    at = tail.rfind("\n" + RESULT_MARK)
    if at < 0 and not tail.startswith(RESULT_MARK):
        return None
    line = tail[at + 1 :].split("\n", 1)[0][len(RESULT_MARK) :]
    try:
        data = json.loads(line)
    except ValueError:
        return None
    if not isinstance(data, dict) or not isinstance(data.get("run_id"), str) or not isinstance(data.get("files"), dict):
        return None
    return data


def _check_run_id(result: dict[str, Any], base_run_id: str, job_id: str) -> str:
    run_id = result["run_id"]
    if run_id != base_run_id and not (
        run_id.startswith(base_run_id) and ATTEMPT_SUFFIX.fullmatch(run_id[len(base_run_id) :])
    ):
        raise HarnessError(f"Ray job {job_id} reports run {run_id[:80]!r}, not an attempt of {base_run_id}")
    return str(run_id)


def _land(
    result: dict[str, Any],
    base_run_id: str,
    store: LocalStore,
    job_id: str,
    fill: Callable[[Path], dict[str, Any]],
    how: str,
) -> dict[str, Any]:
    """Bring one run into ``store``: ``fill(staging)`` puts its files into a new staging folder
    (checked against the sums the job printed) and returns the node's record, which must list
    exactly those sums; the record is saved under a fresh attempt id where the store holds the run."""
    from harness.run.runner import fresh_run_id

    run_id = _check_run_id(result, base_run_id, job_id)
    files: dict[str, Any] = result["files"]
    for relative in files:
        problem = relative_path_problem(relative)
        if problem or relative == RECORD:
            raise HarnessError(f"Ray job {job_id}: refused file {relative[:80]!r} ({problem or 'the record'})")
    target_id = fresh_run_id(store, base_run_id)
    store.runs_dir.mkdir(parents=True, exist_ok=True)
    staging = store.runs_dir / f".incoming-{secrets.token_hex(4)}"
    try:
        try:
            record = fill(staging)
        except HarnessError as exc:
            raise HarnessError(f"Ray job {job_id}: {exc}") from None
        if record.get("run_id") != run_id or record.get("files") != files:
            raise HarnessError(f"Ray job {job_id}: the record on the node does not match the sums the job printed")
        record["run_id"] = target_id
        # how the image reached the node (pulled by digest, found, built) and how the files came home
        record["ray"] = {
            "job_id": job_id,
            "attempt_on_node": run_id,
            "image": image_note(record.get("image")),
            "files_came": how,
        }
        write_json_atomic(staging / RECORD, record)
        staging.rename(store.run_dir(target_id))
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    store.note_finished(target_id)
    return record


def copy_run(
    node_store: Path, result: dict[str, Any], base_run_id: str, store: LocalStore, job_id: str
) -> dict[str, Any]:
    """Copy a run folder from a node's store (readable here by path) into ``store`` and check every
    file against the sums the job printed; the record (under a fresh attempt id where the store
    holds the run already). The node store is removed once the run is home.

    Raises HarnessError naming the first file that is missing, a link, or has another sha256."""
    source = LocalStore(node_store).run_dir(_check_run_id(result, base_run_id, job_id))

    def fill(staging: Path) -> dict[str, Any]:
        record = dict(read_record(source / RECORD))
        if record.get("files") != result["files"]:
            return record  # refused by _land, before any file is copied
        staging.mkdir()
        for relative, digest in result["files"].items():
            try:
                copy_beneath(source, relative, staging / relative)
                copied = sha256_beneath(staging, relative)
            except (UnsafeFile, OSError) as exc:
                raise HarnessError(f"cannot copy {relative} from the node: {exc}") from None
            if copied != digest:
                raise HarnessError(f"{relative} arrived with another sha256 than the node's")
        return record

    record = _land(result, base_run_id, store, job_id, fill, "by path (shared file system)")
    shutil.rmtree(node_store, ignore_errors=True)
    return record


def receive_run(log: str, result: dict[str, Any], base_run_id: str, store: LocalStore, job_id: str) -> dict[str, Any]:
    """Unpack a run folder that came home in a job's log (the node store is not read: the node may
    be another machine) into ``store``, every file checked against the sums the job printed."""
    from harness.backends.ray_files import archive_of, unpack_files

    digest = result.get("archive_sha256")
    if not isinstance(digest, str):
        raise HarnessError(f"Ray job {job_id}: its result names no archive")

    def fill(staging: Path) -> dict[str, Any]:
        return unpack_files(archive_of(log, digest), result["files"], staging)

    return _land(result, base_run_id, store, job_id, fill, "through Ray (the job's log)")


def node_store() -> Path:
    """A fresh store folder for one job attempt on its node (node-local: the temporary folder)."""
    return Path(tempfile.gettempdir()) / "harness-ray-runs" / secrets.token_hex(8)


def files_mode() -> str:
    """How records come home: ``auto`` (by path when the node can see a marker this side leaves in
    its store, else through Ray) or ``ray`` (always through Ray); $HARNESS_RAY_FILES sets it."""
    mode = os.environ.get(FILES_ENV) or "auto"
    if mode not in ("auto", "ray"):
        raise HarnessError(f"${FILES_ENV}={mode[:40]!r}: choose auto or ray")
    return mode


@dataclass(frozen=True)
class RunOptions:
    """What one Ray job is told beyond its run: a reproduction's original, a forced rebuild, a
    registry image (host/name@sha256:...) to pull by digest and the image id it must have."""

    reproduces: str | None = None
    force_build: bool = False
    image_ref: str | None = None
    image_id: str | None = None

    def arguments(self) -> list[str]:
        """The ray_task options that say this."""
        args: list[str] = []
        if self.reproduces:
            args += ["--reproduces", self.reproduces]
        if self.force_build:
            args.append("--force-build")
        if self.image_ref:
            args += ["--image-ref", self.image_ref]
        if self.image_id:
            args += ["--image-id", self.image_id]
        return args


def seal_unfinished(node_root: Path, base_run_id: str, status: str, detail: str) -> dict[str, Any] | None:
    """A run the job began but never sealed (ended before its runner could): seal it on the node
    with ``status`` and return what the job would have printed; None where it left no record."""
    node = LocalStore(node_root)
    if not node.runs_dir.is_dir():
        return None
    for folder in sorted(node.runs_dir.iterdir()):
        suffix = folder.name[len(base_run_id) :]
        if not folder.name.startswith(base_run_id) or (suffix and not ATTEMPT_SUFFIX.fullmatch(suffix)):
            continue
        try:
            record = node.load(folder.name)
        except HarnessError:
            continue
        if record.get("status") == "running":
            record["status"], record["detail"] = status, detail
            record = node.seal(record)
        return {"run_id": record["run_id"], "status": record.get("status"), "files": record.get("files") or {}}
    return None


class RayJob(Job):
    """One run as one Ray job."""

    def __init__(self, spec: RunSpec, position: int, node_store: Path):
        self.spec = spec
        self.run_id = spec.run_id
        self.position = position
        self.node_store = node_store
        self.options = RunOptions()
        self.job_id = ""
        self.attempts = 0
        self.record: dict[str, Any] | None = None

    def status(self) -> str:
        return str(self.record.get("status")) if self.record else "running"

    def result(self, timeout: float | None = None) -> dict[str, Any]:
        if self.record is None:  # records are brought home by RayBackend.collect, not waited for here
            waited = f" (asked to wait {timeout}s)" if timeout else ""
            raise TimeoutError(f"{self.run_id}: Ray job {self.job_id} has not been collected{waited}")
        return self.record


class RayBackend(Backend):
    """One Ray job per run; waits for them and brings each record home, verified."""

    name = "ray"

    def __init__(self, store: LocalStore, address: str, runtime: str = "auto", echo: Echo = print):
        self.store = store
        self.address = address
        self.runtime = runtime
        self.echo = echo
        self.client = job_client(address)
        self.submission: Submission | None = None
        self.state_file: Path | None = None
        self.files = files_mode()
        self.run_options: dict[str, RunOptions] = {}  # by run id: what its job is told beyond the run

    @classmethod
    def create(cls, store: LocalStore, options: BackendOptions) -> RayBackend:
        """Nodes run docker where they have an engine, else process, unless process or podman is asked for."""
        node_runtime = options.runtime if options.runtime in ("process", "podman") else "auto"
        return cls(store, cluster_address(options.address), node_runtime, options.echo)

    def submit(self, specs: list[RunSpec], sweep: SweepState) -> list[Job]:
        """Check that a node can hold a run, then submit one Ray job per spec."""
        from harness.backends.slurm_task import save_specs

        loaded = specs[0].loaded
        check_fits(loaded.manifest.hardware, node_resources(self.address), self.address, str(loaded.path))
        submission = Submission(backend=self.name, run_ids=[s.run_id for s in specs], runtime=self.runtime)
        submission.ray_address = self.address
        sweep.submissions.append(submission)
        save_specs(self.store, sweep, specs)
        self.submission = submission
        self.state_file = save_state(self.store, sweep)
        jobs: list[RayJob] = []
        try:
            for position, spec in enumerate(specs):
                job = RayJob(spec, position, node_store())
                job.options = self.run_options.get(spec.run_id, RunOptions())
                jobs.append(job)
                self._start(job, sweep)
        except CLIENT_ERRORS + (KeyboardInterrupt,) as exc:
            self._stop([job for job in jobs if job.job_id], sweep)  # none left running unwatched
            if isinstance(exc, KeyboardInterrupt):
                raise
            raise HarnessError(
                f"the Ray cluster at {self.address} refused a job: {str(exc).splitlines()[0][:200]}"
            ) from None
        return list(jobs)

    def _start(self, job: RayJob, sweep: SweepState) -> None:
        assert self.submission is not None and self.state_file is not None
        index = len(sweep.submissions) - 1
        options = job.options.arguments()
        if self.files == "auto":  # a node that can read this marker shares this side's file system
            marker = secrets.token_hex(16)
            job.node_store.mkdir(parents=True, exist_ok=True)
            (job.node_store / MARKER_FILE).write_text(marker + "\n")
            options += ["--marker", marker]
        entrypoint = [
            sys.executable,
            "-P",  # not the job's working folder first on sys.path: the harness of PYTHONPATH runs
            "-m",
            "harness.backends.ray_task",
            *options,
            str(self.state_file),
            str(index),
            str(job.position),
            str(job.node_store),
        ]
        # stop_job: SIGTERM, then this long for the runner to stop the container and seal the record
        env = {"PYTHONPATH": str(Path(__file__).resolve().parents[2]), "RAY_JOB_STOP_WAIT_TIME_S": str(STOP_GRACE_S)}
        if os.environ.get("HARNESS_REQUIRE_LIMITS"):
            env["HARNESS_REQUIRE_LIMITS"] = os.environ["HARNESS_REQUIRE_LIMITS"]
        job.attempts += 1
        job.job_id = self.client.submit_job(
            # exec: the run's parent is Ray's job supervisor, not a shell that a stop would kill first
            entrypoint="exec " + shlex.join(entrypoint),
            submission_id=f"harness-{job.run_id}-{secrets.token_hex(3)}",
            runtime_env={"env_vars": env},
            metadata={"harness_sweep": sweep.sweep_id, "harness_run": job.run_id},
            **entrypoint_resources(job.spec.loaded.manifest.hardware),
        )
        ids = self.submission.ray_job_ids
        if job.position < len(ids):
            ids[job.position] = job.job_id
        else:
            ids.append(job.job_id)
        save_state(self.store, sweep)

    def collect(self, jobs: list[Job], sweep: SweepState, outcome: SweepOutcome) -> None:
        """Wait for every job, bring its record home; Ctrl-C stops the jobs still going."""
        pending = [job for job in jobs if isinstance(job, RayJob)]
        self.echo(f"submitted {len(pending)} runs to the Ray cluster at {self.address}")
        finished = 0
        answered = time.monotonic()
        try:
            while pending:
                for job in list(pending):
                    try:
                        ended = self._settle(job, sweep)
                        answered = time.monotonic()
                    except CLIENT_ERRORS as exc:  # the head does not answer (for now)
                        if time.monotonic() - answered < UNREACHABLE_S:
                            continue
                        self._give_up(pending, f"the Ray cluster at {self.address} stopped answering ({exc})")
                        finished += len(pending)
                        pending.clear()
                        break
                    if ended:
                        pending.remove(job)
                        finished += 1
                        record = job.result()
                        detail = (
                            f" ({record['detail']})"
                            if record.get("status") != "completed" and record.get("detail")
                            else ""
                        )
                        came = record.get("ray") or {}
                        how = f"; image: {came['image']}; files {came['files_came']}" if came else ""
                        self.echo(
                            f"[{finished}/{len(jobs)}] {record.get('run_id')} {record.get('status')}{detail}{how}"
                        )
                if pending:
                    time.sleep(POLL_S)
        except KeyboardInterrupt:
            self.echo("interrupted: stopping the Ray jobs")
            self._stop(pending, sweep)
            raise
        finally:
            outcome.records = [job.record for job in jobs if isinstance(job, RayJob) and job.record is not None]

    def _give_up(self, jobs: list[RayJob], reason: str) -> None:
        for job in jobs:
            job.record = {"run_id": job.run_id, "status": "node_fail", "detail": f"Ray job {job.job_id}: {reason}"}
            self.echo(f"{job.run_id} node_fail ({reason})")

    def _settle(self, job: RayJob, sweep: SweepState) -> bool:
        """Whether the job has ended (its record then set); resubmits a job lost with its node.

        Ray reports STOPPED or FAILED only once the entrypoint has exited, so a job that ended
        without its result line will not print one later."""
        info = self.client.get_job_info(job.job_id)
        status = str(getattr(info.status, "value", info.status))
        if status in ("PENDING", "RUNNING"):
            return False
        try:
            log = self.client.get_job_logs(job.job_id)
        except CLIENT_ERRORS:  # the log lives on the job's node, which may be gone
            log = ""
        result = result_of(log)
        if result is not None:
            try:
                if "archive_sha256" in result:  # the node could not share its folder: it is in the log
                    record = receive_run(log, result, job.run_id, self.store, job.job_id)
                    shutil.rmtree(job.node_store, ignore_errors=True)  # this side's marker, if any
                else:
                    record = copy_run(job.node_store, result, job.run_id, self.store, job.job_id)
            except HarnessError as exc:
                job.record = {"run_id": job.run_id, "status": "failed", "detail": str(exc)}
                return True
            if status == "STOPPED" and record.get("status") in ("interrupted", "running"):
                record = dict(
                    self.store.mark(record["run_id"], "cancelled", f"cancelled through Ray (job {job.job_id})")
                )
            job.record = record
            return True
        reason = " ".join(str(info.message or "no message").split())[:300]
        said = [line for line in log[-LOG_TAIL:].splitlines() if line.startswith("error: ")]
        if said:  # the task's own one-line error (a manifest changed since submission, a failed build)
            reason += f"; {said[-1][:300]}"
        if status == "FAILED" and job.attempts < ATTEMPTS:
            self.echo(f"{job.run_id}: Ray job {job.job_id} failed without a record ({reason}): submitting it again")
            job.node_store = node_store()  # what the lost attempt left is not touched again
            self._start(job, sweep)
            return False
        state = "cancelled" if status == "STOPPED" else "node_fail"
        detail = f"Ray job {job.job_id} {status}: {reason}"
        # only a node store this side can read (a marker was left there) may hold what the run left
        unsealed = seal_unfinished(job.node_store, job.run_id, state, detail) if self.files == "auto" else None
        if unsealed is not None:
            try:
                job.record = copy_run(job.node_store, unsealed, job.run_id, self.store, job.job_id)
                return True
            except HarnessError as exc:
                detail += f"; its record could not come home: {exc}"
        job.record = {"run_id": job.run_id, "status": state, "detail": detail}
        return True

    def _stop(self, jobs: list[RayJob], sweep: SweepState) -> None:
        """Stop the jobs and wait (bounded) for each to hand back its interrupted record."""
        for job in jobs:
            try:
                self.client.stop_job(job.job_id)
            except CLIENT_ERRORS:  # a job that already ended cannot be stopped
                continue
        deadline = time.monotonic() + STOP_WAIT_S
        left = list(jobs)
        while left and time.monotonic() < deadline:
            left = [job for job in left if not self._settle_stopped(job, sweep)]
            if left:
                time.sleep(POLL_S)
        for job in left:
            job.record = {"run_id": job.run_id, "status": "cancelled", "detail": f"Ray job {job.job_id} stopped"}

    def _settle_stopped(self, job: RayJob, sweep: SweepState) -> bool:
        job.attempts = ATTEMPTS  # no resubmission while stopping
        try:
            return self._settle(job, sweep)
        except CLIENT_ERRORS:  # the cluster may be gone: nothing more to collect
            return True

    @classmethod
    def run_states(cls, sweep: SweepState, store: LocalStore) -> dict[str, str]:
        """Each run's state: its records in the store, else its latest Ray job's status."""
        latest: dict[str, tuple[str, str]] = {}
        for submission in sweep.submissions:
            if submission.backend == cls.name and submission.ray_address:
                for run_id, job_id in zip(submission.run_ids, submission.ray_job_ids, strict=False):
                    latest[run_id] = (submission.ray_address, job_id)
        clients: dict[str, Any] = {}
        states: dict[str, str] = {}
        for run_id in sweep.run_ids:
            attempts = attempt_records(store, run_id)
            if any(r.get("status") == "completed" for r in attempts):
                states[run_id] = "completed"
                continue
            ray_state = ""
            if run_id in latest:
                address, job_id = latest[run_id]
                try:
                    client = clients.get(address) or clients.setdefault(address, job_client(address))
                    status = client.get_job_status(job_id)
                    ray_state = STATE_OF_RAY.get(str(getattr(status, "value", status)), "")
                except CLIENT_ERRORS + (HarnessError,):  # cluster gone: the store's records are all there is
                    ray_state = ""
            if ray_state in ("queued", "running"):
                states[run_id] = ray_state
            elif attempts and attempts[-1].get("status") != "running":
                states[run_id] = str(attempts[-1].get("status"))
            else:
                states[run_id] = {"failed": "node_fail", "": "queued"}.get(ray_state, ray_state)
        return states


def run_on_ray(
    specs: list[RunSpec],
    options: dict[str, RunOptions],
    store: LocalStore,
    address: str | None,
    runtime: str = "auto",
    echo: Echo = print,
    label: str = "reproduction",
) -> list[dict[str, Any]]:
    """Run ``specs`` on the Ray cluster as a sweep of their own (each run as a new attempt, whatever
    the store holds), with ``options`` per run id; waits and returns their records in spec order
    (a run that never came home has a record only here, not in the store). Ctrl-C stops the jobs."""
    from harness.backends import BackendOptions
    from harness.backends.sweeps import SweepState, sweep_id_for
    from harness.runtime import signals

    backend = RayBackend.create(store, BackendOptions(runtime=runtime, echo=echo, address=address))
    backend.run_options = dict(options)
    run_ids = [spec.run_id for spec in specs]
    loaded = specs[0].loaded
    sweep = SweepState(
        sweep_id=sweep_id_for(f"{specs[0].name}-{label}", [*run_ids, secrets.token_hex(8)]),
        name=specs[0].name,
        manifest_path=str(loaded.path.resolve()),
        manifest_sha256=loaded.sha256,
        run_ids=run_ids,
    )
    from harness.backends import SweepPlan

    outcome = SweepOutcome(plan=SweepPlan(sweep.sweep_id, specs, list(specs)), backend="ray", dry_run=False)
    previous_handlers = signals.install()  # SIGTERM and SIGHUP stop the runs like Ctrl-C
    try:
        backend.collect(backend.submit(specs, sweep), sweep, outcome)
    finally:
        signals.restore(previous_handlers)
    return outcome.records


def seed_runner(address: str | None, store: LocalStore, runtime: str = "auto") -> SeedRunner:
    """``harness reproduce --backend ray``: a reproduction's seeds run as Ray jobs, side by side."""
    cluster_address(address)  # no address: one line before anything is pulled or staged

    def run(jobs: list[SeedJob], echo: Echo) -> list[Record]:
        options = {j.spec.run_id: RunOptions(j.reproduces, j.force_build, j.image_ref, j.image_id) for j in jobs}
        node_runtime = runtime if runtime in ("process", "podman") else "auto"
        records = run_on_ray([j.spec for j in jobs], options, store, address, node_runtime, echo)
        return cast("list[Record]", records)

    return run
