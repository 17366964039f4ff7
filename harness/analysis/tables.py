"""Summary tables of selected runs: per group and environment, the mean ± std over seeds of
each run's final score (mean of its last N points), run counts and runtime; per group, rliable
aggregates over environments (IQM, median, mean, optimality gap) with bootstrap CIs.
Rendered as Markdown or CSV.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa

from harness.analysis import index as run_index
from harness.analysis.aggregate import Estimate, interval_estimates, normalize_scores, probability_of_improvement
from harness.analysis.selection import run_params
from harness.errors import HarnessError
from harness.store.local import LocalStore

AGGREGATE_METRICS = ("iqm", "median", "mean", "optimality_gap")


@dataclass(frozen=True)
class Cell:
    """One (group, environment) line of the table."""

    group: str
    env: str
    runs: int
    mean: float
    std: float  # ddof=1; NaN with one run
    runtime_s: float  # mean duration of the runs


@dataclass
class Comparison:
    """What ``harness compare`` prints."""

    metric: str
    last_n: int
    cells: list[Cell]
    aggregates: dict[str, dict[str, Estimate]] = field(default_factory=dict)
    normalization: str = "none"
    notes: list[str] = field(default_factory=list)
    # per group: (runs x environments) scores on the aggregates' scale, for profiles and P(X > Y)
    matrices: dict[str, np.ndarray] = field(default_factory=dict)
    improvement: dict[tuple[str, str], Estimate] = field(default_factory=dict)


def group_labels(runs: pa.Table, by: str) -> list[str]:
    """Each run's group: its manifest name (``manifest``) or one param's value (``param:NAME``)."""
    if by == "manifest":
        return [str(n) for n in runs.column("name").to_pylist()]
    if by.startswith("param:") and by[6:]:
        key = by[6:]
        params = run_params(runs)
        missing = sum(1 for p in params if key not in p)
        if missing == len(params):
            known = sorted({k for p in params for k in p})
            raise HarnessError(f"--by {by}: no selected run has param {key!r} (params: {', '.join(known) or 'none'})")
        return [f"{key}={p[key]}" if key in p else f"{key}=(unset)" for p in params]
    raise HarnessError(f"--by must be manifest or param:NAME, not {by!r}")


def env_labels(runs: pa.Table, env_key: str) -> list[str]:
    """Each run's environment: the value of param ``env_key`` ('-' when a run has none)."""
    return [str(p.get(env_key, "-")) for p in run_params(runs)]


def final_scores(store: LocalStore, runs: pa.Table, metric: str, last_n: int) -> tuple[dict[str, float], list[str]]:
    """Each run's final score of ``metric``; a clear error when no selected run logged it."""
    scores = run_index.final_values(store, runs, metric, last_n)
    notes: list[str] = []
    if not scores:
        names = run_index.metric_names(store, runs)
        raise HarnessError(
            f"no selected run logged metric {metric!r} (they logged: {', '.join(names[:12]) or 'nothing'})"
        )
    lacking = runs.num_rows - len(scores)
    if lacking:
        notes.append(f"{lacking} of {runs.num_rows} runs have no {metric!r} points and are left out")
    return scores, notes


