"""One Ray job: run one run of a sweep into a store on the node, and say which files it wrote.

``python -m harness.backends.ray_task <state file> <submission> <position> <node store>``: the
entrypoint of the Ray jobs that :mod:`harness.backends.ray` submits. The run goes into the node's
own store (not the submitting one); the last line printed names the run and the sha256 of each of
its files, which the submitting side checks every copied file against. Exit 0 when the run
completed, 1 otherwise, 2 for a job that cannot find its run.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

from harness.backends.slurm_task import rebuild_specs
from harness.backends.sweeps import load_state
from harness.errors import HarnessError
from harness.store.local import LocalStore

RESULT_MARK = "harness-ray-record "


def result_line(record: dict[str, Any]) -> str:
    """The line that tells the submitting side which run this job wrote, and its files' sha256."""
    return RESULT_MARK + json.dumps(
        {"run_id": record["run_id"], "status": record.get("status"), "files": record.get("files") or {}},
        sort_keys=True,
    )


def die_with_parent() -> None:
    """Ask Linux to SIGTERM this process when Ray's job supervisor dies (its raylet killed, its node
    lost): the runner then stops the container and seals an interrupted record, instead of the run
    going on unseen on a node the cluster has given up."""
    import ctypes
    import signal

    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        return
    if os.getppid() == 1:  # the parent died before the request took effect
        os.kill(os.getpid(), signal.SIGTERM)


def run_job(state_file: Path, submission_index: int, position: int, node_store: Path) -> dict[str, Any]:
    """Run the sweep's run at ``position`` of submission ``submission_index`` into ``node_store``."""
    from harness.manifest import load_manifest
    from harness.run.runner import execute
    from harness.runtime.engine import resolve_runtime

    sweep = load_state(LocalStore(state_file.parent.parent), state_file.stem)
    submission = sweep.submissions[submission_index]
    run_id = submission.run_ids[position]
    loaded = load_manifest(sweep.manifest_path)
    spec = next(
        (s for s in rebuild_specs(sweep, loaded, LocalStore(state_file.parent.parent)) if s.run_id == run_id), None
    )
    if spec is None:
        raise HarnessError(f"sweep {sweep.sweep_id} has no saved spec for run {run_id}")
    runtime = resolve_runtime(submission.runtime)
    print(f"harness: start {run_id} on {os.uname().nodename} ({runtime} runtime), store {node_store}", flush=True)
    record = dict(execute(spec, LocalStore(node_store), runtime=runtime))
    print(result_line(record), flush=True)
    return record


def main(argv: list[str]) -> int:
    """Entry point of one Ray job."""
    if len(argv) != 4:
        print(
            "usage: python -m harness.backends.ray_task <state file> <submission> <position> <node store>",
            file=sys.stderr,
        )
        return 2
    die_with_parent()
    try:
        record = run_job(Path(argv[0]), int(argv[1]), int(argv[2]), Path(argv[3]))
    except HarnessError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0 if record.get("status") == "completed" else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
