"""``harness import``: another tool's published Hub runs become a manifest, an image recipe, a
hashed lockfile and ``imported`` records (docs/importing.md).

Each ``REPO[@revision]`` is resolved to a commit, listed, recognised by an importer
(harness.store.importers) and only the files it wants are downloaded, as regular files, into a
staging folder; weights are never downloaded. The seed repos of one experiment must agree on
everything but the seed. Then the project gets ``images/<name>/``, ``lockfiles/<name>.txt`` and
``manifests/<name>.yaml`` (validated as any manifest), and the store one record per seed repo:
its curves from the repo's TensorBoard files, the publisher's evaluation as metrics, and the
sha256 of every file of the repo as provenance.

It lives in reproduce/ because it needs both the store and the metrics reader (capture/).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

import harness
from harness.errors import HarnessError, HubError
from harness.project.scaffold import recipe_dockerfile
from harness.runtime.docker import CONTAINER_OUT  # $HARNESS_OUT: the scripts write runs/ there
from harness.store.hub import check_repo_id, hub_errors
from harness.store.importers import ImportedRun, Importer, RepoFile, RepoImportError, RepoSnapshot, importers
from harness.store.layout import EXTERNAL_JSONL, RunLayout
from harness.store.local import LocalStore
from harness.store.record import SCHEMA_VERSION, Record, RunStatus
from harness.util.safefs import printable, relative_path_problem, sha256_beneath

MAX_REPO_FILES = 10_000
MAX_DOWNLOAD_BYTES = 2 << 30  # what one repo's wanted files may weigh together
MAX_CARD_BYTES = 1 << 20
SOURCES = "source"  # the publisher's own files kept in an imported record (card, pyproject, lock)
SPEC = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*)(?:@([A-Za-z0-9._/-]{1,200}))?$")


@dataclass
class ImportResult:
    """What an import wrote: the project files, the records and how long it took."""

    name: str
    manifest: Path
    image_dir: Path
    lockfile: Path
    run_ids: list[str]
    runs: list[ImportedRun]
    written: list[Path] = field(default_factory=list)
    unchanged: list[Path] = field(default_factory=list)
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready summary (``harness import --json``)."""
        first = self.runs[0]
        return {
            "name": self.name,
            "format": first.format,
            "manifest": str(self.manifest),
            "image": str(self.image_dir),
            "lockfile": str(self.lockfile),
            "runs": [
                {"run_id": run_id, "repo": run.repo, "revision": run.revision, "seed": run.seed}
                for run_id, run in zip(self.run_ids, self.runs)
            ],
            "dropped": first.dropped,
            "notes": first.notes,
            "written": [str(p) for p in self.written],
            "unchanged": [str(p) for p in self.unchanged],
            "seconds": round(self.seconds, 3),
        }


def parse_repo_spec(spec: str) -> tuple[str, str | None]:
    """``org/name`` or ``org/name@revision`` -> (repo id, revision or None)."""
    match = SPEC.match(spec.strip())
    if not match:
        raise HubError(f"{printable(spec)!r} is not a Hub model repo: write org/name or org/name@<revision>")
    return check_repo_id(match.group(1)), match.group(2)


def _listing(api: Any, repo: str, commit: str) -> dict[str, RepoFile]:
    files: dict[str, RepoFile] = {}
    for entry in api.list_repo_tree(repo, revision=commit, recursive=True):
        if not hasattr(entry, "blob_id"):
            continue
        problem = relative_path_problem(entry.path)
        if problem:
            raise RepoImportError(
                f"{repo}@{commit[:12]}: refusing a repo with the path {printable(entry.path)!r} ({problem})"
            )
        if len(files) >= MAX_REPO_FILES:
            raise RepoImportError(f"{repo}@{commit[:12]}: more than {MAX_REPO_FILES} files; not a model repo")
        lfs = getattr(entry, "lfs", None)
        files[entry.path] = RepoFile(
            entry.path, int(getattr(entry, "size", 0) or 0), getattr(lfs, "sha256", None), entry.blob_id
        )
    return files


