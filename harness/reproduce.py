"""Reproduce a run from its own record: stage its manifest, lockfile and recipe as a project,
rebuild the image, re-run it, compare with the original and keep the verdict.

:func:`reproduce` returns a :class:`ReproductionResult`; ``harness reproduce`` only prints it.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import IO, Any

from harness.errors import HarnessError, HubError
from harness.fsutil import write_json_atomic
from harness.layout import CONTEXT, LOCKFILE, MANIFEST
from harness.record import Record, RunStatus
from harness.safefs import UnsafeFile, copy_beneath
from harness.store.local import LocalStore


@dataclass
class ReproductionResult:
    """What a reproduction did and found."""

    original_id: str
    reproduction_id: str
    repo: str | None  # the Hub repo the original came from, if any
    verdict: Any  # harness.analysis.compare.Verdict
    figure: Path
    verdict_path: Path
    record: Record
    published_commit: str | None = None
    image_source: str = "rebuilt"  # rebuilt (from the recipe) | registry (the published image) | ref (the manifest's)
    image_ref: str | None = None  # the registry reference run, for "registry"

    @property
    def exit_code(self) -> int:
        """0 for identical or consistent, 1 for diverged."""
        return 1 if self.verdict.verdict == "diverged" else 0


def stage_project(run_dir: Path, workdir: Path) -> Path:
    """Lay a run's manifest, lockfile and image context out as a project; returns the manifest's path.

    The paths come from the manifest itself (image.build, image.lockfile) after a schema check, and
    must stay inside the project, exactly as for a local manifest.
    """
    from harness.images import context_files
    from harness.manifest import parse_manifest

    source = run_dir / MANIFEST
    manifest_path = workdir / "manifests" / "manifest.yaml"
    try:  # the record may be a pulled one: nothing in it is followed or read unbounded
        copy_beneath(run_dir, MANIFEST, manifest_path, limit=1 << 20)
    except UnsafeFile as exc:
        raise HarnessError(f"{run_dir}: no usable manifest.yaml in the run record ({exc.reason}); it cannot be reproduced") from None
    image = parse_manifest(manifest_path).image
    for relative in (image.build, image.lockfile):
        if relative is not None and (PurePosixPath(relative).is_absolute() or ".." in PurePosixPath(relative).parts):
            raise HarnessError(f"{source}: image path {relative!r} leaves the project")
    if image.build is not None:
        if not (run_dir / CONTEXT).is_dir():
            raise HarnessError(f"{run_dir}: the record has no context/ to rebuild image {image.build} from")
        for path in context_files(run_dir / CONTEXT):  # refuses links, special files, oversize
            copy_beneath(run_dir, path.relative_to(run_dir).as_posix(), workdir / image.build / path.relative_to(run_dir / CONTEXT))
    else:
        (workdir / "images").mkdir()  # marks the project root for manifests with image.ref
    if image.lockfile is not None:
        if not (run_dir / LOCKFILE).is_file():
            raise HarnessError(f"{run_dir}: the record has no lockfile.txt for {image.lockfile}")
        (workdir / image.lockfile).parent.mkdir(parents=True, exist_ok=True)
        copy_beneath(run_dir, LOCKFILE, workdir / image.lockfile, limit=64 << 20)
    return manifest_path


def original_run(store: LocalStore, target: str, endpoint: str | None, revision: str | None) -> tuple[str, str | None]:
    """(run id in the local store, repo it came from or None); pulls ``org/name/<run_id>`` first."""
    from harness.store.hub import parse_run_spec
    from harness.store.hub import pull as pull_runs
    if "/" not in target:
        record = store.load(target)
        return target, (record.get("pulled_from") or {}).get("repo")
    repo, run_id = parse_run_spec(target)
    if run_id is None:
        raise HubError(f"{target!r}: name the run to reproduce, org/name/<run_id>")
    pull_runs(target, revision=revision, endpoint=endpoint, store=store)
    return run_id, repo


def registry_image_of(original: Record, runtime: str) -> Any:
    """The original's image pulled by its registry digest into ``runtime``'s engine (an ImageInfo),
    or None when its record has no registry reference. HarnessError when the registry serves an image
    whose id is not the one the original ran."""
    image: dict[str, Any] = original.get("image") or {}  # type: ignore[assignment]
    ref = image.get("registry_ref") if isinstance(image, dict) else None
    if not ref:
        return None
    from harness.registry import is_registry_ref

    if not isinstance(ref, str) or len(ref) > 512 or not is_registry_ref(ref):
        raise HarnessError(f"run {original.get('run_id')}: image.registry_ref {str(ref)[:120]!r} is not "
                           "host/name@sha256:<digest>")
    if runtime == "podman":
        from harness.runtime.podman import podman_api, podman_resolve_ref

        info = podman_resolve_ref(podman_api(), ref)
    else:
        from harness.images import resolve_ref
        from harness.runtime.engine import docker_client

        info = resolve_ref(docker_client(timeout=3600), ref)
    if isinstance(image.get("id"), str) and info.id != image["id"]:
        raise HarnessError(f"{ref} is image {info.id[:19]}, but run {original.get('run_id')} ran {str(image['id'])[:19]}: "
                           "the record's registry reference does not match it (use --rebuild)")
    return info


def reproduce(
    target: str,
    store: LocalStore | None = None,
    endpoint: str | None = None,
    revision: str | None = None,
    runtime: str = "docker",
    trust_code: bool = False,
    publish_result: bool = False,
    out: Path | None = None,
    echo: Callable[[str], None] = lambda line: None,
    progress: IO[str] | None = None,
    rebuild: bool = False,
    allow_build_network: bool = False,
) -> ReproductionResult:
    """Re-run ``org/name/<run_id>`` (pulled first) or a local run id from its own record, and
    compare the reproduction with the original. The image is the exact one the original ran when
    its record has a registry digest (``image.registry_ref``, pulled by digest, no build), unless
    ``rebuild``; otherwise a fresh build from the recipe.

    Raises HarnessError for bad input: a pulled run asked to run on the host without
    ``trust_code``, an incomplete or tampered original, ``publish_result`` for a run not from the Hub,
    a recipe that declares ``image.network: true`` without ``allow_build_network``.
    With ``progress``, the re-run's live progress (harness.progress) is shown on that stream.
    """
    from harness.analysis.compare import compare_runs, plot_comparison
    from harness.manifest import load_manifest
    from harness.plan import RunSpec, config_key
    from harness.runner import execute

    store = store or LocalStore()
    if runtime == "process" and "/" in target and not trust_code:
        raise HarnessError("--runtime process would run downloaded code on this host without a sandbox; "
                           "add --trust-code if you have read it, or use --runtime docker")
    original_id, repo = original_run(store, target, endpoint, revision)
    original = store.load(original_id)
    if runtime == "process" and original.get("pulled_from") and not trust_code:
        raise HarnessError(f"run {original_id} was pulled from {repo}: --runtime process needs --trust-code")
    if publish_result and repo is None:
        raise HarnessError(f"run {original_id} was not pulled from the Hub: publish the reproduction with `harness publish`")
    if original.get("status") != RunStatus.COMPLETED:
        raise HarnessError(f"run {original_id} is {original.get('status')!r}: only completed runs can be reproduced")
    problems = store.verify(original_id)
    if problems:
        raise HarnessError(f"run {original_id} does not match its record ({'; '.join(problems[:3])})")

    with tempfile.TemporaryDirectory(prefix="harness-reproduce-") as workdir:
        loaded = load_manifest(stage_project(store.run_dir(original_id), Path(workdir)))
        registry_image = None if rebuild or runtime == "process" else registry_image_of(original, runtime)
        if (registry_image is None and loaded.manifest.image.network and not allow_build_network
                and runtime in ("docker", "podman")):
            raise HarnessError(f"run {original_id}: its recipe declares image.network: true, so rebuilding it would give "
                               "its build this host's network; read its context/, then pass --allow-build-network")
        params = dict(original.get("params") or {})
        seed, smoke = int(original["seed"]), bool(original.get("smoke"))
        spec = RunSpec(loaded=loaded, params=params, seed=seed, smoke=smoke,
                       config_key=config_key(loaded, params, seed, smoke))
        if registry_image is not None:
            echo(f"reproducing {original_id} (seed {seed}) with the published image {registry_image.ref} (no build)")
            image_source = "registry"
        else:
            image_source = "ref" if loaded.manifest.image.ref else "rebuilt"
            echo(f"reproducing {original_id} (seed {seed}) with "
                 f"{'its image.ref' if image_source == 'ref' else 'a fresh image build'}")
        if progress is None:
            record = execute(spec, store, runtime=runtime, reproduces=original_id, force_build=registry_image is None,
                             echo=echo, image=registry_image)
        else:
            from harness.progress import LiveRun

            live = LiveRun(spec, store, progress, prefix="")
            try:
                record = execute(spec, store, runtime=runtime, reproduces=original_id,
                                 force_build=registry_image is None, on_start=live.on_start, echo=live.echo,
                                 image=registry_image)
            finally:
                live.stop()
        expect = loaded.manifest.expect

    reproduction_id = record["run_id"]
    verdict = compare_runs(store.run_dir(original_id), store.run_dir(reproduction_id), expect)
    out_dir = out or store.root / "reproductions" / reproduction_id
    figure = plot_comparison(store.run_dir(original_id), store.run_dir(reproduction_id), out_dir / "comparison.png",
                             verdict=verdict)
    verdict_path = out_dir / "verdict.json"
    image_ref = registry_image.ref if registry_image is not None else None
    write_json_atomic(verdict_path, {"original": original_id, "reproduction": reproduction_id,
                                     "image": {"source": image_source, "ref": image_ref,
                                               "id": (record.get("image") or {}).get("id")},
                                     **verdict.to_dict()})
    # record.json is outside the checksummed files, so the verdict can join the sealed record.
    record["reproduction_verdict"] = verdict.verdict
    store.save(record)
    result = ReproductionResult(original_id, reproduction_id, repo, verdict, figure, verdict_path, record,
                                image_source=image_source, image_ref=image_ref)
    if publish_result:
        from harness.store.hub import publish

        assert repo is not None
        published = publish([reproduction_id], repo, store=store,
                            endpoint=endpoint or (original.get("pulled_from") or {}).get("endpoint"))
        result.published_commit = published.commit
    return result
