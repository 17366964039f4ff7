"""THC, the Tuning Hyperparameter Consistency score (Obando-Ceron et al., RLC 2024).

For one hyper-parameter with K values scored in several settings (games, environments, data
regimes, agents): rank the values in each setting by an interval (mean ± std over seeds, or a
bootstrap CI of the IQM), with overlapping intervals sharing a rank; the THC is the mean over
values of each value's rank spread across settings divided by K − 1 (0: the same ranking
everywhere, 1: maximal flips), reported with the std over values (ddof=1).
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import pandas as pd

from harness.errors import HarnessError

if TYPE_CHECKING:
    from harness.store.local import LocalStore

Ranking = Literal["interval", "iqm-ci"]


@dataclass(frozen=True)
class ThcScore:
    """THC of one hyper-parameter: mean and std over values of the normalised rank spread."""

    thc_mean: float
    thc_std: float
    spread: dict[str, float]  # value -> (max rank - min rank) / (K - 1)
    settings: int


@dataclass(frozen=True)
class ThcRow:
    """One line of a THC table: a hyper-parameter within a group (e.g. regime and agent)."""

    group: dict[str, str]
    hyperparameter: str
    score: ThcScore
    dropped_settings: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, object]:
        """The row as ``--json`` prints it."""
        return {
            "group": self.group,
            "hyperparameter": self.hyperparameter,
            "thc_mean": self.score.thc_mean,
            "thc_std": self.score.thc_std,
        }


def interval_ranks(lo: Sequence[float], hi: Sequence[float]) -> np.ndarray:
    """1-based ranks of values given their intervals, best (highest) first.

    Values whose intervals overlap share a rank: the midpoint of the best and worst positions
    they could hold. This is the study's exact procedure, sentinel included.
    """
    lo_arr = np.asarray(lo, dtype=float)
    hi_arr = np.asarray(hi, dtype=float)
    order = sorted(range(len(hi_arr)), key=lambda v: hi_arr[v], reverse=True)
    sorted_lo = [lo_arr[v] for v in order] + [-np.inf]
    sorted_hi = [hi_arr[v] for v in order] + [-np.inf]
    ranks = np.empty(len(order))
    for i, value in enumerate(order):
        best = next(b for b in range(i + 1) if sorted_lo[b] <= sorted_hi[i])
        worst = next(w for w in range(i + 1, len(sorted_hi)) if sorted_hi[w] < sorted_lo[i])
        ranks[value] = (best + 1 + worst) / 2
    return ranks


def thc_from_intervals(values: Sequence[str], lo: np.ndarray, hi: np.ndarray) -> ThcScore:
    """THC from per-setting intervals: ``lo`` and ``hi`` have shape (settings, values)."""
    lo = np.asarray(lo, dtype=float)
    hi = np.asarray(hi, dtype=float)
    k = len(values)
    if k < 2:
        raise HarnessError(f"THC needs at least two values of the hyper-parameter, got {k}")
    if lo.shape != hi.shape or lo.ndim != 2 or lo.shape[1] != k:
        raise HarnessError(f"THC intervals must be (settings, {k} values), got {lo.shape} and {hi.shape}")
    if np.isnan(lo).any() or np.isnan(hi).any():
        raise HarnessError("THC intervals contain NaN: every value needs a score in every setting")
    ranks = np.stack([interval_ranks(lo[s], hi[s]) for s in range(lo.shape[0])])
    spread = (ranks.max(axis=0) - ranks.min(axis=0)) / (k - 1)
    std = float(np.std(spread, ddof=1)) if k > 1 else 0.0
    return ThcScore(
        thc_mean=float(np.mean(spread)),
        thc_std=std,
        spread={str(v): float(s) for v, s in zip(values, spread)},
        settings=lo.shape[0],
    )


def mean_std_intervals(scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The study's intervals: mean ± std (ddof=0) over seeds.

    ``scores`` has shape (settings, values, seeds); NaN marks a missing seed.
    """
    mean = np.nanmean(scores, axis=2)
    std = np.nanstd(scores, axis=2)
    return mean - std, mean + std


def iqm_ci_intervals(
    scores: np.ndarray, reps: int = 2000, seed: int = 0, confidence: float = 0.95
) -> tuple[np.ndarray, np.ndarray]:
    """Intervals as stratified-bootstrap CIs of the IQM over (seeds x tasks), via rliable.

    ``scores`` has shape (settings, values, seeds, tasks): for comparisons across agents or data
    regimes, each setting's IQM aggregates the games/environments (the tasks).
    """
    from harness.analysis.aggregate import interval_estimates

    settings, k = scores.shape[:2]
    lo = np.empty((settings, k))
    hi = np.empty((settings, k))
    for s in range(settings):
        per_value = {str(v): scores[s, v] for v in range(k)}
        estimates = interval_estimates(per_value, ["iqm"], reps=reps, seed=seed, confidence=confidence)
        for v in range(k):
            lo[s, v], hi[s, v] = estimates[str(v)]["iqm"].ci
    return lo, hi


def _pivot(frame: pd.DataFrame, index: list[str], columns: str, value_col: str) -> pd.DataFrame:
    return frame.pivot_table(index=index, columns=columns, values=value_col, aggfunc="mean", sort=True)


