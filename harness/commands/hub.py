"""``harness publish``, ``harness pull`` and ``harness reproduce``."""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path, PurePosixPath
from typing import Any

import click

from harness.errors import HarnessError, HubError

ENDPOINT_HELP = "Hub URL (default: HF_ENDPOINT or https://huggingface.co)"


@click.command()
@click.argument("run_ids", nargs=-1, required=True)
@click.option("--repo", required=True, help="dataset repo to publish to, org/name")
@click.option("--private", is_flag=True, help="create the repo private")
@click.option("--endpoint", help=ENDPOINT_HELP)
def publish(run_ids: tuple[str, ...], repo: str, private: bool, endpoint: str | None) -> None:
    """Publish runs of the local store to a Hub dataset repo, in one commit."""
    from harness.store.hub import publish as publish_runs

    result = publish_runs(list(run_ids), repo, private=private, endpoint=endpoint)
    if result.commit is None:
        click.echo(f"{repo}: already up to date ({', '.join(result.unchanged)}); no commit made")
        return
    click.echo(f"{repo}: published {', '.join(result.published)} in commit {result.commit}")
    if result.unchanged:
        click.echo(f"unchanged: {', '.join(result.unchanged)}")
    click.echo(result.url)


@click.command()
@click.argument("spec")
@click.option("--revision", help="branch or 40-hex commit sha (default: main)")
@click.option("--endpoint", help=ENDPOINT_HELP)
def pull(spec: str, revision: str | None, endpoint: str | None) -> None:
    """Download org/name (all runs) or org/name/<run_id> into the local store, verified."""
    from harness.store.hub import pull as pull_runs
    from harness.store.local import LocalStore

    store = LocalStore()
    for run_id in pull_runs(spec, revision=revision, endpoint=endpoint, store=store):
        record = store.load(run_id)
        source = record.get("pulled_from") or {}
        click.echo(f"{run_id}\t{record.get('status')}\tfrom {source.get('repo', spec)}@{str(source.get('revision', ''))[:12]}")


def stage_project(run_dir: Path, workdir: Path) -> Path:
    """Lay a run's manifest, lockfile and image context out as a project; returns the manifest's path.

    The paths come from the manifest itself (image.build, image.lockfile) after a schema check, and
    must stay inside the project, exactly as for a local manifest.
    """
    from harness.manifest import parse_manifest

    from harness.safefs import UnsafeFile, copy_beneath

    source = run_dir / "manifest.yaml"
    manifest_path = workdir / "manifests" / "manifest.yaml"
    try:
        copy_beneath(run_dir, "manifest.yaml", manifest_path, limit=1 << 20)
    except UnsafeFile as exc:
        raise HarnessError(f"{run_dir}: no usable manifest.yaml in the run record ({exc.reason}); it cannot be reproduced") from None
    image = parse_manifest(manifest_path).image
    for relative in (image.build, image.lockfile):
        if relative is not None and (PurePosixPath(relative).is_absolute() or ".." in PurePosixPath(relative).parts):
            raise HarnessError(f"{source}: image path {relative!r} leaves the project")
    if image.build is not None:
        if not (run_dir / "context").is_dir():
            raise HarnessError(f"{run_dir}: the record has no context/ to rebuild image {image.build} from")
        from harness.images import context_files

        for path in context_files(run_dir / "context"):  # refuses links, special files, oversize
            relative = path.relative_to(run_dir).as_posix()
            copy_beneath(run_dir, relative, workdir / image.build / path.relative_to(run_dir / "context"))
    else:
        (workdir / "images").mkdir()  # marks the project root for manifests with image.ref
    if image.lockfile is not None:
        if not (run_dir / "lockfile.txt").is_file():
            raise HarnessError(f"{run_dir}: the record has no lockfile.txt for {image.lockfile}")
        (workdir / image.lockfile).parent.mkdir(parents=True, exist_ok=True)
        copy_beneath(run_dir, "lockfile.txt", workdir / image.lockfile, limit=64 << 20)
    return manifest_path


def _original_run(target: str, endpoint: str | None, revision: str | None) -> tuple[str, str | None]:
    """(run id in the local store, repo it came from or None); pulls ``org/name/<run_id>`` first."""
    from harness.store.hub import parse_run_spec, pull as pull_runs
    from harness.store.local import LocalStore

    store = LocalStore()
    if "/" not in target:
        record = store.load(target)
        return target, (record.get("pulled_from") or {}).get("repo")
    repo, run_id = parse_run_spec(target)
    if run_id is None:
        raise HubError(f"{target!r}: name the run to reproduce, org/name/<run_id>")
    pull_runs(target, revision=revision, endpoint=endpoint, store=store)
    return run_id, repo


