"""Run a sweep on a Slurm cluster: one sbatch array job, one array task per run.

Each task runs ``python -m harness.backends.slurm_task <sweep state> <submission> <chunk> <task>``
on its node, which calls :func:`harness.run.runner.execute` (docker where the node has an engine,
process otherwise) and writes the record into the results store, which therefore has to be on a
file system the nodes share. Task states come from squeue (live jobs) and sacct (finished ones,
where the cluster keeps accounting), merged with the records in the store.
"""

from __future__ import annotations

import math
import os
import re
import shlex
import shutil
import socket
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from harness.backends import Backend, BackendOptions, Echo, Job, SweepOutcome
from harness.backends.sweeps import Submission, SweepState, attempt_records, save_state, sweeps_dir
from harness.errors import SlurmError
from harness.store.local import LocalStore

if TYPE_CHECKING:
    from harness.manifest import Hardware
    from harness.run.plan import RunSpec

COMMAND_TIMEOUT_S = 30
TIME_MARGIN_S = 300  # Slurm's limit backs up the runner's own timeout: leave room to write the record
MEMORY_MARGIN_MIB = 512  # the harness process itself shares the task's memory with a process-runtime job
DEFAULT_MAX_ARRAY_SIZE = 1001
SHARED_FILE_SYSTEMS = {
    "nfs",
    "nfs4",
    "lustre",
    "gpfs",
    "beegfs",
    "cifs",
    "smb3",
    "smbfs",
    "ceph",
    "cephfs",
    "glusterfs",
    "fuse.glusterfs",
    "fuse.cephfs",
    "fuse.sshfs",
    "fuse.juicefs",
    "panfs",
    "wekafs",
    "9p",
    "virtiofs",
    "orangefs",
}
# Slurm job state (squeue %T / sacct State) -> harness task state
STATE_OF_SLURM = {
    "PENDING": "queued",
    "REQUEUED": "queued",
    "REQUEUE_HOLD": "queued",
    "REQUEUE_FED": "queued",
    "CONFIGURING": "queued",
    "RESV_DEL_HOLD": "queued",
    "SUSPENDED": "queued",
    "RUNNING": "running",
    "COMPLETING": "running",
    "STAGE_OUT": "running",
    "SIGNALING": "running",
    "RESIZING": "running",
    "STOPPED": "running",
    "COMPLETED": "completed",
    "FAILED": "failed",
    "BOOT_FAIL": "failed",
    "DEADLINE": "failed",
    "SPECIAL_EXIT": "failed",
    "OUT_OF_MEMORY": "oom",
    "CANCELLED": "cancelled",
    "REVOKED": "cancelled",
    "TIMEOUT": "timeout",
    "NODE_FAIL": "node_fail",
    "PREEMPTED": "preempted",
}
REQUEUE_STATES = ("failed", "cancelled", "preempted", "node_fail", "timeout", "oom", "interrupted")


