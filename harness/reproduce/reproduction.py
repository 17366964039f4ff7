"""Reproduce a run from its own record: stage its manifest, lockfile and recipe as a project,
rebuild the image, re-run it over seeds (the published ones, more, or new ones), give the verdict
between the published group and the reproduction (identical, consistent, diverged or
inconclusive; harness.reproduce.group_verdict) and keep it in the reproduction records.

:func:`reproduce` returns a :class:`ReproductionResult`; ``harness reproduce`` only prints it.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path, PurePosixPath
from typing import IO, TYPE_CHECKING, Any, cast

from harness.analysis.plots import plot_equivalence
from harness.errors import HarnessError, HubError
from harness.reproduce.compare import Difference, Verdict, compare_runs, plot_comparison
from harness.reproduce.group_verdict import GroupVerdict, group_verdict, json_safe
from harness.store.layout import CONTEXT, LOCKFILE, MANIFEST
from harness.store.local import LocalStore
from harness.store.record import DONE_STATUSES, Record, RunStatus
from harness.util.fsutil import write_json_atomic
from harness.util.safefs import UnsafeFile, copy_beneath

if TYPE_CHECKING:
    from harness.manifest import LoadedManifest

BUILD_PROGRESS_INTERVAL_S = 5.0  # seconds between a rebuild's progress lines (HARNESS_PROGRESS_INTERVAL sets it)


@dataclass
class SeedPair:
    """A reproduction run and the original run of the same seed, compared point by point."""

    seed: int
    original_id: str
    reproduction_id: str
    comparison: Verdict


@dataclass
class ReproductionResult:
    """What a reproduction did and found: the original group (the published seeds of the target's
    configuration, the target first), the reproduction runs and the verdict between them."""

    original_id: str  # the run named on the command line
    repo: str | None  # the Hub repo the original came from, if any
    verdict: GroupVerdict
    figure: Path | None
    verdict_path: Path
    records: list[Record]  # the reproduction runs' sealed records, in seed order
    original_ids: list[str]
    original_seeds: list[int]
    seed_plan: str
    pairs: list[SeedPair] = field(default_factory=list)
    published_commit: str | None = None
    image_source: str = "rebuilt"  # rebuilt (from the recipe) | registry (the published image) | ref (the manifest's)
    image_ref: str | None = None  # the registry reference run, for "registry"
    published_evaluation: list[dict[str, Any]] = field(
        default_factory=list
    )  # imported runs: the card's evaluation per seed
    published_image: dict[str, Any] = field(default_factory=dict)  # the original record's image

    @property
    def image_check(self) -> dict[str, Any]:
        """The reproduction's image against the published one (see :func:`compare_images`)."""
        return compare_images(self.published_image, dict(self.records[0].get("image") or {}), self.image_source)

    @property
    def reproduction_ids(self) -> list[str]:
        """The reproduction runs, in seed order."""
        return [record["run_id"] for record in self.records]

    @property
    def reproduction_id(self) -> str:
        """The first reproduction run (the only one when one seed was reproduced)."""
        return self.records[0]["run_id"]

    @property
    def record(self) -> Record:
        """The first reproduction run's record."""
        return self.records[0]

    @property
    def exit_code(self) -> int:
        """0 for identical or consistent, 1 for diverged, 3 for inconclusive."""
        return self.verdict.exit_status

    @property
    def first_difference(self) -> Difference | None:
        """The first point where a reproduction run differs from the original of its seed."""
        for pair in self.pairs:
            if pair.comparison.first_difference is not None:
                return pair.comparison.first_difference
        return None

    def to_dict(self, curves: bool = True) -> dict[str, Any]:
        """verdict.json: the verdict (with its per-checkpoint curves unless not ``curves``), the seed
        plan and each same-seed pair's per-metric comparison."""
        difference = self.first_difference
        return {
            "original": self.original_id,
            "reproduction": self.reproduction_id,
            "reproductions": self.reproduction_ids,
            "repo": self.repo,
            "verdict_file": str(self.verdict_path),
            "published_commit": self.published_commit,
            "seed_plan": self.seed_plan,
            "figure": None if self.figure is None else str(self.figure),
            "image": {
                "source": self.image_source,
                "ref": self.image_ref,
                "id": (self.records[0].get("image") or {}).get("id"),
                **self.image_check,
            },
            "first_difference": None if difference is None else asdict(difference),
            "published_evaluation": self.published_evaluation,
            "pairs": [
                {"seed": p.seed, "original": p.original_id, "reproduction": p.reproduction_id, **p.comparison.to_dict()}
                for p in self.pairs
            ],
            **self.verdict.to_dict(curves=curves),
        }