def _print_verdict(verdict: Any, original: str, reproduction: str, figure: Path) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console(file=sys.stdout, soft_wrap=True)
    table = Table(title=f"{original} vs {reproduction}")
    for column in ("metric", "points", "max |diff|", "max rel diff", "first step", "status"):
        table.add_column(column)
    for row in verdict.rows:
        points = str(row.original_points) if row.original_points == row.reproduced_points else f"{row.original_points} / {row.reproduced_points}"
        table.add_row(row.metric, points, f"{row.max_abs_diff:.3g}", f"{row.max_rel_diff:.3g}",
                      "" if row.first_step is None else str(row.first_step), row.status)
    console.print(table)
    if verdict.hardware_differences:
        console.print("hardware differences:")
        for name, before, after in verdict.hardware_differences:
            console.print(f"  {name}: {before} -> {after}", markup=False)
    else:
        console.print("hardware differences: none")
    if verdict.test:
        console.print(verdict.test, markup=False)
    if verdict.first_difference is not None:
        d = verdict.first_difference
        console.print(f"first difference: {d.metric} at step {d.step}: {d.original!r} -> {d.reproduced!r}", markup=False)
    console.print(f"figure: {figure}", markup=False)
    click.echo(f"verdict: {verdict.verdict}")


@click.command()
@click.argument("target")
@click.option("--endpoint", help=ENDPOINT_HELP)
@click.option("--revision", help="Hub revision to pull the original from (default: main)")
@click.option("--publish", "publish_result", is_flag=True, help="publish the reproduction to the same repo")
@click.option("--runtime", type=click.Choice(["docker", "process"]), default="docker", show_default=True)
@click.option("--trust-code", is_flag=True, help="allow --runtime process for a pulled run (runs its code on this host)")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), help="folder for the figure and verdict.json")
@click.option("--allow-build-network", is_flag=True,
              help="build a recipe that declares image.network: true (its build then reaches this host's network)")
def reproduce(target: str, endpoint: str | None, revision: str | None, publish_result: bool, runtime: str,
              trust_code: bool, out: Path | None, allow_build_network: bool) -> None:
    """Re-run org/name/<run_id> (or a local run id) from its own record and compare with the original.

    Exit status 0: identical or consistent; 1: diverged; 2: bad input.
    """
    from harness.analysis.compare import compare_runs, plot_comparison
    from harness.manifest import load_manifest
    from harness.plan import RunSpec, config_key
    from harness.runner import execute
    from harness.store.local import LocalStore

    store = LocalStore()
    if runtime == "process" and "/" in target and not trust_code:
        raise HarnessError("--runtime process would run downloaded code on this host without a sandbox; "
                           "add --trust-code if you have read it, or use --runtime docker")
    original_id, repo = _original_run(target, endpoint, revision)
    original = store.load(original_id)
    if runtime == "process" and original.get("pulled_from") and not trust_code:
        raise HarnessError(f"run {original_id} was pulled from {repo}: --runtime process needs --trust-code")
    if publish_result and repo is None:
        raise HarnessError(f"run {original_id} was not pulled from the Hub: publish the reproduction with `harness publish`")
    if original.get("status") != "completed":
        raise HarnessError(f"run {original_id} is {original.get('status')!r}: only completed runs can be reproduced")
    problems = store.verify(original_id)
    if problems:
        raise HarnessError(f"run {original_id} does not match its record ({'; '.join(problems[:3])})")

    with tempfile.TemporaryDirectory(prefix="harness-reproduce-") as workdir:
        loaded = load_manifest(stage_project(store.run_dir(original_id), Path(workdir)))
        if loaded.manifest.image.network and not allow_build_network and runtime == "docker":
            raise HarnessError(f"run {original_id}: its recipe declares image.network: true, so rebuilding it would give "
                               "its build this host's network; read its context/, then pass --allow-build-network to build it")
        params = dict(original.get("params") or {})
        seed, smoke = int(original["seed"]), bool(original.get("smoke"))
        spec = RunSpec(loaded=loaded, params=params, seed=seed, smoke=smoke,
                       config_key=config_key(loaded, params, seed, smoke))
        click.echo(f"reproducing {original_id} (seed {seed}) with a fresh image build", err=True)
        record = execute(spec, store, runtime=runtime, reproduces=original_id, force_build=True,
                         echo=lambda line: click.echo(line, err=True))
        expect = loaded.manifest.expect

    reproduction_id = record["run_id"]
    verdict = compare_runs(store.run_dir(original_id), store.run_dir(reproduction_id), expect)
    out_dir = out or store.root / "reproductions" / reproduction_id
    figure = plot_comparison(store.run_dir(original_id), store.run_dir(reproduction_id), out_dir / "comparison.png")
    (out_dir / "verdict.json").write_text(json.dumps(
        {"original": original_id, "reproduction": reproduction_id, **verdict.to_dict()}, indent=2, default=str) + "\n")
    # record.json is outside the checksummed files, so the verdict can join the sealed record.
    record["reproduction_verdict"] = verdict.verdict
    store.save(record)
    _print_verdict(verdict, original_id, reproduction_id, figure)

    if publish_result:
        from harness.store.hub import publish as publish_runs

        assert repo is not None
        result = publish_runs([reproduction_id], repo, endpoint=endpoint or (original.get("pulled_from") or {}).get("endpoint"))
        click.echo(f"{repo}: published {reproduction_id} in commit {result.commit}")
    if verdict.verdict == "diverged":
        raise click.exceptions.Exit(1)
