"""The analysis commands: compare (summary tables, rliable aggregates), plot (learning curves),
thc (Tuning Hyperparameter Consistency, from harness runs or from a study's own table).
"""

from __future__ import annotations

import csv
import sys
import warnings
from pathlib import Path
from typing import Any

import click

from harness.commands.options import (
    DEFAULT_METRIC,
    boot_seed_option,
    by_option,
    env_key_option,
    json_option,
    last_option,
    metric_option,
    points_option,
    reps_option,
    smooth_option,
)
from harness.commands.output import emit_json, examples
from harness.commands.runids import expand_selection
from harness.errors import HarnessError


def _store():  # type: ignore[no-untyped-def]
    from harness.store.local import LocalStore

    return LocalStore()


def _note(message: str) -> None:
    click.echo(f"note: {message}", err=True)


def _read_reference(path: Path) -> dict[str, tuple[float, float]]:
    """Reference scores: a CSV with columns env, low, high (e.g. random and human scores)."""
    try:
        with open(path, newline="") as handle:
            rows = list(csv.DictReader(handle))
        return {row["env"]: (float(row["low"]), float(row["high"])) for row in rows}
    except (OSError, KeyError, ValueError, TypeError) as exc:
        raise HarnessError(f"{path}: reference scores need CSV columns env,low,high ({exc})") from exc


def _write_text(path: Path, text: str) -> None:
    """Write a text file atomically: never half a table."""
    from harness.util.fsutil import write_text_atomic

    if not path.parent.exists():
        raise HarnessError(f"{path}: folder {path.parent} does not exist")
    write_text_atomic(path, text)


@click.command(
    epilog=examples(
        "harness compare dqn-cartpole",
        "harness compare dqn-sweep --by param:learning_rate --out table.csv",
        "harness compare dqn-sweep status=completed --json | jq '.aggregates'",
        "harness compare dqn-cartpole tag=v1 --against 'dqn-cartpole tag=v2' --margin-relative 0.1",
    )
)
@click.argument("selection", nargs=-1, required=True)
@metric_option("compare")
@by_option()
@env_key_option()
@last_option
@click.option(
    "--normalize",
    type=click.Choice(["minmax", "none"]),
    default="minmax",
    show_default=True,
    help="Score normalisation per environment for the aggregates.",
)
@click.option(
    "--reference",
    type=click.Path(path_type=Path, dir_okay=False),
    help="CSV env,low,high of reference scores (e.g. random,human) to normalise by instead.",
)
@reps_option()
@boot_seed_option()
@click.option("--out", type=click.Path(path_type=Path, dir_okay=False), help="Also write the table (.md or .csv).")
@click.option(
    "--improvement", is_flag=True, help="Add the probability of improvement of the first group over each other."
)
@click.option(
    "--profiles",
    type=click.Path(path_type=Path, dir_okay=False),
    help="Also write performance profiles (fraction of runs above each score) to this figure.",
)
@click.option(
    "--against", multiple=True, help="Verdict mode: the reproduction side's selection (quoted terms or repeated)."
)
@click.option("--margin", type=float, help="Verdict: equivalence margin in the metric's units.")
@click.option(
    "--margin-relative", type=float, help="Verdict: margin as a fraction of the original's value (default 0.1)."
)
@click.option("--confidence", type=float, help="Verdict: two-sided CI level (default 0.90, TOST at 5 %).")
@click.option(
    "--aggregate", type=click.Choice(["mean", "iqm"]), help="Verdict: across seeds (default: the manifest's, mean)."
)
@click.option(
    "--statistic", type=click.Choice(["final", "last_n"]), help="Verdict: per run, the final value or mean of --last."
)
@points_option(100, "Verdict: checkpoints compared along the curves.")
@smooth_option("Verdict: rolling-mean window of the curves (1: none).")
@click.option(
    "--figure", type=click.Path(path_type=Path, dir_okay=False), help="Verdict: write the curves and margin figure."
)
@json_option
@click.pass_context
def compare(
    ctx: click.Context,
    selection: tuple[str, ...],
    metric: str | None,
    by: str,
    env_key: str,
    last_n: int,
    normalize: str,
    reference: Path | None,
    reps: int,
    boot_seed: int,
    out: Path | None,
    improvement: bool,
    profiles: Path | None,
    against: tuple[str, ...],
    margin: float | None,
    margin_relative: float | None,
    confidence: float | None,
    aggregate: str | None,
    statistic: str | None,
    points: int,
    smooth: int,
    figure: Path | None,
    as_json: bool,
) -> None:
    """Summary table of the selected runs, per group and environment, with rliable aggregates.

    With --against: the reproduction verdict (identical, consistent, diverged, inconclusive) of
    that selection against this one; exit 0 identical/consistent, 1 diverged, 3 inconclusive.
    """
    if against:
        from harness.reproduce.compare_groups import compare_groups

        given_last = ctx.get_parameter_source("last_n") == click.core.ParameterSource.COMMANDLINE
        store = _store()
        compared = compare_groups(
            tuple(expand_selection(store, selection)),
            tuple(expand_selection(store, against)),
            metric=metric,
            last_n=last_n if given_last else None,
            statistic=statistic,
            aggregate=aggregate,
            margin=margin,
            margin_relative=margin_relative,
            confidence=confidence,
            points=points,
            smooth=smooth,
            figure=figure,
        )
        for text in compared.notes:
            _note(text)
        if as_json:
            emit_json(compared.payload)
        else:
            click.echo("\n".join(compared.lines()))
        sys.exit(compared.verdict.exit_status)
    from harness.analysis.selection import default_metric, select_runs
    from harness.analysis.tables import add_improvement, build_comparison, to_csv, to_markdown

    if out is not None and out.suffix.lower() not in (".md", ".csv"):
        raise HarnessError(f"--out {out}: use a .md or .csv file name")
    if profiles is not None:
        from harness.analysis.plots import check_output

        check_output(profiles)
    reference_scores = _read_reference(reference) if reference else None
    store = _store()
    runs = select_runs(store, expand_selection(store, selection))
    chosen = default_metric(runs, metric, DEFAULT_METRIC)
    comparison = build_comparison(
        store,
        runs,
        chosen,
        by=by,
        env_key=env_key,
        last_n=last_n,
        normalization=normalize,
        reference=reference_scores,
        reps=reps,
        seed=boot_seed,
    )
    if improvement:
        if comparison.matrices:
            _check_runs_per_group(comparison, "--improvement")
        add_improvement(comparison, reps=reps, seed=boot_seed)
    if profiles is not None:
        _check_profile_runs(comparison)
    markdown = to_markdown(comparison)
    if as_json:
        from harness.analysis.tables import to_dict

        emit_json(to_dict(comparison))
    else:
        click.echo(markdown, nl=False)
    if out is not None:
        _write_text(out, to_csv(comparison) if out.suffix.lower() == ".csv" else markdown)
        click.echo(f"wrote {out}", err=True)
    if profiles is not None:
        from harness.analysis.aggregate import performance_profiles
        from harness.analysis.plots import plot_profiles

        taus, curves, cis = performance_profiles(comparison.matrices, reps=reps, seed=boot_seed)
        scale = "normalised score (τ)" if comparison.normalization != "none" else f"{comparison.metric} (τ)"
        plot_profiles(taus, curves, cis, profiles, x_label=scale)
        click.echo(f"wrote {profiles}", err=True)