def as_published(loaded: LoadedManifest, published: Mapping[str, object]) -> None:
    """A recipe that does not say how it is built is rebuilt by the builder that made the published
    image: Docker's for a record that names no other, the reproducible one where podman is here."""
    if loaded.manifest.image.reproducible is not None or loaded.manifest.image.build is None:
        return
    from harness.images.build import reproducible_by_default
    from harness.images.reproducible import BUILDER

    reproducible = published.get("builder") == BUILDER and reproducible_by_default()
    image = loaded.manifest.image.model_copy(update={"reproducible": reproducible})
    loaded.manifest = loaded.manifest.model_copy(update={"image": image})


def compare_images(published: dict[str, Any], rebuilt: dict[str, Any], source: str) -> dict[str, Any]:
    """``published_id``, ``same_image`` (whether the reproduction ran the published image id) and
    ``image_note``: one line saying so, or why a rebuild did not give the published digest."""
    old, new = published.get("id"), rebuilt.get("id")
    same = bool(old) and old == new
    short = str(old or "none")[:19]
    if source != "rebuilt":
        note = f"the published image ({short})" if same else f"not the published image {short}"
    elif same:
        note = f"rebuilt to the published digest ({short})"
    elif published.get("builder") != "podman-reproducible":
        note = (
            f"rebuilt from the recipe ({str(new)[:19]}), not the published {short}: it was built by Docker's "
            "builder, which stamps build times into the image (build with podman installed and without "
            "image.reproducible: false)"
        )
    elif rebuilt.get("builder") != "podman-reproducible":
        note = (
            f"rebuilt from the recipe by Docker's builder ({str(new)[:19]}), not the published {short}: "
            "podman is not installed here, and only its reproducible builder rebuilds to the same id"
        )
    elif published.get("content_hash") != rebuilt.get("content_hash"):
        note = (
            f"rebuilt from the recipe ({str(new)[:19]}), not the published {short}: the base image here is not "
            "the one it was built on (bootstrapped from other Debian packages?)"
        )
    else:
        note = (
            f"rebuilt from the same recipe, lockfile and base to {str(new)[:19]}, not the published {short}: "
            "the build did not reproduce here (`harness build --check` names the files that differ)"
        )
    return {"published_id": old, "same_image": same, "image_note": note}


def stage_project(run_dir: Path, workdir: Path) -> Path:
    """Lay a run's manifest, lockfile and image context out as a project; returns the manifest's path.

    The paths come from the manifest itself (image.build, image.lockfile) after a schema check, and
    must stay inside the project, exactly as for a local manifest.
    """
    from harness.images.build import context_files
    from harness.manifest import parse_manifest

    source = run_dir / MANIFEST
    manifest_path = workdir / "manifests" / "manifest.yaml"
    try:  # the record may be a pulled one: nothing in it is followed or read unbounded
        copy_beneath(run_dir, MANIFEST, manifest_path, limit=1 << 20)
    except UnsafeFile as exc:
        raise HarnessError(
            f"{run_dir}: no usable manifest.yaml in the run record ({exc.reason}); it cannot be reproduced"
        ) from None
    image = parse_manifest(manifest_path).image
    for relative in (image.build, image.lockfile):
        if relative is not None and (PurePosixPath(relative).is_absolute() or ".." in PurePosixPath(relative).parts):
            raise HarnessError(f"{source}: image path {relative!r} leaves the project")
    if image.build is not None:
        if not (run_dir / CONTEXT).is_dir():
            raise HarnessError(f"{run_dir}: the record has no context/ to rebuild image {image.build} from")
        for path in context_files(run_dir / CONTEXT):  # refuses links, special files, oversize
            copy_beneath(
                run_dir,
                path.relative_to(run_dir).as_posix(),
                workdir / image.build / path.relative_to(run_dir / CONTEXT),
            )
    else:
        (workdir / "images").mkdir()  # marks the project root for manifests with image.ref
    if image.lockfile is not None:
        if not (run_dir / LOCKFILE).is_file():
            raise HarnessError(f"{run_dir}: the record has no lockfile.txt for {image.lockfile}")
        (workdir / image.lockfile).parent.mkdir(parents=True, exist_ok=True)
        copy_beneath(run_dir, LOCKFILE, workdir / image.lockfile, limit=64 << 20)
    return manifest_path