def fetch_repo(
    spec: str, folder: Path, endpoint: str | None = None, token: str | None = None
) -> tuple[RepoSnapshot, Importer, str]:
    """Resolve, list and download (only what the matching importer wants) one repo into ``folder``;
    (snapshot, importer, endpoint used)."""
    from huggingface_hub import HfApi, hf_hub_download

    repo, revision = parse_repo_spec(spec)
    api = HfApi(endpoint=endpoint, token=token)
    with hub_errors(repo, api.endpoint, kind="model"):
        commit = api.model_info(repo, revision=revision).sha
        if not commit or not re.fullmatch(r"[0-9a-f]{40}", commit):
            raise HubError(f"{api.endpoint}: {repo} did not say which commit {revision or 'main'} is")
        files = _listing(api, repo, commit)
        snapshot = RepoSnapshot(repo, commit, files, folder)

        def download(path: str) -> None:
            hf_hub_download(repo, path, revision=commit, local_dir=folder, endpoint=api.endpoint, token=token)

        card: bytes | None = None
        if "README.md" in files:
            if files["README.md"].size > MAX_CARD_BYTES:
                raise RepoImportError(
                    f"{repo}@{commit[:12]}: README.md is {files['README.md'].size} bytes, more than {MAX_CARD_BYTES}"
                )
            download("README.md")
            card = snapshot.read("README.md", MAX_CARD_BYTES)
        importer = next((i for i in importers() if i.detect(files, card)), None)
        if importer is None:
            raise RepoImportError(
                f"{repo}@{commit[:12]}: not a format the harness imports "
                "(CleanRL model repos: a card with library_name: cleanrl and a poetry.lock)"
            )
        wanted = importer.wanted(files)
        total = sum(files[p].size for p in wanted)
        if total > MAX_DOWNLOAD_BYTES:
            raise RepoImportError(
                f"{repo}@{commit[:12]}: its scripts, lock and events weigh {total} bytes, more than {MAX_DOWNLOAD_BYTES}"
            )
        for path in wanted:
            if path != "README.md":
                download(path)
    return snapshot, importer, api.endpoint


def _group(runs: list[ImportedRun]) -> None:
    """Refuse seed repos that are not one experiment, or that repeat a seed."""
    first = runs[0]
    for run in runs[1:]:
        if run.signature() != first.signature():
            what = next(
                (
                    label
                    for label, a, b in (
                        ("format", run.format, first.format),
                        ("experiment name", run.name, first.name),
                        ("training command", run.command, first.command),
                        ("hyper-parameters", run.params, first.params),
                        ("training script", run.workload, first.workload),
                        ("lock", run.lockfile, first.lockfile),
                    )
                    if a != b
                ),
                "environment",
            )
            raise RepoImportError(
                f"{run.repo} and {first.repo} differ in their {what}: they are not seeds of one experiment; "
                "import them separately"
            )
    seeds = [run.seed for run in runs]
    repeated = sorted({s for s in seeds if seeds.count(s) > 1})
    if repeated:
        raise RepoImportError(f"seed {repeated[0]} is published by more than one of the repos; import one of them")


def manifest_text(name: str, runs: list[ImportedRun]) -> str:
    """The manifest of an imported group (every value from the seed repos)."""
    first = runs[0]
    dropped = sorted({flag.split(" ")[0] for run in runs for flag in run.dropped})
    description = (
        f"Imported by `harness import` from {first.format} Hub repos ({', '.join(r.repo for r in runs)}). "
        + (
            f"Dropped from the published command: {', '.join(dropped)} (tracking, uploads, videos and the "
            "publisher's own evaluation package reach outside the sandbox or are not in the repo)."
            if dropped
            else "Nothing was dropped from the published command."
        )
    )
    data: dict[str, Any] = {
        "apiVersion": "harness/v1",
        "name": name,
        "description": description,
        "image": {"build": f"images/{name}", "lockfile": f"lockfiles/{name}.txt"},
        "command": first.command,
        "params": first.params,
        "seeds": sorted(run.seed for run in runs),
        "hardware": {"accelerator": "cpu", "gpus": 0, "cpus": 1, "memory": "4GiB", "timeout": "12h"},
        "metrics": {"tensorboard": first.tensorboard, "primary": "charts/episodic_return", "summary_last_n": 10},
        "expect": {
            "deterministic": False,
            # timing, and the publisher's evaluation, which a reproduction does not run (see docs/importing.md)
            "ignore": ["charts/SPS", "eval/*"],
            "statistic": "last_n",
            "last_n": 10,
            "margin_relative": 0.1,
        },
        "tags": ["imported", first.format],
        "source": [
            {"repo": run.repo, "revision": run.revision, "seed": run.seed, "format": run.format}
            for run in sorted(runs, key=lambda r: r.seed)
        ],
    }
    header = "# Written by `harness import`; the source entries pin the published runs it reproduces.\n"
    return header + yaml.safe_dump(data, sort_keys=False, default_flow_style=None, width=100)


def _write_project_file(path: Path, content: bytes, force: bool, result: ImportResult) -> None:
    if path.is_symlink():
        raise HarnessError(f"{path} is a symbolic link; remove it before importing")
    if path.exists():
        if path.is_file() and path.read_bytes() == content:
            result.unchanged.append(path)
            return
        if not force:
            raise HarnessError(
                f"{path} exists with other content: pass --name to import under another name, or --force to replace it"
            )
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.import-{os.getpid()}")
    tmp.write_bytes(content)
    os.replace(tmp, path)
    result.written.append(path)