def _check_profile_runs(comparison: Any) -> None:
    """Refuse a performance profile that would be a single step (or empty axes): it needs runs to spread."""
    if not comparison.matrices:
        raise HarnessError("--profiles: the groups share no environment, so there is nothing to profile")
    _check_runs_per_group(comparison, "--profiles")


def _check_runs_per_group(comparison: Any, option: str) -> None:
    """Refuse an aggregate over seeds when some group has a single run per environment."""
    thin = {group: matrix.shape[0] for group, matrix in comparison.matrices.items() if matrix.shape[0] < 2}
    if thin:
        named = ", ".join(f"{group} has {n}" for group, n in thin.items())
        raise HarnessError(f"{option} needs at least 2 runs per group and environment ({named}); select more seeds")


@click.command(
    epilog=examples(
        "harness plot dqn-cartpole --out curves.png",
        "harness plot dqn-sweep --by param:learning_rate --smooth 10 --x wall_time --out sweep.svg",
    )
)
@click.argument("selection", nargs=-1, required=True)
@metric_option("plot")
@by_option("One curve per manifest or param:NAME.")
@env_key_option("Param that names the environment (one panel each).")
@click.option("--x", "x_axis", type=click.Choice(["step", "wall_time"]), default="step", show_default=True)
@smooth_option()
@points_option(200, "Points of the common grid.")
@click.option(
    "--out",
    type=click.Path(path_type=Path, dir_okay=False),
    default=Path("curves.png"),
    show_default=True,
    help="Figure file: .png, .svg or .pdf.",
)
@json_option
def plot(
    selection: tuple[str, ...],
    metric: str | None,
    by: str,
    env_key: str,
    x_axis: str,
    smooth: int,
    points: int,
    out: Path,
    as_json: bool,
) -> None:
    """Learning curves: mean and 95 % bootstrap CI across seeds (one seed: the curve alone, said
    in the legend), one panel per environment; the title says n and the smoothing."""
    from harness.analysis.curves import learning_curve_panels
    from harness.analysis.plots import check_output, plot_curves
    from harness.analysis.selection import default_metric, select_runs

    check_output(out)
    store = _store()
    runs = select_runs(store, expand_selection(store, selection))
    chosen = default_metric(runs, metric, DEFAULT_METRIC)
    panels, notes, run_count = learning_curve_panels(store, runs, chosen, by, env_key, x_axis, points, smooth)
    for text in notes:
        _note(text)
    x_label = "environment steps" if x_axis == "step" else "wall time (s)"
    plot_curves(panels, out, chosen, x_label=x_label, smooth=smooth)
    if as_json:
        emit_json({"figure": str(out), "metric": chosen, "runs": run_count, "panels": sorted(panels)})
        return
    click.echo(f"wrote {out} ({run_count} runs, {len(panels)} panel{'s' if len(panels) != 1 else ''})")


