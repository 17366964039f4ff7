"""``harness verify``: what CI runs on a pull request, and what a contributor runs before one."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import click

from harness.commands.output import examples
from harness.project import ci


@click.command(
    epilog=examples(
        "harness verify origin/main", "harness verify all", "GITHUB_ACTIONS=true harness verify origin/main"
    )
)
@click.argument("base", default="origin/main")
@click.option(
    "--github/--no-github",
    "github",
    default=None,
    help="Print problems as GitHub annotations and write the job summary (default: when GITHUB_ACTIONS=true).",
)
def verify(base: str, github: bool | None) -> None:
    """Verify a submission against BASE (a git ref; `all` runs every manifest).

    1. every manifest validates; 2. every lockfile is pinned, hashed and fresh; 3. each manifest
    the change touches (directly, through its image recipe or lockfile, or every manifest when
    the harness itself changed) completes a --smoke run in the sandbox: its first seed, every
    sweep point. GPU manifests are skipped on hosts without enough GPUs. Exit 1 when any step
    fails."""
    from harness.errors import ManifestError
    from harness.images.lock import stale_lockfiles
    from harness.manifest import LoadedManifest, load_manifest

    github = ci.github_actions() if github is None else github
    root = Path.cwd()
    problems: list[ci.Annotation] = []
    loaded: list[LoadedManifest] = []
    for path in sorted((root / "manifests").glob("*.yaml")):
        relative = path.relative_to(root)
        try:
            loaded.append(load_manifest(relative))
        except ManifestError as exc:
            problems += [ci.annotation_for(problem, root) for problem in exc.problems]
    for stale in stale_lockfiles(root):
        problems.append(ci.Annotation(f"stale lockfile: {stale}", stale.file.as_posix(), stale.line))
    click.echo(f"verify: {len(loaded)} manifest(s) valid, {len(problems)} problem(s)")
    if problems:
        for problem in problems:
            click.echo(problem.workflow_command() if github else f"error: {problem}")
        _finish(github, [], problems, f"failed: {len(problems)} problem(s) in manifests or lockfiles", 1)

    changed = None if base == "all" else ci.changed_files(base, root)
    chosen = ci.choose_manifests(loaded, changed)
    if not chosen:
        click.echo("verify: no manifest touched by this change needs a run")
        _finish(github, [], [], "passed", 0)
    from harness.capture.gpu import host_gpu_status

    gpus = len(host_gpu_status().get("devices", []))
    rows: list[ci.RunRow] = []
    failures: list[ci.Annotation] = []
    for item in chosen:
        if item.gpus > gpus:
            click.echo(f"verify: SKIP {item.path} (asks for {item.gpus} GPU(s); this host has {gpus})")
            rows.append(ci.RunRow(item.path.as_posix(), "", f"skipped: needs {item.gpus} GPU(s)"))
            continue
        click.echo(f"verify: smoke run of {item.path} ({item.reason})")
        sys.stdout.flush()
        # a smoke run is one seed (the manifest's first) of every sweep point: enough to show
        # that each configuration works, a fraction of the time of all seeds
        seed = str(item.first_seed)
        outcome = subprocess.run(
            [sys.executable, "-m", "harness", "run", str(item.path), "--smoke", "--seed", seed, "--quiet"], cwd=root
        )
        new_rows = _rows_for(item.path, item.first_seed, f"not run (harness run exit {outcome.returncode})")
        rows += new_rows
        bad = [row for row in new_rows if row.status != "completed"]
        if outcome.returncode != 0 or bad:
            detail = ", ".join(f"{row.run_id} {row.status}" for row in bad) or f"exit status {outcome.returncode}"
            failures.append(
                ci.Annotation(
                    f"smoke run failed: {detail} (see the log above; reproduce with "
                    f"`harness run {item.path} --smoke --seed {seed}`)",
                    item.path.as_posix(),
                    1,
                )
            )
    for failure in failures:
        click.echo(failure.workflow_command() if github else f"error: {failure}")
    if failures:
        _finish(github, rows, failures, f"{len(failures)} of {len(chosen)} manifest(s) failed", 1)
    _finish(github, rows, [], f"passed ({len(rows)} run(s))", 0)


def _rows_for(manifest: Path, seed: int, missing: str) -> list[ci.RunRow]:
    """Summary rows of the smoke runs of ``manifest`` in the local store (newest record per run;
    ``missing`` is the status of a run without a record)."""
    from harness.manifest import load_manifest
    from harness.run.plan import expand
    from harness.store.local import LocalStore

    store = LocalStore()
    rows = []
    for spec in expand(load_manifest(manifest), seeds=[seed], smoke=True):
        records = sorted(store.find_by_config(spec.config_key), key=lambda r: r.get("started_at") or "")
        if records:
            rows.append(ci.row_from_record(manifest.as_posix(), records[-1]))
        else:
            rows.append(ci.RunRow(manifest.as_posix(), spec.run_id, missing))
    return rows


def _finish(github: bool, rows: list[ci.RunRow], problems: list[ci.Annotation], headline: str, status: int) -> None:
    markdown = ci.summary_markdown(rows, problems, headline)
    if github and ci.write_step_summary(markdown):
        click.echo("verify: job summary written")
    elif rows:
        click.echo(markdown.rstrip())
    click.echo(f"verify: {headline}")
    sys.exit(status)