def build_comparison(  # noqa: PLR0913 — the comparison's options, each a CLI option passed through
    store: LocalStore,
    runs: pa.Table,
    metric: str,
    by: str = "manifest",
    env_key: str = "env_id",
    last_n: int = 10,
    normalization: str = "minmax",
    reference: Mapping[str, tuple[float, float]] | None = None,
    reps: int = 2000,
    seed: int = 0,
) -> Comparison:
    """The comparison table of the selected runs (see the module docstring)."""
    scores, notes = final_scores(store, runs, metric, last_n)
    groups = group_labels(runs, by)
    envs = env_labels(runs, env_key)
    durations = runs.column("duration_s").to_pylist()
    cells_data: dict[tuple[str, str], list[tuple[float, float]]] = {}
    for run_id, group, env, duration in zip(runs.column("run_id").to_pylist(), groups, envs, durations):
        if run_id in scores:
            cells_data.setdefault((group, env), []).append((scores[run_id], np.nan if duration is None else duration))
    cells = []
    for (group, env), pairs in sorted(cells_data.items()):
        values = np.array([p[0] for p in pairs])
        runtimes = np.array([p[1] for p in pairs])
        std = float(values.std(ddof=1)) if len(values) > 1 else float("nan")
        runtime = float(np.nanmean(runtimes)) if not np.isnan(runtimes).all() else float("nan")
        cells.append(Cell(group, env, len(values), float(values.mean()), std, runtime))
    single = sorted({c.group for c in cells if c.runs < 2})
    if single:
        notes.append(f"one seed only for {', '.join(single)}: no std or CI there")
    comparison = Comparison(metric, last_n, cells, notes=notes, normalization=normalization)
    comparison.aggregates, comparison.normalization, comparison.matrices = _aggregates(
        cells_data, normalization, reference, reps, seed, notes
    )
    return comparison


def add_improvement(comparison: Comparison, reps: int = 2000, seed: int = 0) -> None:
    """Probability of improvement of the first group over each other one (rliable, stratified
    bootstrap CIs). Opt-in: its cost grows with runs² per environment."""
    if len(comparison.matrices) < 2:
        comparison.notes.append("probability of improvement needs two groups with shared environments")
        return
    comparison.improvement = probability_of_improvement(comparison.matrices, reps=reps, seed=seed)


def _aggregates(
    cells_data: dict[tuple[str, str], list[tuple[float, float]]],
    normalization: str,
    reference: Mapping[str, tuple[float, float]] | None,
    reps: int,
    seed: int,
    notes: list[str],
) -> tuple[dict[str, dict[str, Estimate]], str, dict[str, np.ndarray]]:
    """rliable aggregates per group over the environments every group ran; the scale used; the
    score matrices they were computed from."""
    groups = sorted({g for g, _ in cells_data})
    envs = sorted({e for _, e in cells_data})
    shared = [e for e in envs if all((g, e) in cells_data for g in groups)]
    if len(shared) < len(envs):
        notes.append(f"aggregates use the {len(shared)} environments every group ran (of {len(envs)})")
    if not shared:
        return {}, "none", {}
    matrices: dict[str, np.ndarray] = {}
    for group in groups:
        counts = [len(cells_data[(group, e)]) for e in shared]
        runs = min(counts)
        if runs < max(counts):
            notes.append(f"{group}: aggregates use {runs} runs per environment (the fewest any has)")
        matrices[group] = np.array([[cells_data[(group, e)][i][0] for e in shared] for i in range(runs)])
    if normalization == "minmax" and reference is None:
        if _spans(matrices):
            matrices = normalize_scores(matrices, shared)
        else:
            notes.append("some environment has a single distinct score: aggregates use raw scores")
            normalization = "none"
    elif reference is not None:
        matrices = normalize_scores(matrices, shared, reference)
    elif normalization != "none":
        raise HarnessError(f"normalisation must be minmax, none or reference scores, not {normalization!r}")
    scale = "reference" if reference is not None else normalization
    return interval_estimates(matrices, AGGREGATE_METRICS, reps=reps, seed=seed), scale, matrices


def _spans(matrices: dict[str, np.ndarray]) -> bool:
    stacked = np.concatenate(list(matrices.values()), axis=0)
    return bool((stacked.max(axis=0) > stacked.min(axis=0)).all())


def _fmt(value: float, digits: int = 4) -> str:
    return "n/a" if value is None or np.isnan(value) else f"{value:.{digits}g}"