def imported_original(store: LocalStore, target: str) -> Record | None:
    """The imported run ``target`` names (harness import): a seed repo ``org/name`` or a group's
    name (its lowest seed); None when it names none."""
    imported = [r for r in store.records() if r.get("status") == RunStatus.IMPORTED]
    by_repo = [r for r in imported if (r.get("imported_from") or {}).get("repo") == target]
    by_name = sorted((r for r in imported if r.get("name") == target), key=lambda r: int(r.get("seed") or 0))
    found = by_repo or by_name
    return found[0] if found else None


def published_evaluation(group: list[Record]) -> list[dict[str, Any]]:
    """The publisher's own final evaluation of each imported run of ``group`` (seed, run, metrics)."""
    rows = []
    for record in group:
        evaluation = (record.get("imported_from") or {}).get("evaluation")
        if isinstance(evaluation, dict) and evaluation:
            rows.append({"seed": record.get("seed"), "run_id": record.get("run_id"), **evaluation})
    return rows


def original_run(
    store: LocalStore, target: str, endpoint: str | None, revision: str | None, trust_key: Path | None = None
) -> tuple[str, str | None]:
    """(run id in the local store, repo it came from or None); pulls ``org/name/<run_id>`` first
    (accepting it only signed by ``trust_key`` when given)."""
    from harness.store.hub import parse_run_spec
    from harness.store.hub import pull as pull_runs

    imported = imported_original(store, target)
    if imported is not None:
        return imported["run_id"], (imported.get("imported_from") or {}).get("repo")
    if "/" not in target:
        record = store.load(target)
        return target, (record.get("pulled_from") or {}).get("repo")
    repo, run_id = parse_run_spec(target)
    if run_id is None:
        raise HubError(f"{target!r}: name the run to reproduce, org/name/<run_id>")
    pull_runs(target, revision=revision, endpoint=endpoint, store=store, trust_key=trust_key)
    return run_id, repo


def registry_ref_of(original: Record) -> str | None:
    """The original's registry reference (host/name@sha256:<digest>), None when its record has none;
    HarnessError for one that is not such a reference."""
    image: dict[str, Any] = original.get("image") or {}  # type: ignore[assignment]
    ref = image.get("registry_ref") if isinstance(image, dict) else None
    if not ref:
        return None
    from harness.images.registry import is_registry_ref

    if not isinstance(ref, str) or len(ref) > 512 or not is_registry_ref(ref):
        raise HarnessError(
            f"run {original.get('run_id')}: image.registry_ref {str(ref)[:120]!r} is not host/name@sha256:<digest>"
        )
    return ref


def registry_image_of(original: Record, runtime: str) -> Any:
    """The original's image pulled by its registry digest into ``runtime``'s engine (an ImageInfo),
    or None when its record has no registry reference. HarnessError when the registry serves an image
    whose id is not the one the original ran."""
    ref = registry_ref_of(original)
    if ref is None:
        return None
    image: dict[str, Any] = original.get("image") or {}  # type: ignore[assignment]
    if runtime == "podman":
        from harness.images.podman import podman_resolve_ref
        from harness.runtime.podman import podman_api

        info = podman_resolve_ref(podman_api(), ref)
    else:
        from harness.images.build import resolve_ref
        from harness.runtime.engine import docker_client

        info = resolve_ref(docker_client(timeout=3600), ref)
    if isinstance(image.get("id"), str) and info.id != image["id"]:
        raise HarnessError(
            f"{ref} is image {info.id[:19]}, but run {original.get('run_id')} ran {str(image['id'])[:19]}: "
            "the record's registry reference does not match it (use --rebuild)"
        )
    return info


