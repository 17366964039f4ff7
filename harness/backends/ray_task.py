"""One Ray job: run one run of a sweep into a store on the node, and say which files it wrote.

``python -m harness.backends.ray_task <state file> <submission> <position> <node store> [options]``:
the entrypoint of the Ray jobs that :mod:`harness.backends.ray` submits. The run goes into the
node's own store (not the submitting one); the last line printed names the run and the sha256 of
each of its files, which the submitting side checks every file against. Where the submitter left
no marker in the node store (it cannot read the node's folders), the run folder goes home in the
job's log instead (:mod:`harness.backends.ray_files`) and the node store is removed. Options carry
a reproduction's original (``--reproduces``), a forced rebuild, and a registry image to pull by
digest. Exit 0 when the run completed, 1 otherwise, 2 for a job that cannot find its run.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
from pathlib import Path
from typing import Any

from harness.backends.slurm_task import rebuild_specs
from harness.backends.sweeps import load_state
from harness.errors import HarnessError
from harness.store.local import LocalStore

RESULT_MARK = "harness-ray-record "
MARKER_FILE = ".harness-submitter"  # in a node store the submitting side can read by path


def result_line(record: dict[str, Any], archive_sha256: str | None = None) -> str:
    """The line that tells the submitting side which run this job wrote, and its files' sha256
    (and, when the run folder travels in the log, the archive's sha256)."""
    result = {"run_id": record["run_id"], "status": record.get("status"), "files": record.get("files") or {}}
    if archive_sha256 is not None:
        result["archive_sha256"] = archive_sha256
    return RESULT_MARK + json.dumps(result, sort_keys=True)


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


def image_note(image: dict[str, Any] | None) -> str:
    """How the run's image reached this node, in words (the record's image.source and cached)."""
    if not image:
        return "no image (process runtime)"
    source, ident = image.get("source"), str(image.get("id") or "")[:19]
    if source == "registry":
        return f"pulled by digest {image.get('registry_ref')} ({ident})"
    if source == "local":
        return f"{image.get('ref')} was already in this node's engine ({ident})"
    if image.get("cached"):
        return f"the recipe's content-addressed tag {image.get('tag')} was already in this node's engine ({ident})"
    return f"built on this node from the recipe ({ident})"


def registry_image(ref: str, expected_id: str | None, runtime: str) -> Any:
    """The image ``ref`` (host/name@sha256:...) in this node's engine, pulled by digest when missing;
    HarnessError when the registry serves another image id than ``expected_id``."""
    if runtime == "podman":
        from harness.images.podman import podman_resolve_ref
        from harness.runtime.podman import podman_api

        info = podman_resolve_ref(podman_api(), ref)
    else:
        from harness.images.build import resolve_ref
        from harness.runtime.engine import docker_client

        info = resolve_ref(docker_client(timeout=3600), ref)
    if expected_id and info.id != expected_id:
        raise HarnessError(f"{ref} is image {info.id[:19]} on this node, not {expected_id[:19]} as the record says")
    return info


def shared_store(node_store: Path, marker: str | None) -> bool:
    """Whether the submitting side can read ``node_store`` by path: it left ``marker`` there."""
    from harness.util.safefs import UnsafeFile, read_beneath

    if not marker:
        return False
    try:
        return read_beneath(node_store, MARKER_FILE, 4096).decode(errors="replace").strip() == marker
    except (UnsafeFile, OSError):
        return False


def run_job(state_file: Path, submission_index: int, position: int, node_store: Path, args: Any) -> dict[str, Any]:
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
    shared = shared_store(node_store, args.marker)
    print(
        f"harness: start {run_id} on {os.uname().nodename} ({runtime} runtime), store {node_store} "
        f"({'shared with the submitter' if shared else 'node-local: the record goes home through Ray'})",
        flush=True,
    )
    image = None
    if args.image_ref and runtime != "process":
        image = registry_image(args.image_ref, args.image_id, runtime)
    record: dict[str, Any] = dict(
        execute(
            spec,
            LocalStore(node_store),
            runtime=runtime,
            reproduces=args.reproduces,
            force_build=args.force_build,
            image=image,
        )
    )
    print(f"harness: image: {image_note(record.get('image'))}", flush=True)
    if shared:
        print(result_line(record), flush=True)
        return record
    from harness.backends.ray_files import archive_lines, pack_files

    archive = pack_files(LocalStore(node_store).run_dir(record["run_id"]), record.get("files") or {})
    for line in archive_lines(archive):
        print(line)
    print(result_line(record, hashlib.sha256(archive).hexdigest()), flush=True)
    shutil.rmtree(node_store, ignore_errors=True)  # what is left of the run is in the job's log now
    return record


def parse_args(argv: list[str]) -> Any:
    """The job's arguments (see the module's docstring)."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m harness.backends.ray_task")
    parser.add_argument("state_file", type=Path)
    parser.add_argument("submission", type=int)
    parser.add_argument("position", type=int)
    parser.add_argument("node_store", type=Path)
    parser.add_argument("--reproduces", help="the run this one reproduces")
    parser.add_argument("--force-build", action="store_true", help="rebuild the image from the recipe")
    parser.add_argument("--image-ref", help="run this registry image (host/name@sha256:...), pulled by digest")
    parser.add_argument("--image-id", help="the image id --image-ref must have")
    parser.add_argument("--marker", help="the token the submitter left in the node store when it can read it")
    return parser.parse_args(argv)


def main(argv: list[str]) -> int:
    """Entry point of one Ray job."""
    args = parse_args(argv)
    die_with_parent()
    try:
        record = run_job(args.state_file, args.submission, args.position, args.node_store, args)
    except HarnessError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0 if record.get("status") == "completed" else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