def to_markdown(comparison: Comparison) -> str:
    """The comparison as Markdown: per-environment table, then the aggregates."""
    lines = [
        f"Final {comparison.metric} (mean of the last {comparison.last_n} points per run), mean ± std over seeds",
        "",
        "| group | environment | runs | mean ± std | runtime (s) |",
        "|---|---|---:|---:|---:|",
    ]
    for c in comparison.cells:
        lines.append(f"| {c.group} | {c.env} | {c.runs} | {_fmt(c.mean)} ± {_fmt(c.std, 3)} | {_fmt(c.runtime_s, 3)} |")
    if comparison.aggregates:
        scale = {"minmax": "min-max normalised per environment", "reference": "normalised by reference scores"}.get(
            comparison.normalization, "raw scores"
        )
        lines += [
            "",
            f"Aggregates over environments ({scale}), 95 % stratified bootstrap CIs",
            "",
            "| group | IQM | median | mean | optimality gap |",
            "|---|---:|---:|---:|---:|",
        ]
        for group, estimates in comparison.aggregates.items():
            single = group in comparison.matrices and comparison.matrices[group].shape[0] < 2
            row = [
                f"{_fmt(e.point, 3)} (one run: no CI)"
                if single
                else f"{_fmt(e.point, 3)} [{_fmt(e.ci[0], 3)}, {_fmt(e.ci[1], 3)}]"
                for e in (estimates[m] for m in AGGREGATE_METRICS)
            ]
            lines.append(f"| {group} | " + " | ".join(row) + " |")
    if comparison.improvement:
        lines += [
            "",
            "Probability of improvement P(X > Y), 95 % stratified bootstrap CIs",
            "",
            "| X | Y | P(X > Y) |",
            "|---|---|---:|",
        ]
        for (x, y), estimate in comparison.improvement.items():
            lines.append(
                f"| {x} | {y} | {_fmt(estimate.point, 3)} [{_fmt(estimate.ci[0], 3)}, {_fmt(estimate.ci[1], 3)}] |"
            )
    for note in comparison.notes:
        lines += ["", f"note: {note}"]
    return "\n".join(lines) + "\n"


def to_csv(comparison: Comparison) -> str:
    """Per-environment rows, then one row per group's aggregates (environment ``*``).

    Every column name says what it holds: ``final_mean``/``final_std`` are over the seeds of one
    environment, ``aggregate_<name>`` and its ``_ci_low``/``_ci_high`` are over environments.
    """
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    header = ["group", "environment", "runs", "final_mean", "final_std", "runtime_mean_s"]
    for m in AGGREGATE_METRICS:
        header += [f"aggregate_{m}", f"aggregate_{m}_ci_low", f"aggregate_{m}_ci_high"]
    writer.writerow(header)
    blank = [""] * (3 * len(AGGREGATE_METRICS))
    for c in comparison.cells:
        writer.writerow([c.group, c.env, c.runs, repr(c.mean), repr(c.std), repr(c.runtime_s), *blank])
    for group, estimates in comparison.aggregates.items():
        row: list[object] = [group, "*", sum(c.runs for c in comparison.cells if c.group == group), "", "", ""]
        for m in AGGREGATE_METRICS:
            row += [repr(estimates[m].point), repr(estimates[m].ci[0]), repr(estimates[m].ci[1])]
        writer.writerow(row)
    return buffer.getvalue()


def _finite(value: float | None) -> float | None:
    return None if value is None or not np.isfinite(value) else float(value)


def to_dict(comparison: Comparison) -> dict[str, object]:
    """``harness compare --json``: the tables as JSON (NaN as null; shape in docs/cli-json.md)."""
    return {
        "metric": comparison.metric,
        "last_n": comparison.last_n,
        "normalization": comparison.normalization,
        "cells": [
            {
                "group": c.group,
                "environment": c.env,
                "runs": c.runs,
                "final_mean": _finite(c.mean),
                "final_std": _finite(c.std),
                "runtime_mean_s": _finite(c.runtime_s),
            }
            for c in comparison.cells
        ],
        "aggregates": {
            group: {
                m: {"point": _finite(e.point), "ci_low": _finite(e.ci[0]), "ci_high": _finite(e.ci[1])}
                for m, e in estimates.items()
            }
            for group, estimates in comparison.aggregates.items()
        },
        "improvement": [
            {"x": x, "y": y, "point": _finite(e.point), "ci_low": _finite(e.ci[0]), "ci_high": _finite(e.ci[1])}
            for (x, y), e in comparison.improvement.items()
        ],
        "notes": list(comparison.notes),
    }
