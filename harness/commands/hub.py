"""``harness publish``, ``harness pull`` and ``harness reproduce``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from harness.commands.options import endpoint_option, runtime_option


@click.command()
@click.argument("run_ids", nargs=-1, required=True)
@click.option("--repo", required=True, help="dataset repo to publish to, org/name")
@click.option("--private", is_flag=True, help="create the repo private")
@endpoint_option
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
@endpoint_option
def pull(spec: str, revision: str | None, endpoint: str | None) -> None:
    """Download org/name (all runs) or org/name/<run_id> into the local store, verified."""
    from harness.store.hub import pull as pull_runs
    from harness.store.local import LocalStore

    store = LocalStore()
    for run_id in pull_runs(spec, revision=revision, endpoint=endpoint, store=store):
        record = store.load(run_id)
        source = record.get("pulled_from") or {}
        click.echo(f"{run_id}\t{record.get('status')}\tfrom {source.get('repo', spec)}@{str(source.get('revision', ''))[:12]}")


def _print_pair(comparison: Any, original: str, reproduction: str) -> None:
    """One run against the original of its seed: a row per metric and the hardware differences."""
    from rich.table import Table

    from harness.commands.options import console

    out = console()
    table = Table(title=f"{original} vs {reproduction}")
    for column in ("metric", "points", "max |diff|", "max rel diff", "first step", "status"):
        table.add_column(column)
    for row in comparison.rows:
        points = str(row.original_points) if row.original_points == row.reproduced_points else f"{row.original_points} / {row.reproduced_points}"
        table.add_row(row.metric, points, f"{row.max_abs_diff:.3g}", f"{row.max_rel_diff:.3g}",
                      "" if row.first_step is None else str(row.first_step), row.status)
    out.print(table)
    if comparison.hardware_differences:
        out.print("hardware differences:")
        for name, before, after in comparison.hardware_differences:
            out.print(f"  {name}: {before} -> {after}", markup=False)
    else:
        out.print("hardware differences: none")
    if comparison.first_difference is not None:
        d = comparison.first_difference
        out.print(f"first difference: {d.metric} at step {d.step}: {d.original!r} -> {d.reproduced!r}", markup=False)


def _print_seeds(result: Any) -> None:
    """One row per seed: the original run and the reproduction run of that seed with their scores."""
    from rich.table import Table

    from harness.commands.options import console

    verdict = result.verdict
    originals = {seed: (run, score) for seed, run, score in
                 zip(result.original_seeds, verdict.original_runs, verdict.original_scores)}
    reproductions = {int(record["seed"]): (run, score) for record, run, score in
                     zip(result.records, verdict.reproduction_runs, verdict.reproduction_scores)}
    same_seed = {pair.seed: pair.comparison.verdict for pair in result.pairs}
    table = Table(title=f"{verdict.metric} ({verdict.statistic}) per seed")
    for column in ("seed", "original", "score", "reproduction", "score", "vs same seed"):
        table.add_column(column)
    for seed in sorted(set(originals) | set(reproductions)):
        a, b = originals.get(seed), reproductions.get(seed)
        table.add_row(str(seed), a[0] if a else "", f"{a[1]:.6g}" if a else "", b[0] if b else "",
                      f"{b[1]:.6g}" if b else "", same_seed.get(seed, ""))
    console().print(table)


@click.command()
@click.argument("target")
@endpoint_option
@click.option("--revision", help="Hub revision to pull the original from (default: main)")
@click.option("--seeds", "seeds", metavar="N|auto",
              help="seeds to run: N, or auto (80 % power to show equivalence given the published spread); "
                   "default: as many as were published")
@click.option("--new-seeds", is_flag=True, help="run seeds other than the published ones")
@click.option("--publish", "publish_result", is_flag=True, help="publish the reproduction runs to the same repo")
@runtime_option
@click.option("--trust-code", is_flag=True, help="allow --runtime process for a pulled run (runs its code on this host)")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), help="folder for the figure and verdict.json")
def reproduce(target: str, endpoint: str | None, revision: str | None, seeds: str | None, new_seeds: bool,
              publish_result: bool, runtime: str, trust_code: bool, out: Path | None) -> None:
    """Re-run org/name/<run_id> (or a local run id) from its own record over seeds and give the
    verdict against the published runs of its configuration.

    Exit status 0: identical or consistent; 1: diverged; 2: bad input; 3: inconclusive (the
    verdict says how many seeds per side would settle it).
    """
    from harness.reproduce import reproduce as reproduce_run

    result = reproduce_run(target, endpoint=endpoint, revision=revision, runtime=runtime, trust_code=trust_code,
                           publish_result=publish_result, out=out, seeds=seeds, new_seeds=new_seeds,
                           echo=lambda line: click.echo(line, err=True))
    if len(result.pairs) == 1 and len(result.original_ids) == 1 and len(result.records) == 1:
        pair = result.pairs[0]
        _print_pair(pair.comparison, pair.original_id, pair.reproduction_id)
    else:
        _print_seeds(result)
    for line in result.verdict.lines():
        click.echo(line)
    click.echo(f"figure: {result.figure}")
    click.echo(f"verdict.json: {result.verdict_path}")
    if result.published_commit is not None:
        click.echo(f"{result.repo}: published {', '.join(result.reproduction_ids)} in commit {result.published_commit}")
    if result.exit_code:
        raise click.exceptions.Exit(result.exit_code)