def parse_seed_count(value: int | str | None) -> int | str | None:
    """``--seeds``: a positive number of seeds, ``auto`` or None (as many as were published)."""
    if value is None or value == "auto":
        return value
    try:
        count = int(value)
    except (TypeError, ValueError):
        count = 0
    if count < 1 or str(value).strip() not in (str(count), f"+{count}"):
        raise HarnessError(f"--seeds {value}: give a positive number of seeds or auto")
    return count


def original_group(
    store: LocalStore, original: Record, target: str, endpoint: str | None, whole_repo: bool
) -> list[Record]:
    """The published group of the original's configuration (the original first, one run per seed).

    For a run from the Hub it is taken from the repo at the commit the original was pulled from
    (the whole repo is pulled when ``whole_repo``); for a local run id, from the local store. Every
    run of the group must match its record.
    """
    from harness.reproduce.group_verdict import published_group
    from harness.store.hub import pull as pull_runs

    source = original.get("pulled_from") or {}
    if original.get("status") == RunStatus.IMPORTED:
        target = original["run_id"]  # its group is the imported runs in the local store
    if "/" in target and whole_repo:
        run_ids = pull_runs(
            source["repo"], revision=source.get("revision"), endpoint=endpoint or source.get("endpoint"), store=store
        )
        candidates: list[Record] = [store.load(run_id) for run_id in run_ids]
    elif "/" in target:
        candidates = []
    else:
        candidates = list(store.records())
    found = [cast(Record, dict(record)) for record in published_group(candidates, original)]
    group = found[:1] + sorted(found[1:], key=lambda record: int(record["seed"]))
    for record in group[1:]:
        problems = store.verify(record["run_id"])
        if problems:
            raise HarnessError(
                f"run {record['run_id']} of the published group does not match its record ({'; '.join(problems[:3])})"
            )
    return group


def _run_one(
    spec: Any,
    store: LocalStore,
    runtime: str,
    reproduces: str,
    build: bool,
    image: Any,
    echo: Callable[[str], None],
    progress: IO[str] | None,
) -> Record:
    """One reproduction run (``build``: with a forced image rebuild; ``image``: this image, no
    build), with live progress on ``progress``."""
    from harness.run.build_progress import BuildHeartbeat
    from harness.run.progress import LiveRun, plain_interval
    from harness.run.runner import execute

    live = LiveRun(spec, store, progress, prefix="") if progress is not None else None
    say = live.echo if live is not None else echo
    # a rebuild takes minutes: a line every few seconds says which build step it is on
    heartbeat = BuildHeartbeat(say, plain_interval(BUILD_PROGRESS_INTERVAL_S)) if build else None

    def on_start(record: dict[str, Any], job: Any = None) -> None:
        if heartbeat is not None:
            heartbeat.stop()  # the image is ready once the run starts
        if live is not None:
            live.on_start(record, job)

    if heartbeat is not None:
        heartbeat.start()
    try:
        return execute(
            spec,
            store,
            runtime=runtime,
            reproduces=reproduces,
            force_build=build,
            on_start=on_start,
            echo=say,
            build_log=heartbeat.log if heartbeat is not None else lambda line: None,
            image=image,
        )
    finally:
        if heartbeat is not None:
            heartbeat.stop()
        if live is not None:
            live.stop()


@dataclass(frozen=True)
class SeedJob:
    """One reproduction run handed to a :data:`SeedRunner`: its spec, the original run of its seed,
    whether its image is rebuilt first, and the registry image (and id) it must run instead."""

    spec: Any
    reproduces: str
    force_build: bool = False
    image_ref: str | None = None
    image_id: str | None = None


# runs the seeds somewhere else than here (harness reproduce --backend ray): every job, side by
# side; returns the records it brought into the store (a run that never came home may be missing)
SeedRunner = Callable[[list[SeedJob], Callable[[str], None]], list[Record]]


@dataclass(frozen=True)
class ReproduceOptions:
    """How to reproduce a run: where its original comes from, how to run it, over which seeds.

    ``seeds``: None, a count, or ``"auto"`` (see :func:`reproduce`); ``new_seeds``: none of the
    published seeds; ``rebuild``: build the recipe even when the record names a registry image;
    ``publish_result``: publish the reproduction runs to the original's repo.
    """

    endpoint: str | None = None
    revision: str | None = None
    runtime: str = "docker"
    trust_code: bool = False
    publish_result: bool = False
    out: Path | None = None
    seeds: int | str | None = None
    new_seeds: bool = False
    rebuild: bool = False
    allow_build_network: bool = False
    trust_key: Path | None = None  # accept the published group only signed by this public key
    seed_runner: SeedRunner | None = None  # where the seeds run (None: here, one after another)


