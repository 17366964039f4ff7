"""One Slurm array task: find its run in the sweep's state and run it with the single-run code.

``python -m harness.backends.slurm_task <state file> <submission> <chunk> <task id>``: run by the
sbatch scripts of :mod:`harness.backends.slurm`. Exit 0 when the run completed, 1 otherwise (so
sacct shows FAILED for a failed run), 2 for a task that cannot find its run.
"""

from __future__ import annotations

import json
import os
import re
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from harness.backends.sweeps import SweepState, load_state, sweeps_dir
from harness.errors import HarnessError
from harness.store.local import LocalStore
from harness.store.record import Record
from harness.util.fsutil import write_json_atomic

if TYPE_CHECKING:
    from harness.manifest import LoadedManifest
    from harness.run.plan import RunSpec

# Slurm's reason for ending a task -> the record's status and detail (the runner only saw SIGTERM)
ENDED_BY_SLURM = {
    "CANCELLED": ("cancelled", "cancelled through Slurm (scancel)"),
    "TIMEOUT": ("timeout", "Slurm's time limit ended the task"),
    "PREEMPTED": ("interrupted", "preempted by Slurm"),
    "NODE_FAIL": ("interrupted", "Slurm reported a node failure"),
}


def specs_path(store: LocalStore, sweep_id: str) -> Path:
    """Where a sweep's run specs (params, seed, smoke per run id) are kept for the nodes."""
    return sweeps_dir(store) / sweep_id / "specs.json"


def save_specs(store: LocalStore, sweep: SweepState, specs: list[RunSpec]) -> None:
    """Add these runs' params and seeds to the sweep's specs file."""
    path = specs_path(store, sweep.sweep_id)
    runs: dict[str, Any] = json.loads(path.read_text())["runs"] if path.is_file() else {}
    for spec in specs:
        runs[spec.run_id] = {"params": spec.params, "seed": spec.seed, "smoke": spec.smoke}
    write_json_atomic(
        path, {"manifest_path": sweep.manifest_path, "manifest_sha256": sweep.manifest_sha256, "runs": runs}
    )


def rebuild_specs(sweep: SweepState, loaded: LoadedManifest, store: LocalStore | None = None) -> list[RunSpec]:
    """The sweep's RunSpecs again, from the manifest file and the saved params; refused when the
    manifest changed since submission (the runs would no longer be the ones asked for)."""
    from harness.run.plan import RunSpec, config_key

    if loaded.sha256 != sweep.manifest_sha256:
        raise HarnessError(
            f"{loaded.path} changed since sweep {sweep.sweep_id} was submitted: "
            "submit the sweep again with `harness run`"
        )
    store = store or LocalStore()
    runs = json.loads(specs_path(store, sweep.sweep_id).read_text())["runs"]
    specs = []
    for run_id, saved in runs.items():
        key = config_key(loaded, saved["params"], saved["seed"], saved["smoke"])
        spec = RunSpec(loaded=loaded, params=saved["params"], seed=saved["seed"], smoke=saved["smoke"], config_key=key)
        if spec.run_id != run_id:
            raise HarnessError(f"run {run_id} of sweep {sweep.sweep_id} no longer matches its manifest or lockfile")
        specs.append(spec)
    return specs


STEPD_CANCEL = re.compile(r"\*\*\* JOB \d+ ON \S+ CANCELLED AT \S+(?: DUE TO ([A-Z ]+?))? \*\*\*")
REASON_OF_STEPD = {None: "CANCELLED", "TIME LIMIT": "TIMEOUT", "PREEMPTION": "PREEMPTED", "NODE FAILURE": "NODE_FAIL"}


def why_slurm_ended(task_output: str) -> str:
    """Why Slurm signalled this task, from slurmstepd's notice in the task's output file
    (``*** JOB 7 ON n1 CANCELLED AT ... DUE TO TIME LIMIT ***``): "" when it did not.

    While the task is still ending, slurmctld reports its state only as COMPLETING, so the
    notice that slurmstepd writes before it sends SIGTERM is the one place that says why.
    """
    matches = list(STEPD_CANCEL.finditer(task_output))
    if not matches:
        return ""
    return REASON_OF_STEPD.get(matches[-1].group(1), "CANCELLED")


def task_output() -> str:
    """This attempt's part of the task's output file (after its last start line)."""
    job, task = os.environ.get("SLURM_ARRAY_JOB_ID"), os.environ.get("SLURM_ARRAY_TASK_ID")
    log_dir = os.environ.get("HARNESS_SLURM_LOG_DIR")
    if not (job and task and log_dir):
        return ""
    try:
        text = (Path(log_dir) / f"{job}_{task}.out").read_text(errors="replace")
    except OSError:
        return ""
    return text[text.rfind(START_LINE) :]


START_LINE = "harness: start "


def run_task(state_file: Path, submission_index: int, chunk_index: int, task_id: int) -> Record:
    """Run the run this task stands for and return its record."""
    from harness.manifest import load_manifest
    from harness.run.runner import execute
    from harness.runtime.engine import resolve_runtime

    store = LocalStore(state_file.parent.parent)
    sweep = load_state(store, state_file.stem)
    submission = sweep.submissions[submission_index]
    position = chunk_index * submission.slurm_chunk_size + task_id
    run_id = submission.run_ids[position]
    loaded = load_manifest(sweep.manifest_path)
    spec = next((s for s in rebuild_specs(sweep, loaded, store) if s.run_id == run_id), None)
    if spec is None:
        raise HarnessError(f"sweep {sweep.sweep_id} has no saved spec for run {run_id}")
    runtime = resolve_runtime(submission.runtime)
    print(
        f"{START_LINE}{run_id} on {os.uname().nodename} ({runtime} runtime), Slurm task "
        f"{os.environ.get('SLURM_ARRAY_JOB_ID')}_{os.environ.get('SLURM_ARRAY_TASK_ID')}",
        flush=True,
    )
    record = execute(spec, store, runtime=runtime)
    if record.get("status") == "interrupted":
        status, detail = ENDED_BY_SLURM.get(why_slurm_ended(task_output()), (None, None))
        if status is not None:
            record = store.mark(record["run_id"], status, detail or "")
    print(f"harness: {record['run_id']} {record.get('status')}", flush=True)
    return record


def main(argv: list[str]) -> int:
    """Entry point of one array task."""
    if len(argv) != 4:
        print(
            "usage: python -m harness.backends.slurm_task <state file> <submission> <chunk> <task id>", file=sys.stderr
        )
        return 2
    try:
        record = run_task(Path(argv[0]), int(argv[1]), int(argv[2]), int(argv[3]))
    except HarnessError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0 if record.get("status") == "completed" else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