@click.command(
    epilog=examples(
        "harness thc dqn-thc --hparams learning_rate --across env_id",
        "harness thc --table study.csv --group-by regime,agent --json",
    )
)
@click.argument("selection", nargs=-1)
@click.option("--hparams", help="Comma-separated hyper-parameters (params of the sweep) to score.")
@click.option("--across", help="Param whose values are the settings (e.g. env_id).")
@metric_option("score runs by", fallback=False)
@last_option
@click.option(
    "--table",
    type=click.Path(path_type=Path, dir_okay=False, exists=True),
    help="Score a study from a long CSV/parquet table instead of harness runs.",
)
@click.option("--hparam-col", default="hyperparameter", show_default=True)
@click.option("--value-col", default="value", show_default=True)
@click.option("--setting-col", default="game_index", show_default=True)
@click.option("--seed-col", default="seed", show_default=True)
@click.option("--score-col", default="score", show_default=True)
@click.option("--group-by", default="", help="Comma-separated columns: one THC per group (e.g. regime,agent).")
@click.option(
    "--ranking",
    type=click.Choice(["interval", "iqm-ci"]),
    default="interval",
    show_default=True,
    help="interval: mean ± std over seeds (the study, across games); iqm-ci: bootstrap CI of the IQM "
    "over seeds x tasks (the study, across agents or regimes).",
)
@click.option("--task-col", help="With --ranking iqm-ci: the column (or param) of the tasks, e.g. game_index.")
@reps_option("Bootstrap resamples (iqm-ci).")
@boot_seed_option("Bootstrap seed (iqm-ci).")
@json_option
def thc(
    selection: tuple[str, ...],
    hparams: str | None,
    across: str | None,
    metric: str | None,
    last_n: int,
    table: Path | None,
    hparam_col: str,
    value_col: str,
    setting_col: str,
    seed_col: str,
    score_col: str,
    group_by: str,
    ranking: str,
    task_col: str | None,
    reps: int,
    boot_seed: int,
    as_json: bool,
) -> None:
    """THC (Tuning Hyperparameter Consistency): how much the ranking of each hyper-parameter's
    values changes across settings. 0: the same everywhere; 1: maximal flips."""
    from harness.analysis.thc import read_study_table, thc_from_table, thc_of_runs

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        if table is not None:
            if selection or hparams or across:
                raise HarnessError("give either --table or a selection with --hparams/--across, not both")
            frame = read_study_table(table, numeric=[seed_col, score_col])
            groups = [g for g in group_by.split(",") if g]
            rows = thc_from_table(
                frame,
                hparam_col,
                value_col,
                setting_col,
                seed_col,
                score_col,
                group_by=groups,
                ranking=ranking,  # type: ignore[arg-type]
                task_col=task_col,
                reps=reps,
                seed=boot_seed,
            )
        else:
            if not selection or not hparams or not across:
                raise HarnessError("thc needs a selection with --hparams and --across, or --table")
            names = [h for h in hparams.split(",") if h]
            store = _store()
            rows = thc_of_runs(
                store,
                expand_selection(store, selection),
                names,
                across,
                metric,
                last_n,
                ranking,
                task_col,
                reps,
                boot_seed,
                note=_note,
            )
    for warning in caught:
        _note(str(warning.message))
    if not rows:
        raise HarnessError("no hyper-parameter has two values in at least two settings: nothing to score")
    if as_json:
        emit_json([r.as_dict() for r in rows])
        return
    # with several hyper-parameters, each one's groups hold the others: show every key, "-" where absent
    group_keys = list(dict.fromkeys(k for r in rows for k in r.group))
    header = [*group_keys, "hyperparameter", "values", "settings", "THC mean", "THC std"]
    click.echo("| " + " | ".join(header) + " |")
    click.echo("|" + "---|" * (len(header) - 3) + "---:|---:|---:|")
    for r in rows:
        cells = [
            *(str(r.group.get(k, "-")) for k in group_keys),
            r.hyperparameter,
            str(len(r.score.spread)),
            str(r.score.settings),
            f"{r.score.thc_mean:.4f}",
            f"{r.score.thc_std:.4f}",
        ]
        click.echo("| " + " | ".join(cells) + " |")