@dataclass
class _SeedRuns:
    """What the runs over seeds left: the published group, the seed plan, the reproduction records."""

    group: list[Record]
    published_seeds: list[int]
    plan_message: str
    records: list[Record]
    image_source: str
    image_ref: str | None
    expect: Any


def reproduce(
    target: str,
    options: ReproduceOptions | None = None,
    store: LocalStore | None = None,
    echo: Callable[[str], None] = lambda line: None,
    progress: IO[str] | None = None,
) -> ReproductionResult:
    """Re-run ``org/name/<run_id>`` (pulled first) or a local run id from its own record over
    seeds, and give the verdict between the published group and the reproduction runs
    (harness.reproduce.group_verdict). The image is the exact one the original ran when its record
    has a registry digest (``image.registry_ref``, pulled by digest, no build), unless ``options.rebuild``;
    otherwise a fresh build from the recipe (made once, for the first seed).

    ``options.seeds``: None re-runs the published seeds of the configuration (every run of the repo, or
    of the local store, with the same manifest, lockfile, params, smoke flag and recipe); ``N`` the
    first N of them and then new ones; ``"auto"`` as many as give 80 % power to show equivalence
    given the published spread. ``options.new_seeds`` runs none of the published seeds. A Hub repo is
    pulled whole when the manifest lists more than one seed or ``seeds``/``new_seeds`` is given.

    Raises HarnessError for bad input: a pulled run asked to run on the host without
    ``trust_code``, an incomplete or tampered original, ``publish_result`` for a run not from the
    Hub, a recipe that declares ``image.network: true`` without ``allow_build_network``, a seed
    count that is not positive, with ``trust_key`` a run of the published group whose provenance is
    not signed by that key or does not match its files. With ``progress``, each run's live
    progress (harness.run.progress) is
    shown on that stream.
    """
    from harness.store.provenance import load_public_key

    options = options or ReproduceOptions()
    options = replace(options, seeds=parse_seed_count(options.seeds))  # bad input before any download
    store = store or LocalStore()
    trusted = load_public_key(options.trust_key) if options.trust_key is not None else None
    original_id, repo, original = _checked_original(store, target, options)
    runs = _run_seeds(store, target, original_id, original, options, trusted, echo, progress)
    records = runs.records
    original_dirs = [store.run_dir(r["run_id"]) for r in runs.group]
    of_seed = {int(r["seed"]): r["run_id"] for r in runs.group}
    reproduction_dirs = [store.run_dir(r["run_id"]) for r in records]
    verdict = group_verdict(original_dirs, reproduction_dirs, runs.expect)
    pairs = [
        SeedPair(
            int(r["seed"]),
            of_seed[int(r["seed"])],
            r["run_id"],
            compare_runs(store.run_dir(of_seed[int(r["seed"])]), store.run_dir(r["run_id"]), runs.expect),
        )
        for r in records
        if r.get("status") == RunStatus.COMPLETED and int(r["seed"]) in of_seed
    ]
    out_dir = options.out or store.root / "reproductions" / records[0]["run_id"]
    out_dir.mkdir(parents=True, exist_ok=True)
    figure = _draw_comparison(store, out_dir / "comparison.png", verdict, pairs, records, original_id, repo)
    result = ReproductionResult(
        original_id,
        repo,
        verdict,
        figure,
        out_dir / "verdict.json",
        records,
        [r["run_id"] for r in runs.group],
        runs.published_seeds,
        runs.plan_message,
        pairs,
        image_source=runs.image_source,
        image_ref=runs.image_ref,
        published_evaluation=published_evaluation(runs.group),
        published_image=dict(original.get("image") or {}),
    )
    write_json_atomic(result.verdict_path, json_safe(result.to_dict()))
    # record.json is outside the checksummed files, so the verdict can join the sealed records.
    summary = {**verdict.to_dict(), "image": result.to_dict(curves=False)["image"]}
    for record in records:
        record["reproduction_verdict"] = verdict.verdict
        record["reproduction"] = summary
        store.save(record)
    if options.publish_result:
        from harness.analysis.repo_figure import learning_curves
        from harness.store.hub import publish

        assert repo is not None
        published = publish(
            result.reproduction_ids,
            repo,
            store=store,
            endpoint=options.endpoint or (original.get("pulled_from") or {}).get("endpoint"),
            figure=learning_curves,
        )
        result.published_commit = published.commit
    return result