def slurm(args: list[str], what: str | None = None, timeout: float = COMMAND_TIMEOUT_S) -> str:
    """Run a Slurm client command; SlurmError saying what was tried when it cannot."""
    tried = what or shlex.join(args)
    if shutil.which(args[0]) is None:
        raise SlurmError(
            f"Slurm is not reachable: tried `{tried}`, but {args[0]} is not on PATH "
            "(install the Slurm client or run on a login node)",
            command=tried,
            unreachable=True,
        )
    try:
        result = subprocess.run(args, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise SlurmError(
            f"Slurm is not reachable: `{tried}` gave no answer in {timeout:.0f}s", command=tried, unreachable=True
        ) from None
    if result.returncode != 0:
        message = " ".join((result.stderr or result.stdout).split())[:300]
        raise SlurmError(f"`{tried}` failed (exit {result.returncode}): {message or 'no message'}", command=tried)
    return result.stdout


def partitions() -> dict[str, list[str]]:
    """Each partition's nodes; the default partition first. SlurmError when the controller does not answer."""
    try:
        text = slurm(["sinfo", "--noheader", "--Node", "--format=%P|%N"])
    except SlurmError as exc:
        if exc.unreachable:
            raise
        raise SlurmError(f"Slurm is not reachable: {exc}", command=exc.command, unreachable=True) from None
    found: dict[str, list[str]] = {}
    default = None
    for line in text.splitlines():
        if "|" not in line:
            continue
        name, node = line.strip().split("|", 1)
        if name.endswith("*"):
            name = name[:-1]
            default = name
        found.setdefault(name, [])
        if node not in found[name]:
            found[name].append(node)
    if default is not None:
        found = {default: found[default], **{k: v for k, v in found.items() if k != default}}
    return found


def partition_nodes(partition: str | None) -> tuple[str, list[str]]:
    """The chosen (or default) partition and its nodes; a clear error for one that does not exist."""
    known = partitions()
    if not known:
        raise SlurmError("Slurm answers but lists no partitions (`sinfo` is empty)")
    if partition is None:
        name = next(iter(known))
        return name, known[name]
    if partition not in known:
        raise SlurmError(f"no Slurm partition {partition!r}: this cluster has {', '.join(known)}")
    return partition, known[partition]


def file_system_type(path: Path) -> str:
    """The type of the file system holding ``path`` (from /proc/mounts; longest mount point wins)."""
    path = path.resolve()
    best, best_type = "", "unknown"
    try:
        lines = Path("/proc/mounts").read_text().splitlines()
    except OSError:
        return best_type
    for line in lines:
        fields = line.split()
        if len(fields) < 3:
            continue
        mount_point = fields[1].replace("\\040", " ")
        if (str(path) == mount_point or str(path).startswith(mount_point.rstrip("/") + "/")) and len(mount_point) > len(
            best
        ):
            best, best_type = mount_point, fields[2]
    return best_type


def check_shared(paths: dict[str, Path], nodes: list[str], this_host: str | None = None) -> None:
    """Refuse a store (or project) that the nodes cannot see: nodes other than this host need a
    shared file system. ``HARNESS_SHARED_STORE=1`` vouches for a mount this check cannot recognise."""
    this_host = (this_host or socket.gethostname()).split(".")[0]
    others = [node for node in nodes if node.split(".")[0] not in (this_host, "localhost")]
    if not others or os.environ.get("HARNESS_SHARED_STORE") == "1":
        return
    for label, path in paths.items():
        kind = file_system_type(path)
        if kind not in SHARED_FILE_SYSTEMS:
            raise SlurmError(
                f"the {label} {path} is on a local {kind} file system of {this_host}, which node(s) "
                f"{', '.join(others[:3])} cannot see: put it on a shared file system (NFS, Lustre, GPFS, ...) "
                "with HARNESS_HOME, or set HARNESS_SHARED_STORE=1 if it is shared"
            )


def max_array_size() -> int:
    """The cluster's MaxArraySize (array task ids must stay below it)."""
    try:
        text = slurm(["scontrol", "show", "config"])
    except SlurmError:
        return DEFAULT_MAX_ARRAY_SIZE
    match = re.search(r"^MaxArraySize\s*=\s*(\d+)", text, re.MULTILINE)
    return int(match.group(1)) if match else DEFAULT_MAX_ARRAY_SIZE


def slurm_time(seconds: float) -> str:
    """Seconds as Slurm's ``D-HH:MM:SS``."""
    total = math.ceil(seconds)
    days, rest = divmod(total, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{days}-{hours:02d}:{minutes:02d}:{secs:02d}"


def resource_options(hardware: Hardware) -> list[str]:
    """sbatch options for one run of this hardware target."""
    options = [
        f"--cpus-per-task={max(1, math.ceil(float(hardware.cpus)))}",
        f"--mem={math.ceil(hardware.memory_bytes / 2**20) + MEMORY_MARGIN_MIB}M",
        f"--time={slurm_time(hardware.timeout_seconds + TIME_MARGIN_S)}",
    ]
    if hardware.gpus > 0:
        options.append(f"--gres=gpu:{hardware.gpus}")
    return options


def array_script(
    state_file: Path,
    submission_index: int,
    chunk_index: int,
    task_count: int,
    hardware: Hardware,
    job_name: str,
    log_dir: Path,
    store_root: Path,
    throttle: int | None = None,
    partition: str | None = None,
    account: str | None = None,
) -> str:
    """The text of the sbatch script whose array tasks run ``task_count`` runs of the sweep."""
    array = f"0-{task_count - 1}" + (f"%{throttle}" if throttle else "")
    options = [
        f"--job-name={job_name}",
        f"--array={array}",
        *resource_options(hardware),
        f"--output={log_dir}/%A_%a.out",
        "--open-mode=append",
        "--requeue",
    ]
    if partition:
        options.append(f"--partition={partition}")
    if account:
        options.append(f"--account={account}")
    task = [
        sys.executable,
        "-m",
        "harness.backends.slurm_task",
        str(state_file),
        str(submission_index),
        str(chunk_index),
    ]
    lines = [
        "#!/bin/bash",
        *(f"#SBATCH {shlex.quote(option)}" for option in options),
        "",
        "# One run of a harness sweep; written by harness.backends.slurm.",
        f"export HARNESS_HOME={shlex.quote(str(store_root))}",
        f"export HARNESS_SLURM_LOG_DIR={shlex.quote(str(log_dir))}",
        f'exec {shlex.join(task)} "$SLURM_ARRAY_TASK_ID"',
        "",
    ]
    return "\n".join(lines)


def parse_squeue(text: str) -> dict[str, tuple[str, str]]:
    """``squeue -h -r -o '%i|%T|%r'`` output -> {"<job>_<task>": (harness state, reason)}."""
    states: dict[str, tuple[str, str]] = {}
    for line in text.splitlines():
        parts = line.strip().split("|")
        if len(parts) < 2 or not parts[0]:
            continue
        for key in expand_task_ids(parts[0]):
            states[key] = (STATE_OF_SLURM.get(parts[1].upper(), parts[1].lower()), parts[2] if len(parts) > 2 else "")
    return states


def parse_sacct(text: str) -> dict[str, tuple[str, str]]:
    """``sacct -n -P -X -o JobID,State,ExitCode`` output -> {"<job>_<task>": (harness state, exit code)}."""
    states: dict[str, tuple[str, str]] = {}
    for line in text.splitlines():
        parts = line.strip().split("|")
        if len(parts) < 2 or not parts[0]:
            continue
        slurm_state = parts[1].split()[0].upper() if parts[1].split() else ""  # "CANCELLED by 0"
        for key in expand_task_ids(parts[0]):
            states[key] = (STATE_OF_SLURM.get(slurm_state, slurm_state.lower()), parts[2] if len(parts) > 2 else "")
    return states


def expand_task_ids(job_id: str) -> list[str]:
    """``12_3`` -> [12_3]; ``12_[0-2,5%2]`` -> [12_0, 12_1, 12_2, 12_5]; other ids unchanged."""
    match = re.fullmatch(r"(\d+)_\[([^\]]+)\]", job_id)
    if not match:
        return [job_id]
    base, spec = match.group(1), match.group(2).split("%")[0]
    keys = []
    for part in spec.split(","):
        low, _, high = part.partition("-")
        if low.isdigit() and (not high or high.isdigit()):
            keys += [f"{base}_{i}" for i in range(int(low), int(high or low) + 1)]
    return keys


def scheduler_states(job_ids: list[str]) -> dict[str, tuple[str, str]]:
    """Task states of array jobs: sacct where accounting is kept, squeue (which wins) for live jobs."""
    if not job_ids:
        return {}
    joined = ",".join(job_ids)
    states: dict[str, tuple[str, str]] = {}
    if shutil.which("sacct"):
        result = subprocess.run(
            ["sacct", "-n", "-P", "-X", "--array", "-j", joined, "-o", "JobID,State,ExitCode"],
            capture_output=True,
            text=True,
            timeout=COMMAND_TIMEOUT_S,
        )
        if result.returncode == 0:  # without accounting sacct says so and exits 1; squeue still knows
            states.update(parse_sacct(result.stdout))
    text = slurm(["squeue", "-h", "-r", "--states=all", "-j", joined, "-o", "%i|%T|%r"])
    states.update(parse_squeue(text))
    return states


def task_key(submission: Submission, position: int) -> str:
    """The Slurm id (``<job>_<task>``) of the submission's ``position``-th run."""
    chunk, task = divmod(position, submission.slurm_chunk_size)
    return f"{submission.slurm_job_ids[chunk]}_{task}"


def latest_tasks(sweep: SweepState) -> dict[str, tuple[Submission, str]]:
    """For each run, its latest Slurm submission and task id."""
    tasks: dict[str, tuple[Submission, str]] = {}
    for submission in sweep.submissions:
        if submission.backend != "slurm" or not submission.slurm_job_ids:
            continue
        for position, run_id in enumerate(submission.run_ids):
            tasks[run_id] = (submission, task_key(submission, position))
    return tasks


def run_states(sweep: SweepState, store: LocalStore) -> dict[str, str]:
    """Each run's state, from its latest task's Slurm state and its records in the store."""
    tasks = latest_tasks(sweep)
    job_ids = sorted({key.split("_")[0] for _, key in tasks.values()})
    slurm_states = scheduler_states(job_ids) if job_ids else {}
    states: dict[str, str] = {}
    for run_id in sweep.run_ids:
        attempts = attempt_records(store, run_id)
        record_status = attempts[-1].get("status") if attempts else None
        if any(r.get("status") == "completed" for r in attempts):
            states[run_id] = "completed"
            continue
        task = tasks.get(run_id)
        scheduled = slurm_states.get(task[1], ("", ""))[0] if task else ""
        if scheduled in ("queued", "running"):
            states[run_id] = scheduled
        elif record_status and record_status != "running":
            states[run_id] = record_status  # the runner's own verdict (completed, failed, cancelled, ...)
        else:
            states[run_id] = scheduled or record_status or "queued"
    return states


def requeue(sweep: SweepState, store: LocalStore, echo: Echo = print) -> list[str]:
    """Send the sweep's failed, cancelled and preempted runs back to the queue. Returns their run ids.

    Tasks the controller still knows are requeued in place (``scontrol requeue``, same job id);
    any it has forgotten are submitted again as a new array job.
    """
    states = run_states(sweep, store)
    tasks = latest_tasks(sweep)
    again = [run_id for run_id, state in states.items() if state in REQUEUE_STATES]
    resubmit: list[str] = []
    for run_id in again:
        task = tasks.get(run_id)
        if task is None:
            resubmit.append(run_id)
            continue
        result = subprocess.run(
            ["scontrol", "requeue", task[1]], capture_output=True, text=True, timeout=COMMAND_TIMEOUT_S
        )
        if result.returncode != 0:
            resubmit.append(run_id)
    if resubmit:
        from harness.backends.slurm_task import rebuild_specs
        from harness.manifest import load_manifest

        loaded = load_manifest(sweep.manifest_path)
        previous = sweep.submissions[-1] if sweep.submissions else None
        backend = SlurmBackend(
            store,
            partition=previous.partition if previous else None,
            account=previous.account if previous else None,
            runtime=previous.runtime if previous else "auto",
            echo=echo,
        )
        backend.submit([s for s in rebuild_specs(sweep, loaded) if s.run_id in set(resubmit)], sweep)
    if again:
        echo(f"requeued {len(again)} runs of {sweep.sweep_id}")
    return again


class SlurmJob(Job):
    """One array task."""

    def __init__(self, run_id: str, task_id: str, sweep: SweepState, store: LocalStore):
        self.run_id = run_id
        self.task_id = task_id
        self.sweep = sweep
        self.store = store

    def status(self) -> str:
        return run_states(self.sweep, self.store).get(self.run_id, "queued")

    def result(self, timeout: float | None = None) -> dict[str, Any]:
        import time

        deadline = None if timeout is None else time.monotonic() + timeout
        while not self.done():
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"{self.run_id} ({self.task_id}) has not ended after {timeout}s")
            time.sleep(2)
        attempts = attempt_records(self.store, self.run_id)
        if attempts:
            return attempts[-1]
        return {"run_id": self.run_id, "status": self.status(), "detail": f"Slurm task {self.task_id} wrote no record"}


class SlurmBackend(Backend):
    """One sbatch array job per sweep (split in chunks where it exceeds MaxArraySize)."""

    name = "slurm"

    def __init__(
        self,
        store: LocalStore,
        jobs: int | None = None,
        partition: str | None = None,
        account: str | None = None,
        runtime: str = "auto",
        echo: Echo = print,
    ):
        self.store = store
        self.jobs = jobs
        self.runtime = runtime
        self.echo = echo
        self.account = account
        self.partition, self.nodes = partition_nodes(partition)  # fails early: unreachable, unknown partition
        self.explicit_partition = partition

    @classmethod
    def create(cls, store: LocalStore, options: BackendOptions) -> SlurmBackend:
        """Nodes run docker where they have an engine, else process, unless process or podman is asked for."""
        node_runtime = options.runtime if options.runtime in ("process", "podman") else "auto"
        return cls(
            store,
            jobs=options.jobs,
            partition=options.partition,
            account=options.account,
            runtime=node_runtime,
            echo=options.echo,
        )

    def collect(self, jobs: list[Job], sweep: SweepState, outcome: SweepOutcome) -> None:
        """Slurm runs on: say where to follow them and return."""
        outcome.slurm_job_ids = list(sweep.submissions[-1].slurm_job_ids)
        self.echo(
            f"submitted {len(jobs)} runs as Slurm job {', '.join(outcome.slurm_job_ids)}; "
            f"follow with `harness status {sweep.sweep_id}`"
        )

    @classmethod
    def run_states(cls, sweep: SweepState, store: LocalStore) -> dict[str, str]:
        """Each run's state, from its latest task's Slurm state and its records in the store."""
        return run_states(sweep, store)

    def submit(self, specs: list[RunSpec], sweep: SweepState) -> list[Job]:
        """Write the sweep's state and scripts into the store and sbatch one array job."""
        loaded = specs[0].loaded
        check_shared({"results store": self.store.root, "project": loaded.root}, self.nodes)
        chunk_size = max(1, max_array_size() - 1)
        submission = Submission(
            backend=self.name,
            run_ids=[s.run_id for s in specs],
            runtime=self.runtime,
            partition=self.explicit_partition,
            account=self.account,
            slurm_chunk_size=chunk_size,
        )
        sweep.submissions.append(submission)
        index = len(sweep.submissions) - 1
        from harness.backends.slurm_task import save_specs

        save_specs(self.store, sweep, specs)
        folder = sweeps_dir(self.store) / sweep.sweep_id
        log_dir = folder / "logs"
        log_dir.mkdir(parents=True, exist_ok=True)
        state_file = save_state(self.store, sweep)
        for chunk_index, start in enumerate(range(0, len(specs), chunk_size)):
            count = min(chunk_size, len(specs) - start)
            text = array_script(
                state_file,
                index,
                chunk_index,
                count,
                loaded.manifest.hardware,
                f"harness-{sweep.name}",
                log_dir,
                self.store.root,
                self.jobs,
                self.explicit_partition,
                self.account,
            )
            script = folder / f"submission-{index}-{chunk_index}.sbatch"
            script.write_text(text)
            job_id = slurm(["sbatch", "--parsable", str(script)]).strip().split(";")[0]
            submission.slurm_job_ids.append(job_id)
            save_state(self.store, sweep)
        return [SlurmJob(s.run_id, task_key(submission, i), sweep, self.store) for i, s in enumerate(specs)]