def write_project(root: Path, name: str, runs: list[ImportedRun], force: bool, result: ImportResult) -> None:
    """Write images/<name>/, lockfiles/<name>.txt and manifests/<name>.yaml under ``root``."""
    first = runs[0]
    image_dir = root / "images" / name
    if (image_dir / "workload").is_dir() and not force:
        extra = sorted(p.name for p in (image_dir / "workload").iterdir() if p.name not in first.workload)
        if extra:
            raise HarnessError(
                f"{image_dir / 'workload'} holds {extra[0]}, which the import does not: pass --name or --force"
            )
    header = (
        f"# Imported by `harness import` from {', '.join(r.repo for r in runs)} (the commits are in the manifest's\n"
        "# source): the environment the publisher locked. The script writes its TensorBoard folder into its\n"
        "# working folder, so that is the run's output folder."
    )
    dockerfile = recipe_dockerfile(header, base=first.base_image, workdir=CONTAINER_OUT)
    _write_project_file(image_dir / "Dockerfile", dockerfile.encode(), force, result)
    for filename, content in sorted(first.workload.items()):
        _write_project_file(image_dir / "workload" / filename, content, force, result)
    _write_project_file(root / "lockfiles" / f"{name}.txt", first.lockfile.encode(), force, result)
    _write_project_file(root / "manifests" / f"{name}.yaml", manifest_text(name, runs).encode(), force, result)


def _iso(seconds: float | None) -> str | None:
    import datetime as dt

    if seconds is None:
        return None
    return dt.datetime.fromtimestamp(seconds, dt.UTC).isoformat(timespec="milliseconds")


def _provenance(snapshot: RepoSnapshot, downloaded: Sequence[str]) -> dict[str, str]:
    """Every file of the repo: sha256 of what was downloaded (computed here), the Hub's hash of the rest."""
    found = {path: f"sha256:{sha256_beneath(snapshot.folder, path)}" for path in downloaded}
    for path, entry in snapshot.files.items():
        found.setdefault(path, entry.provenance)
    return dict(sorted(found.items()))


def build_record_folder(
    folder: Path,
    run_id: str,
    run: ImportedRun,
    snapshot: RepoSnapshot,
    downloaded: Sequence[str],
    loaded: Any,
    endpoint: str,
) -> Record:
    """Lay out one imported run as a run folder (manifest, lockfile, context, the repo's events under
    out/, the publisher's card and lock under source/, metrics.parquet) and return its record."""
    from harness.capture.metrics import MetricsIngester
    from harness.images.build import context_files
    from harness.run.plan import RunSpec, config_key

    layout = RunLayout(folder)
    folder.mkdir(parents=True)
    layout.manifest.write_text(loaded.text, encoding="utf-8")
    assert loaded.lockfile is not None and loaded.build_dir is not None
    shutil.copy2(loaded.lockfile, layout.lockfile)
    for path in context_files(loaded.build_dir):
        target = layout.context / path.relative_to(loaded.build_dir)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(path, target)
    for filename, content in run.sources.items():
        (folder / SOURCES).mkdir(exist_ok=True)
        (folder / SOURCES / filename).write_bytes(content)
    tensorboard = layout.tensorboard(run.tensorboard)
    assert tensorboard is not None
    for event_path in run.events:
        target = tensorboard / snapshot.repo.split("/")[-1] / event_path
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(snapshot.read(event_path, 512 << 20))
    manifest = loaded.manifest
    ingester = MetricsIngester(run_id, layout.out, tensorboard)
    try:
        ingester.poll(final=True)
        table = ingester.table()
        last_step = int(max(table.column("step").to_pylist(), default=0))
        wall = [w for w in table.column("wall_time").to_pylist() if w is not None]
        if run.evaluation:
            rows = [
                {"name": k, "step": last_step, "value": v, "wall_time": max(wall, default=0.0)}
                for k, v in run.evaluation.items()
            ]
            (layout.out / EXTERNAL_JSONL).write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
            ingester.poll(final=True)
        if not len(ingester):
            raise RepoImportError(f"{snapshot.repo}@{snapshot.revision[:12]}: its events files hold no scalars")
        ingester.write_parquet(layout.metrics_parquet, manifest.metrics.summary_last_n)
        summary = ingester.summary(manifest.metrics.summary_last_n)
        rejected = dict(sorted(ingester.rejected.items()))
    finally:
        ingester.close()
    params = dict(run.params)
    spec = RunSpec(loaded, params, run.seed, False, config_key(loaded, params, run.seed, False))
    started, ended = (min(wall), max(wall)) if wall else (None, None)
    return {
        "schema_version": SCHEMA_VERSION,
        "run_id": run_id,
        "config_key": spec.config_key,
        "name": manifest.name,
        "description": manifest.description,
        "tags": list(manifest.tags),
        "status": RunStatus.IMPORTED.value,
        "exit_code": None,
        "detail": f"imported from {snapshot.repo}@{snapshot.revision}",
        "started_at": _iso(started) or _iso(time.time()) or "",
        "ended_at": _iso(ended),
        "duration_s": None if started is None or ended is None else round(ended - started, 3),
        "seed": run.seed,
        "params": params,
        "smoke": False,
        "command": spec.command(),
        "runtime": "imported",
        "hermetic": False,
        "manifest_sha256": loaded.sha256,
        "lockfile_sha256": hashlib.sha256(loaded.lockfile.read_bytes()).hexdigest(),
        "image": None,
        "hardware": {},
        "expect": manifest.expect.model_dump(),
        "primary_metric": manifest.metrics.primary,
        "harness_version": harness.__version__,
        "reproduces": None,
        "environment": run.environment,
        "metrics_summary": summary,
        "metrics_rejected": rejected,
        "imported_from": {
            "format": run.format,
            "repo": snapshot.repo,
            "revision": snapshot.revision,
            "endpoint": endpoint,
            "dropped": run.dropped,
            "evaluation": run.evaluation,
            "notes": run.notes,
            "files": _provenance(snapshot, downloaded),
        },
        "files": {},
    }