def _checked_original(store: LocalStore, target: str, options: ReproduceOptions) -> tuple[str, str | None, Record]:
    """The original run (pulled when ``target`` names a Hub repo), its repo, and its record; HarnessError
    when it may not be reproduced as asked."""
    if options.runtime == "process" and "/" in target and not options.trust_code:
        raise HarnessError(
            "--runtime process would run downloaded code on this host without a sandbox; "
            "add --trust-code if you have read it, or use --runtime docker"
        )
    original_id, repo = original_run(store, target, options.endpoint, options.revision, options.trust_key)
    original = store.load(original_id)
    downloaded = original.get("pulled_from") or original.get("imported_from")
    if options.runtime == "process" and downloaded and not options.trust_code:
        raise HarnessError(f"run {original_id} came from {repo}: --runtime process needs --trust-code")
    if options.publish_result and (repo is None or original.get("imported_from")):
        raise HarnessError(
            f"run {original_id} was not pulled from a harness repo: publish the reproduction with `harness publish`"
        )
    if original.get("status") not in DONE_STATUSES:
        raise HarnessError(f"run {original_id} is {original.get('status')!r}: only completed runs can be reproduced")
    problems = store.verify(original_id)
    if problems:
        raise HarnessError(f"run {original_id} does not match its record ({'; '.join(problems[:3])})")
    return original_id, repo, original


