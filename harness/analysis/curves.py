"""Learning curves across seeds: rolling smoothing, a common x grid (linear interpolation),
and the mean with a 95 % bootstrap percentile interval over seeds per group.

Why bootstrap and not Student t: with 3-5 seeds a t interval is wide and symmetric, so on a
bounded metric (CartPole's return lies in [0, 500]) it runs outside what any run can score. A
percentile interval of resampled seed means stays inside the range the seeds cover.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
from scipy import stats

from harness.errors import HarnessError

if TYPE_CHECKING:
    from harness.store.local import LocalStore

Series = tuple[np.ndarray, np.ndarray]


BOOTSTRAP_REPS = 2000


@dataclass(frozen=True)
class Curve:
    """One group's curve on the grid ``x``: the mean and a band: the 95 % bootstrap CI from
    ``MIN_CI_SEEDS`` seeds, the range of the seeds with two (NaN with a single seed)."""

    x: np.ndarray
    mean: np.ndarray
    lo: np.ndarray
    hi: np.ndarray
    runs: int

    @property
    def band(self) -> str:
        """What the shaded band is, in words."""
        if self.runs >= MIN_CI_SEEDS:
            return "95 % bootstrap CI"
        return "range of the 2 seeds" if self.runs == 2 else "none"


# Two seeds give a bootstrap only three distinct resamples: its "95 %" interval is the seeds' range
# under a name it has not earned. Below this, the band drawn is the range of the seeds, named so.
MIN_CI_SEEDS = 3


def rolling_mean(values: np.ndarray, window: int) -> np.ndarray:
    """Trailing rolling mean; the first points average what is there (no NaN head)."""
    values = np.asarray(values, dtype=float)
    if window <= 1 or len(values) == 0:
        return values
    sums = np.cumsum(np.r_[0.0, values])
    index = np.arange(1, len(values) + 1)
    start = np.maximum(index - window, 0)
    return (sums[index] - sums[start]) / (index - start)


def mean_ci(matrix: np.ndarray, confidence: float = 0.95) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Mean over rows and its Student-t confidence interval (NaN bounds for a single row)."""
    n = matrix.shape[0]
    mean = matrix.mean(axis=0)
    if n < 2:
        nan = np.full_like(mean, np.nan)
        return mean, nan, nan
    half = stats.t.ppf(0.5 + confidence / 2, n - 1) * matrix.std(axis=0, ddof=1) / np.sqrt(n)
    return mean, mean - half, mean + half


def bootstrap_ci(
    matrix: np.ndarray, confidence: float = 0.95, reps: int = BOOTSTRAP_REPS, seed: int = 0
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Mean over rows (seeds) and a percentile bootstrap interval of it, per column.

    Seeds are resampled with replacement (a fixed seed: the same figure every time); the bounds
    never leave the range the rows cover. NaN bounds for a single row.
    """
    n = matrix.shape[0]
    mean = matrix.mean(axis=0)
    if n < 2:
        nan = np.full_like(mean, np.nan)
        return mean, nan, nan
    rng = np.random.default_rng(seed)
    picks = rng.integers(0, n, size=(reps, n))
    means = matrix[picks].mean(axis=1)  # (reps, columns)
    alpha = (1 - confidence) / 2
    lo, hi = np.quantile(means, [alpha, 1 - alpha], axis=0)
    return mean, lo, hi


def group_curves(
    groups: Mapping[str, Mapping[str, Series]], points: int = 200, smooth: int = 1
) -> tuple[dict[str, Curve], list[str]]:
    """Curves of several groups on one common grid; also notes for the user.

    All groups share the x range that every run covers: when runs or groups cover different
    ranges, they are cut to the common one and a note says so.
    """
    runs = [(label, run_id, xy) for label, series in groups.items() for run_id, xy in series.items() if len(xy[0])]
    if not runs:
        raise HarnessError("no points to plot: the selected runs logged nothing for this metric")
    starts = {
        label: max(float(xy[0][0]) for l2, _, xy in runs if l2 == label)
        for label in groups
        if any(name == label for name, _, _ in runs)
    }
    stops = {label: min(float(xy[0][-1]) for l2, _, xy in runs if l2 == label) for label in starts}
    start, stop = max(starts.values()), min(stops.values())
    notes: list[str] = []
    if stop <= start:
        raise HarnessError(
            "the runs share no common x range: "
            + ", ".join(f"{label} {starts[label]:g}-{stops[label]:g}" for label in starts)
        )
    if len({(starts[g], stops[g]) for g in starts}) > 1:
        spans = ", ".join(f"{label} {starts[label]:g}-{stops[label]:g}" for label in starts)
        notes.append(f"groups cover different ranges ({spans}); cut to the common range {start:g}-{stop:g}")
    grid = np.linspace(start, stop, points)
    curves: dict[str, Curve] = {}
    for label in starts:
        rows = [np.interp(grid, xy[0], rolling_mean(xy[1], smooth)) for l2, _, xy in runs if l2 == label]
        matrix = np.vstack(rows)
        if len(rows) >= MIN_CI_SEEDS:
            mean, lo, hi = bootstrap_ci(matrix)
        else:
            mean, lo, hi = (
                bootstrap_ci(matrix[:1]) if len(rows) == 1 else (matrix.mean(0), matrix.min(0), matrix.max(0))
            )
        curves[label] = Curve(grid, mean, lo, hi, len(rows))
    single = sorted(label for label, c in curves.items() if c.runs < 2)
    if single:
        notes.append(f"one seed only for {', '.join(single)}: no confidence interval")
    pairs = sorted(label for label, c in curves.items() if c.runs == 2)
    if pairs:
        notes.append(
            f"two seeds only for {', '.join(pairs)}: the band is their range, not a confidence interval "
            f"(that needs at least {MIN_CI_SEEDS} seeds)"
        )
    return curves, notes


def learning_curve_panels(
    store: LocalStore,
    runs: Any,
    metric: str,
    by: str,
    env_key: str,
    x_axis: str,
    points: int,
    smooth: int,
) -> tuple[dict[str, dict[str, Curve]], list[str], int]:
    """The selected runs' curves of ``metric``, one panel per environment and one curve per group:
    (panels, notes, number of runs with the metric). HarnessError when no run logged it."""
    from harness.analysis.index import metric_names, metric_series
    from harness.analysis.tables import env_labels, group_labels

    series = metric_series(store, runs, metric, x=x_axis)
    if not series:
        names = metric_names(store, runs)
        raise HarnessError(
            f"no selected run logged metric {metric!r} (they logged: {', '.join(names[:12]) or 'nothing'})"
        )
    if x_axis == "wall_time":  # seconds since each run's first point
        series = {r: (x - x[0], y) for r, (x, y) in series.items()}
    panels_in: dict[str, dict[str, dict[str, tuple[np.ndarray, np.ndarray]]]] = {}
    for run_id, group, env in zip(runs.column("run_id").to_pylist(), group_labels(runs, by), env_labels(runs, env_key)):
        if run_id in series:
            panels_in.setdefault(env, {}).setdefault(group, {})[run_id] = series[run_id]
    panels: dict[str, dict[str, Curve]] = {}
    notes: list[str] = []
    for env, groups in panels_in.items():
        curves, group_notes = group_curves(groups, points=points, smooth=smooth)
        panels[env] = curves
        notes += [f"{env}: {note}" if env != "-" else note for note in group_notes]
    return panels, notes, len(series)
