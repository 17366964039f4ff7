"""``harness publish``, ``harness pull`` and ``harness reproduce``."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import click

from harness.commands.options import endpoint_option, json_option, ray_address_option, runtime_option
from harness.commands.output import emit_json, examples
from harness.commands.runids import RUN_ID_OR_HUB_OR_IMPORTED, complete_repos, complete_run_ids

trust_option = click.option(
    "--trust",
    "trust_key",
    metavar="KEY.pub",
    type=click.Path(dir_okay=False, path_type=Path),
    help="accept only runs whose provenance is signed by this ed25519 public key (PEM, from "
    "`openssl pkey -pubout`) and whose files match it",
)


@click.command(
    epilog=examples(
        "harness publish dqn-cartpole-3f2a --repo my-lab/cartpole-dqn",
        "harness publish dqn-cartpole --repo my-lab/cartpole-dqn",
        "harness publish dqn-cartpole learning_rate=1e-4 --repo my-lab/cartpole-dqn-lr",
        "harness publish $(harness ls --json | jq -r '.[].run_id') --repo my-lab/all --json",
    )
)
@click.argument("run_ids", metavar="RUN_ID_OR_SELECTION...", nargs=-1, required=True, shell_complete=complete_run_ids)
@click.option("--repo", required=True, help="dataset repo to publish to, org/name")
@click.option("--private", is_flag=True, help="create the repo private")
@endpoint_option
@click.option(
    "--license",
    "license_id",
    help="License of the results for the dataset card (a Hub license id, e.g. cc-by-4.0, mit) [default: unknown].",
)
@click.option("--pretty-name", help="Title of the dataset card [default: the manifests' names].")
@click.option(
    "--sign",
    "sign_key",
    metavar="KEY",
    type=click.Path(dir_okay=False, path_type=Path),
    help="sign each record's provenance (in-toto/SLSA, DSSE) with this ed25519 private key "
    "(PEM, from `openssl genpkey -algorithm ed25519`)",
)
@json_option
def publish(
    run_ids: tuple[str, ...],
    repo: str,
    private: bool,
    endpoint: str | None,
    license_id: str | None,
    pretty_name: str | None,
    sign_key: Path | None,
    as_json: bool,
) -> None:
    """Publish runs of the local store to a Hub dataset repo, in one commit (with the runs index,
    the dataset card and the learning-curve figure).

    Runs are named by id (or a unique prefix), or by a selection as compare and plot take it
    (a manifest name, param=value, seed=, tag=: its completed runs, smoke runs left out)."""
    from harness.analysis.repo_figure import learning_curves
    from harness.store.hub import publish as publish_runs

    result = publish_runs(
        _publish_ids(run_ids),
        repo,
        private=private,
        endpoint=endpoint,
        license=license_id,
        pretty_name=pretty_name,
        figure=learning_curves,
        sign_key=sign_key,
    )
    if as_json:
        emit_json(
            {
                "repo": repo,
                "url": result.url,
                "commit": result.commit,
                "published": result.published,
                "unchanged": result.unchanged,
            }
        )
        return
    if result.commit is None:
        click.echo(f"{repo}: already up to date ({', '.join(result.unchanged)}); no commit made")
        return
    click.echo(f"{repo}: published {', '.join(result.published)} in commit {result.commit}")
    if result.unchanged:
        click.echo(f"unchanged: {', '.join(result.unchanged)}")
    click.echo(result.url)


def _publish_ids(terms: tuple[str, ...]) -> list[str]:
    """The run ids to publish: each term a run id or unique prefix, or else all of them a selection."""
    from harness.analysis.index import refresh_index
    from harness.analysis.selection import select_runs
    from harness.commands.runids import expand_selection, resolve_run_id
    from harness.store.local import LocalStore

    store = LocalStore()
    names = set(refresh_index(store).column("name").to_pylist())
    if not any("=" in term or term in names for term in terms):
        return [resolve_run_id(store, term) for term in terms]
    left_out: list[str] = []
    runs = select_runs(store, expand_selection(store, terms), left_out)
    for text in left_out:
        click.echo(f"note: {text}", err=True)
    return [str(run_id) for run_id in runs.column("run_id").to_pylist()]


@click.command(
    epilog=examples(
        "harness pull my-lab/cartpole-dqn",
        "harness pull my-lab/cartpole-dqn/dqn-cartpole-3f2a1b0c9d8e --revision 4b8e0f... --json",
        "harness pull my-lab/cartpole-dqn --trust lab.pub",
    )
)
@click.argument("spec", shell_complete=complete_repos)
@click.option("--revision", help="branch or 40-hex commit sha (default: main)")
@endpoint_option
@trust_option
@json_option
def pull(spec: str, revision: str | None, endpoint: str | None, trust_key: Path | None, as_json: bool) -> None:
    """Download org/name (all runs) or org/name/<run_id> into the local store, verified."""
    from harness.store.hub import pull as pull_runs
    from harness.store.local import LocalStore

    store = LocalStore()
    pulled = pull_runs(spec, revision=revision, endpoint=endpoint, store=store, trust_key=trust_key)
    if as_json:
        rows = []
        for run_id in pulled:
            record = store.load(run_id)
            source = record.get("pulled_from") or {}
            rows.append(
                {
                    "run_id": run_id,
                    "status": record.get("status"),
                    "repo": source.get("repo"),
                    "revision": source.get("revision"),
                    "run_dir": str(store.run_dir(run_id)),
                }
            )
        emit_json(rows)
        return
    for run_id in pulled:
        record = store.load(run_id)
        source = record.get("pulled_from") or {}
        click.echo(
            f"{run_id}\t{record.get('status')}\tfrom {source.get('repo', spec)}@{str(source.get('revision', ''))[:12]}"
        )


def _print_pair(comparison: Any, original: str, reproduction: str) -> None:
    """One run against the original of its seed: a row per metric and the hardware differences."""
    from rich.table import Table

    from harness.commands.options import console

    out = console()
    table = Table(title=f"{original} vs {reproduction}")
    for column in ("metric", "points", "max |diff|", "max rel diff", "first step", "status"):
        table.add_column(column, no_wrap=column == "metric", overflow="fold")  # a metric name is never cut
    for row in comparison.rows:
        points = (
            str(row.original_points)
            if row.original_points == row.reproduced_points
            else f"{row.original_points} / {row.reproduced_points}"
        )
        table.add_row(
            row.metric,
            points,
            f"{row.max_abs_diff:.3g}",
            f"{row.max_rel_diff:.3g}",
            "" if row.first_step is None else str(row.first_step),
            row.status,
        )
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
    originals = {
        seed: (run, score)
        for seed, run, score in zip(result.original_seeds, verdict.original_runs, verdict.original_scores)
    }
    reproductions = {
        int(record["seed"]): (run, score)
        for record, run, score in zip(result.records, verdict.reproduction_runs, verdict.reproduction_scores)
    }
    same_seed = {pair.seed: pair.comparison.verdict for pair in result.pairs}
    table = Table(title=f"{verdict.metric} ({verdict.statistic}) per seed")
    for column in ("seed", "original", "score", "reproduction", "score", "vs same seed"):
        table.add_column(column, no_wrap=column in ("original", "reproduction"))  # run ids are never cut
    for seed in sorted(set(originals) | set(reproductions)):
        a, b = originals.get(seed), reproductions.get(seed)
        table.add_row(
            str(seed),
            a[0] if a else "",
            f"{a[1]:.6g}" if a else "",
            b[0] if b else "",
            f"{b[1]:.6g}" if b else "",
            same_seed.get(seed, ""),
        )
    console().print(table)


def _image_line(result: Any) -> str:
    image_id = str((result.record.get("image") or {}).get("id") or "none")
    if result.image_source == "registry":
        return f"the published image {result.image_ref} ({image_id[:19]}), pulled by digest, not rebuilt"
    if result.image_source == "ref":
        return f"the manifest's image.ref ({image_id[:19]})"
    note = str(result.image_check["image_note"])
    if not result.image_check["same_image"]:
        from harness.images.build import BASE_IMAGE
        from harness.images.mirror import check_mirror, image_debs

        mirror = check_mirror(image_debs(BASE_IMAGE))
        if mirror.state == "moved":  # the reader should know a fresh bootstrap cannot close the gap
            note += f"; base image: {mirror.detail}"
    return note


@click.command(
    epilog=examples(
        "harness reproduce my-lab/cartpole-dqn/dqn-cartpole-3f2a1b0c9d8e",
        "harness reproduce dqn-cartpole-3f2a --out repro/ --json",
        "harness reproduce dqn-cartpole-3f2a --rebuild",
        "harness reproduce dqn-cartpole-3f2a --backend ray --address http://HEAD:8265",
        "harness reproduce my-lab/cartpole-dqn/dqn-cartpole-3f2a1b0c9d8e --seeds 5 --new-seeds",
        "harness reproduce cartpole-v1-dqn          # a group brought in by harness import",
        "harness reproduce cleanrl/CartPole-v1-dqn-seed1 --seeds 5",
    )
)
@click.argument("target", type=RUN_ID_OR_HUB_OR_IMPORTED)
@endpoint_option
@click.option("--revision", help="Hub revision to pull the original from (default: main)")
@click.option(
    "--seeds",
    "seeds",
    metavar="N|auto",
    help="seeds to run: N, or auto (80 % power to show equivalence given the published spread) "
    "[default: as many as were published]",
)
@click.option("--new-seeds", is_flag=True, help="run seeds other than the published ones")
@click.option("--publish", "publish_result", is_flag=True, help="publish the reproduction runs to the same repo")
@runtime_option
@click.option(
    "--trust-code", is_flag=True, help="allow --runtime process for a pulled run (runs its code on this host)"
)
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), help="folder for the figure and verdict.json")
@click.option(
    "--rebuild", is_flag=True, help="build the image from the recipe even when the record names a registry image"
)
@click.option(
    "--allow-build-network",
    is_flag=True,
    help="build a recipe that declares image.network: true (its build then reaches this host's network)",
)
@click.option(
    "--backend",
    type=click.Choice(["local", "ray"]),
    default="local",
    show_default=True,
    help="where the seeds run: here one after another, or as Ray jobs side by side",
)
@ray_address_option
@trust_option
@json_option
def reproduce(  # noqa: PLR0913 — a Click command takes one parameter per option
    target: str,
    endpoint: str | None,
    revision: str | None,
    seeds: str | None,
    new_seeds: bool,
    publish_result: bool,
    runtime: str,
    trust_code: bool,
    out: Path | None,
    rebuild: bool,
    allow_build_network: bool,
    backend: str,
    address: str | None,
    trust_key: Path | None,
    as_json: bool,
) -> None:
    """Re-run org/name/<run_id> (or a local run id) from its own record over seeds and give the
    verdict against the published runs of its configuration. An imported group (`harness import`)
    is named by its name or by one of its seed repos, org/name.

    Exit status 0: identical or consistent; 1: diverged; 2: bad input; 3: inconclusive (the
    verdict says how many seeds per side would settle it).
    """
    from harness.reproduce.group_verdict import json_safe
    from harness.reproduce.reproduction import ReproduceOptions
    from harness.reproduce.reproduction import reproduce as reproduce_run
    from harness.store.local import LocalStore

    store = LocalStore()
    runner = None
    if backend == "ray":
        from harness.backends.ray import seed_runner

        runner = seed_runner(address, store, runtime)
    options = ReproduceOptions(
        endpoint=endpoint,
        revision=revision,
        runtime=runtime,
        trust_code=trust_code,
        publish_result=publish_result,
        out=out,
        seeds=seeds,
        new_seeds=new_seeds,
        rebuild=rebuild,
        allow_build_network=allow_build_network,
        trust_key=trust_key,
        seed_runner=runner,
    )
    result = reproduce_run(
        target, options, store=store, echo=lambda line: click.echo(line, err=True), progress=sys.stderr
    )
    if as_json:
        emit_json(json_safe(result.to_dict(curves=False)))
    else:
        click.echo(f"image: {_image_line(result)}")
        if len(result.pairs) == 1 and len(result.original_ids) == 1 and len(result.records) == 1:
            pair = result.pairs[0]
            _print_pair(pair.comparison, pair.original_id, pair.reproduction_id)
        else:
            _print_seeds(result)
        for line in result.verdict.lines():
            click.echo(line)
        if result.published_evaluation:
            shown = ", ".join(
                f"seed {row['seed']}: {row.get('eval/mean_reward')} +/- {row.get('eval/std_reward')}"
                for row in result.published_evaluation
            )
            click.echo(
                f"published final evaluation (the card's mean_reward, not part of the verdict: the "
                f"reproduction runs no evaluation): {shown}"
            )
        click.echo(f"figure: {result.figure or 'none (the reproduction did not complete)'}")
        click.echo(f"verdict.json: {result.verdict_path}")
        if result.published_commit is not None:
            click.echo(
                f"{result.repo}: published {', '.join(result.reproduction_ids)} in commit {result.published_commit}"
            )
    if result.exit_code:
        raise click.exceptions.Exit(result.exit_code)