def thc_from_table(
    table: pd.DataFrame,
    hparam_col: str,
    value_col: str,
    setting_col: str,
    seed_col: str,
    score_col: str,
    group_by: Sequence[str] = (),
    ranking: Ranking = "interval",
    task_col: str | None = None,
    reps: int = 2000,
    seed: int = 0,
) -> list[ThcRow]:
    """THC per hyper-parameter (and group) from a long table: one row per run and setting.

    With ``ranking="interval"`` each (setting, value) is the mean ± std of the score over seeds.
    With ``ranking="iqm-ci"`` it is the bootstrap CI of the IQM over seeds x ``task_col``.
    A setting that lacks some value is dropped from that hyper-parameter (with a warning).
    """
    needed = [hparam_col, value_col, setting_col, seed_col, score_col, *group_by]
    if ranking == "iqm-ci":
        if not task_col:
            raise HarnessError("ranking by IQM CIs needs a task column (--task-col), e.g. the game")
        needed.append(task_col)
    missing = [c for c in needed if c not in table.columns]
    if missing:
        raise HarnessError(f"table has no column {', '.join(missing)} (columns: {', '.join(map(str, table.columns))})")
    if table.empty:
        raise HarnessError("table has no rows")
    frame = table[needed].copy()
    for column in [hparam_col, value_col, setting_col, *group_by] + ([task_col] if task_col else []):
        frame[column] = frame[column].astype(str)
    rows: list[ThcRow] = []
    keys = [*group_by, hparam_col]
    for key, part in frame.groupby(keys, sort=True):
        key = key if isinstance(key, tuple) else (key,)
        group = dict(zip(group_by, key[:-1]))
        hyperparameter = key[-1]
        values = sorted(part[value_col].unique())
        settings_with_all = part.groupby(setting_col)[value_col].nunique()
        complete = sorted(settings_with_all[settings_with_all == len(values)].index)
        dropped = sorted(set(settings_with_all.index) - set(complete))
        if dropped:
            label = "/".join([*key[:-1], hyperparameter])
            warnings.warn(
                f"{label}: settings {', '.join(dropped)} lack some values; THC uses the other {len(complete)}",
                stacklevel=2,
            )
        if len(complete) < 2:
            continue
        part = part[part[setting_col].isin(complete)]
        if ranking == "interval":
            cube = _pivot(part, [setting_col, value_col], seed_col, score_col)
            cube = cube.reindex(pd.MultiIndex.from_product([complete, values]))
            scores = cube.to_numpy().reshape(len(complete), len(values), -1)
            lo, hi = mean_std_intervals(scores)
        else:
            cube = _pivot(
                part, [setting_col, value_col, seed_col], str(task_col), score_col
            )  # checked above: iqm-ci needs task_col
            seeds = sorted(part[seed_col].unique())
            tasks = list(cube.columns)
            cube = cube.reindex(pd.MultiIndex.from_product([complete, values, seeds]))
            scores = cube.to_numpy().reshape(len(complete), len(values), len(seeds), len(tasks))
            if np.isnan(scores).any():
                raise HarnessError(f"{hyperparameter}: IQM-CI ranking needs every seed on every task")
            lo, hi = iqm_ci_intervals(scores, reps=reps, seed=seed)
        rows.append(ThcRow(group, hyperparameter, thc_from_intervals(values, lo, hi), dropped))
    return rows


def thc_of_runs(
    store: LocalStore,
    selection: Sequence[str],
    hparams: list[str],
    across: str,
    metric: str | None,
    last_n: int,
    ranking: str,
    task_key: str | None,
    reps: int,
    seed: int,
    note: Callable[[str], None] = lambda text: None,
) -> list[Any]:
    """THC of a harness sweep: scores are final metrics, settings the values of ``across``."""
    from harness.analysis.selection import default_metric, run_params, select_runs
    from harness.analysis.tables import final_scores

    left_out: list[str] = []
    runs = select_runs(store, selection, left_out)
    for text in left_out:
        note(text)
    chosen = default_metric(runs, metric)
    scores, notes = final_scores(store, runs, chosen, last_n)
    for text in notes:
        note(text)
    params = run_params(runs)
    for key in [*hparams, across] + ([task_key] if task_key else []):
        if not any(key in p for p in params):
            known = sorted({k for p in params for k in p})
            raise HarnessError(f"no selected run has param {key!r} (params: {', '.join(known) or 'none'})")
    records = []
    for run_id, seed_value, p in zip(runs.column("run_id").to_pylist(), runs.column("seed").to_pylist(), params):
        if run_id in scores:
            records.append(
                {
                    **{k: json.dumps(v) if isinstance(v, (list, dict)) else v for k, v in p.items()},
                    "__seed": seed_value,
                    "__score": scores[run_id],
                }
            )
    frame = pd.DataFrame.from_records(records)
    varying = [c for c in frame.columns if not c.startswith("__") and frame[c].astype(str).nunique() > 1]
    rows = []
    for hparam in hparams:
        others = [c for c in varying if c not in (hparam, across, task_key)]
        long = frame.assign(__hparam=hparam, __value=frame[hparam].astype(str))
        rows += thc_from_table(
            long,
            "__hparam",
            "__value",
            across,
            "__seed",
            "__score",
            group_by=others,
            ranking=ranking,  # type: ignore[arg-type]
            task_col=task_key,
            reps=reps,
            seed=seed,
        )
    return rows


def read_study_table(path: Path, numeric: list[str]) -> Any:
    """A long table; CSV cells stay text as the study spelled them, except the ``numeric`` columns."""
    try:
        if path.suffix.lower() == ".parquet":
            return pd.read_parquet(path)
        frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    except (OSError, ValueError) as exc:
        raise HarnessError(f"{path}: unreadable table ({str(exc).splitlines()[0]})") from exc
    for column in numeric:
        if column in frame.columns:
            converted = pd.to_numeric(frame[column], errors="coerce")
            bad = frame[column][converted.isna()]
            if len(bad):
                raise HarnessError(f"{path}: column {column!r} has a non-number {bad.iloc[0]!r}")
            frame[column] = converted
    return frame