def import_repos(
    specs: Sequence[str],
    root: Path,
    store: LocalStore | None = None,
    endpoint: str | None = None,
    token: str | None = None,
    name: str | None = None,
    force: bool = False,
    echo: Callable[[str], None] = lambda line: None,
) -> ImportResult:
    """Import the seed repos ``specs`` (``org/name[@revision]``) of one published experiment into
    the project at ``root`` and the store (see the module docstring).

    Raises HarnessError (one line) for a repo in no known format, a card, lock or events file that
    cannot be used, repos that are not seeds of one experiment, or project files that exist with
    other content (unless ``force``). Importing the same commits again changes nothing.
    """
    from harness.manifest import NAME, load_manifest

    if not specs:
        raise HarnessError("name at least one Hub repo to import (org/name[@revision])")
    started = time.monotonic()
    store = store or LocalStore()
    store.root.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".import-", dir=store.root) as scratch:
        fetched = []
        for index, spec in enumerate(dict.fromkeys(specs)):
            folder = Path(scratch) / f"repo{index}"
            folder.mkdir()
            snapshot, importer, used_endpoint = fetch_repo(spec, folder, endpoint, token)
            run = importer.read(snapshot)
            echo(f"{snapshot.repo}@{snapshot.revision[:12]}: {run.format} run, seed {run.seed}")
            fetched.append((snapshot, importer, run, used_endpoint))
        runs = [run for _, _, run, _ in fetched]
        _group(runs)
        group_name = name or runs[0].name
        if not NAME.match(group_name):
            raise HarnessError(f"--name {group_name!r}: use lower-case letters, digits, '.', '_' or '-' (at most 63)")
        for run in runs:
            run.name = group_name
        result = ImportResult(
            group_name,
            root / "manifests" / f"{group_name}.yaml",
            root / "images" / group_name,
            root / "lockfiles" / f"{group_name}.txt",
            [],
            runs,
        )
        write_project(root, group_name, runs, force, result)
        loaded = load_manifest(result.manifest)
        staged = []
        for index, (snapshot, importer, run, used_endpoint) in enumerate(fetched):
            run_id = f"{group_name}-{snapshot.revision[:12]}"
            downloaded = importer.wanted(snapshot.files)
            folder = Path(scratch) / f"record{index}"
            record = build_record_folder(folder, run_id, run, snapshot, downloaded, loaded, used_endpoint)
            staged.append((run_id, folder, record))
        for run_id, folder, record in staged:
            if store.exists(run_id):
                existing = store.load(run_id)
                if (
                    existing.get("status") != RunStatus.IMPORTED
                    or existing.get("manifest_sha256") != record["manifest_sha256"]
                ):
                    raise HarnessError(
                        f"{store.run_dir(run_id)} already holds another run {run_id}; remove it to import again"
                    )
                result.run_ids.append(run_id)
                continue
            store.runs_dir.mkdir(parents=True, exist_ok=True)
            os.replace(folder, store.run_dir(run_id))
            store.seal(record)
            result.run_ids.append(run_id)
    result.seconds = time.monotonic() - started
    return result