def _run_seeds(
    store: LocalStore,
    target: str,
    original_id: str,
    original: Record,
    options: ReproduceOptions,
    trusted: Any,
    echo: Callable[[str], None],
    progress: IO[str] | None,
) -> _SeedRuns:
    """Stage the original's project, find its published group, plan the seeds and run them (the
    first with a fresh image build unless a registry image is used); stops at a run that fails.
    With ``trusted`` (a public key), every run of the published group must carry provenance it signed."""
    from harness.manifest import load_manifest
    from harness.reproduce.group_verdict import group_scores, plan_seeds
    from harness.run.plan import RunSpec, config_key
    from harness.store.provenance import verify_record

    seeds = options.seeds
    runtime = options.runtime
    records: list[Record] = []
    with tempfile.TemporaryDirectory(prefix="harness-reproduce-") as workdir:
        loaded = load_manifest(stage_project(store.run_dir(original_id), Path(workdir)))
        as_published(loaded, original.get("image") or {})
        elsewhere = options.seed_runner is not None  # the image is pulled or built where each seed runs
        registry_image: Any = None
        remote_ref = None
        if options.rebuild or runtime == "process":
            pass
        elif elsewhere:
            remote_ref = registry_ref_of(original)
        else:
            registry_image = registry_image_of(original, runtime)
        if (
            remote_ref is None
            and registry_image is None
            and loaded.manifest.image.network
            and not options.allow_build_network
            and runtime in ("docker", "podman")
        ):
            raise HarnessError(
                f"run {original_id}: its recipe declares image.network: true, so rebuilding it would give "
                "its build this host's network; read its context/, then pass --allow-build-network"
            )
        if registry_image is not None or remote_ref is not None:
            shown = registry_image.ref if registry_image is not None else remote_ref
            echo(
                f"reproducing with the published image {shown} (no build{', pulled by digest on each node' if elsewhere else ''})"
            )
            image_source = "registry"
        else:
            image_source = "ref" if loaded.manifest.image.ref else "rebuilt"
        expect = loaded.manifest.expect
        whole_repo = seeds is not None or options.new_seeds or len(loaded.manifest.seeds) > 1
        group = original_group(store, original, target, options.endpoint, whole_repo)
        for member in group if trusted is not None else []:
            verify_record(member, trusted)  # the runs the verdict rests on, pulled or local
        published_seeds = [int(r["seed"]) for r in group]
        if seeds == "auto":
            _, scores = group_scores([store.run_dir(r["run_id"]) for r in group], expect)
            plan = plan_seeds(published_seeds, "auto", options.new_seeds, scores, expect)
        else:
            plan = plan_seeds(published_seeds, seeds, options.new_seeds)
        echo(
            f"published group: {len(group)} run{'s' if len(group) != 1 else ''} of {original.get('name')} "
            f"(seed{'s' if len(group) != 1 else ''} {', '.join(map(str, published_seeds[:12]))}{' ...' if len(group) > 12 else ''})"
        )
        echo(plan.message)
        of_seed = {int(r["seed"]): r["run_id"] for r in group}
        params = dict(original.get("params") or {})
        smoke = bool(original.get("smoke"))
        if options.seed_runner is not None:
            published_id = (original.get("image") or {}).get("id")
            jobs = [
                SeedJob(
                    RunSpec(
                        loaded=loaded,
                        params=params,
                        seed=seed,
                        smoke=smoke,
                        config_key=config_key(loaded, params, seed, smoke),
                    ),
                    of_seed.get(seed, original_id),
                    force_build=index == 0 and image_source == "rebuilt",
                    image_ref=remote_ref,
                    image_id=published_id if remote_ref and isinstance(published_id, str) else None,
                )
                for index, seed in enumerate(plan.seeds)
            ]
            came = options.seed_runner(jobs, echo)
            # a run that came home is a sealed record in the store; one that never did is only a
            # status and its reason, whose run id may be the original's (the same config): never
            # taken for a reproduction, nor saved over the original
            lost: list[Record] = []
            for r in came:
                home = "files" in r and "seed" in r and store.run_dir(r["run_id"]).is_dir()
                (records if home else lost).append(r)
            if lost:
                seed = {job.spec.run_id: job.spec.seed for job in jobs}.get(str(lost[0].get("run_id")))
                raise HarnessError(
                    f"reproduction of {original_id}: the run of seed {seed} never came home from Ray "
                    f"({lost[0].get('status')}): {str(lost[0].get('detail') or 'no reason given')[-400:]}"
                )
            if not records:
                raise HarnessError(f"reproduction of {original_id}: no run came home from Ray")
            records.sort(key=lambda r: plan.seeds.index(int(r["seed"])))
            plan_seeds_left = []
        else:
            plan_seeds_left = list(plan.seeds)
        for index, seed in enumerate(plan_seeds_left):
            spec = RunSpec(
                loaded=loaded, params=params, seed=seed, smoke=smoke, config_key=config_key(loaded, params, seed, smoke)
            )
            fresh_build = index == 0 and image_source == "rebuilt"
            echo(
                f"reproducing {of_seed.get(seed, original_id)} with seed {seed} ({index + 1} of {len(plan.seeds)})"
                + (" with a fresh image build" if fresh_build else "")
            )
            # The first run rebuilds the image; the others reuse that build (prepare_image caches it).
            record = _run_one(
                spec,
                store,
                runtime,
                of_seed.get(seed, original_id),
                index == 0 and registry_image is None,
                registry_image,
                echo,
                progress,
            )
            records.append(record)
            if record.get("status") != RunStatus.COMPLETED:
                echo(f"{record['run_id']} is {record.get('status')}: no further seeds are run")
                break
    image_ref = registry_image.ref if registry_image is not None else remote_ref
    return _SeedRuns(group, published_seeds, plan.message, records, image_source, image_ref, expect)


def _draw_comparison(
    store: LocalStore,
    drawn: Path,
    verdict: GroupVerdict,
    pairs: list[SeedPair],
    records: list[Record],
    original_id: str,
    repo: str | None,
) -> Path | None:
    """The reproduction's figure: the curves and margin of the groups, else the first pair's
    comparison; None when the first run did not complete (it may have no metrics to draw)."""
    if verdict.curves is not None:
        plot_equivalence(
            verdict.curves,
            drawn,
            verdict.metric,
            verdict.verdict,
            labels=(f"original ({repo})" if repo else "original", "reproduction"),
            run_ids=(verdict.original_runs, verdict.reproduction_runs),
        )
        return drawn
    if records[0].get("status") == RunStatus.COMPLETED:
        first = pairs[0] if pairs else None
        plot_comparison(
            store.run_dir(first.original_id if first else original_id),
            store.run_dir(records[0]["run_id"]),
            drawn,
            verdict=first.comparison if first else None,
        )
        return drawn
    return None
