"""rliable aggregates over environments: IQM, median, mean, optimality gap with stratified
bootstrap CIs, probability of improvement, performance profiles, sample-efficiency curves.

Score arrays follow rliable: (runs x tasks) per group, or (runs x tasks x points) for curves.
rliable draws its bootstrap indices from numpy's global random state, so every function here
seeds that state for the duration of the call (and restores it) to make a figure reproducible.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np

from harness.errors import HarnessError

AGGREGATES: dict[str, Callable[[np.ndarray], float]] = {}
AGGREGATE_NAMES = ("iqm", "median", "mean", "optimality_gap")


def _aggregates() -> dict[str, Callable[[np.ndarray], float]]:
    # rliable imports absl/arch/scipy: only pay for it when statistics are asked for
    if not AGGREGATES:
        from rliable import metrics

        AGGREGATES.update(
            iqm=metrics.aggregate_iqm,
            median=metrics.aggregate_median,
            mean=metrics.aggregate_mean,
            optimality_gap=metrics.aggregate_optimality_gap,
        )
    return AGGREGATES


@dataclass(frozen=True)
class Estimate:
    """A point estimate with its bootstrap confidence interval (lo, hi)."""

    point: float
    ci: tuple[float, float]


@contextmanager
def seeded_bootstrap(seed: int) -> Iterator[None]:
    """Seed numpy's global random state (what rliable samples from), then restore it."""
    state = np.random.get_state()
    np.random.seed(seed)
    try:
        yield
    finally:
        np.random.set_state(state)


def _check_scores(scores: Mapping[str, np.ndarray], ndim: int = 2) -> dict[str, np.ndarray]:
    if not scores:
        raise HarnessError("no groups to aggregate")
    checked = {}
    for group, given in scores.items():
        array = np.asarray(given, dtype=float)
        if array.ndim != ndim or array.shape[0] < 1:
            raise HarnessError(
                f"group {group!r}: scores must be (runs x tasks{' x points' if ndim == 3 else ''}), got {array.shape}"
            )
        if np.isnan(array).any():
            raise HarnessError(f"group {group!r}: scores contain NaN (a run without a score on some task)")
        checked[group] = array
    return checked


def _vectorised_aggregates(
    samples: np.ndarray, metrics: Sequence[str], ranks: tuple[np.ndarray, np.ndarray] | None = None
) -> np.ndarray:
    """The four aggregates for a batch of (runs x tasks) resamples: (batch, metrics).

    Same arithmetic as rliable.metrics (IQM is scipy's trim_mean over all runs and tasks).
    ``ranks``: each sample's rank among the original scores (int16) and the scores in rank
    order; the IQM then sorts the ranks (a radix sort, a third of a partition of the floats).
    """
    batch = samples.shape[0]
    flat = samples.reshape(batch, -1)
    out = np.empty((batch, len(metrics)))
    for i, metric in enumerate(metrics):
        if metric == "iqm":
            n = flat.shape[1]
            low = int(0.25 * n)
            high = n - low
            if ranks is not None:
                ordered = np.sort(ranks[0].reshape(batch, -1), axis=1, kind="stable")
                out[:, i] = np.mean(ranks[1][ordered[:, low:high]], axis=1)
            else:
                parted = np.partition(flat, (low, high - 1), axis=1)
                out[:, i] = np.mean(parted[:, low:high], axis=1)
        elif metric == "mean":
            out[:, i] = np.mean(np.mean(samples, axis=1), axis=1)
        elif metric == "median":
            out[:, i] = np.median(np.mean(samples, axis=1), axis=1)
        else:  # optimality_gap, gamma = 1
            out[:, i] = 1 - np.mean(np.minimum(flat, 1), axis=1)
    return out


def _vectorised_bootstrap(
    array: np.ndarray, metrics: Sequence[str], reps: int, confidence: float, chunk: int = 256
) -> tuple[np.ndarray, np.ndarray]:
    """rliable's stratified bootstrap (percentile CIs), drawn in batches instead of one by one.

    Draws the same indices from numpy's global random state as rliable's StratifiedBootstrap
    (runs resampled with replacement within each task), so a seed gives the same CIs.
    """
    runs, tasks = array.shape
    point = _vectorised_aggregates(array[None], metrics)[0]
    stats = np.empty((reps, len(metrics)))
    task_index = np.arange(tasks)
    flat = array.ravel()
    rank: np.ndarray | None = None
    if "iqm" in metrics and array.size <= np.iinfo(np.int16).max:
        order = np.argsort(array, axis=None, kind="stable")
        rank = np.empty(array.size, np.int16)
        rank[order] = np.arange(array.size)
        in_order = flat[order]
    for start in range(0, reps, chunk):
        size = min(chunk, reps - start)
        indices = np.random.choice(runs, (size, runs, tasks), replace=True)
        indices *= tasks  # the flat index of (run, task): one take instead of a broadcast gather
        indices += task_index
        ranks = None if rank is None else (np.take(rank, indices), in_order)
        stats[start : start + size] = _vectorised_aggregates(np.take(flat, indices), metrics, ranks)
    alpha = (1.0 - confidence) / 2
    percentiles = [100 * alpha, 100 * (1.0 - alpha)]
    bounds = np.array([np.percentile(stats[:, i], percentiles) for i in range(len(metrics))]).T
    return point, bounds


def interval_estimates(
    scores: Mapping[str, np.ndarray],
    metrics: Sequence[str] = ("iqm", "median", "mean", "optimality_gap"),
    reps: int = 2000,
    seed: int = 0,
    confidence: float = 0.95,
    engine: str = "vectorised",
) -> dict[str, dict[str, Estimate]]:
    """Aggregate metrics per group with stratified bootstrap CIs (rliable's percentile method).

    ``scores`` maps a group to a (runs x tasks) array of (normalised) final scores. All metrics of
    a group share one bootstrap, as in rliable's own examples. ``engine="rliable"`` calls
    rliable.library; the default draws the same resamples in batches (tens of times faster,
    equal to rliable for the same seed up to float rounding: tests/test_analysis.py shows it).
    """
    unknown = [m for m in metrics if m not in AGGREGATE_NAMES]
    if unknown:
        raise HarnessError(f"unknown aggregate {', '.join(unknown)} (known: {', '.join(AGGREGATE_NAMES)})")
    if engine not in ("vectorised", "rliable"):
        raise HarnessError(f"unknown bootstrap engine {engine!r} (vectorised or rliable)")
    checked = _check_scores(scores)
    results: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    with seeded_bootstrap(seed):
        if engine == "rliable":
            from rliable import library

            available = _aggregates()
            chosen = [available[m] for m in metrics]

            def aggregate(array: np.ndarray) -> np.ndarray:
                return np.array([f(array) for f in chosen])

            points, intervals = library.get_interval_estimates(
                checked, aggregate, reps=reps, confidence_interval_size=confidence
            )
            results = {g: (np.asarray(points[g]), np.asarray(intervals[g])) for g in checked}
        else:
            results = {g: _vectorised_bootstrap(a, metrics, reps, confidence) for g, a in checked.items()}
    return {
        group: {
            name: Estimate(float(point[i]), (float(bounds[0, i]), float(bounds[1, i])))
            for i, name in enumerate(metrics)
        }
        for group, (point, bounds) in results.items()
    }


def probability_of_improvement(
    scores: Mapping[str, np.ndarray],
    pairs: Sequence[tuple[str, str]] | None = None,
    reps: int = 2000,
    seed: int = 0,
    confidence: float = 0.95,
) -> dict[tuple[str, str], Estimate]:
    """P(X > Y) averaged over tasks for each pair (X, Y), with stratified bootstrap CIs.

    Without ``pairs``, every ordered pair of consecutive groups is compared (first vs each other).
    """
    from rliable import library, metrics

    checked = _check_scores(scores)
    names = list(checked)
    if pairs is None:
        pairs = [(names[0], other) for other in names[1:]]
    for x, y in pairs:
        for name in (x, y):
            if name not in checked:
                raise HarnessError(f"no group {name!r} (groups: {', '.join(names)})")
    pair_scores = {f"{x}\x00{y}": [checked[x], checked[y]] for x, y in pairs}

    def improvement(x: np.ndarray, y: np.ndarray) -> np.ndarray:
        return np.array([metrics.probability_of_improvement(x, y)])

    with seeded_bootstrap(seed):
        points, intervals = library.get_interval_estimates(
            pair_scores, improvement, reps=reps, confidence_interval_size=confidence
        )
    return {
        (key.split("\x00")[0], key.split("\x00")[1]): Estimate(
            float(points[key][0]), (float(intervals[key][0, 0]), float(intervals[key][1, 0]))
        )
        for key in pair_scores
    }


def performance_profiles(
    scores: Mapping[str, np.ndarray],
    taus: np.ndarray | None = None,
    reps: int = 2000,
    seed: int = 0,
) -> tuple[np.ndarray, dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Score distributions (fraction of runs above tau) with CIs: (taus, profiles, cis (2 x taus))."""
    from rliable import library

    checked = _check_scores(scores)
    if taus is None:
        low = min(float(a.min()) for a in checked.values())
        high = max(float(a.max()) for a in checked.values())
        taus = np.linspace(low, high, 81)
    with seeded_bootstrap(seed):
        profiles, cis = library.create_performance_profile(checked, np.asarray(taus), reps=reps)
    return np.asarray(taus), profiles, cis


def normalize_scores(
    scores: Mapping[str, np.ndarray],
    tasks: Sequence[str],
    reference: Mapping[str, tuple[float, float]] | None = None,
) -> dict[str, np.ndarray]:
    """Normalise (runs x tasks) scores per task: (x - low) / (high - low).

    ``reference`` gives (low, high) per task, e.g. (random, human) Atari scores; without it,
    low and high are the minimum and maximum over all groups' runs on that task (min-max).
    """
    checked = _check_scores(scores)
    width = len(tasks)
    for group, array in checked.items():
        if array.shape[1] != width:
            raise HarnessError(f"group {group!r} has {array.shape[1]} tasks, expected {width} ({', '.join(tasks)})")
    if reference is not None:
        missing = [t for t in tasks if t not in reference]
        if missing:
            raise HarnessError(f"no reference scores for {', '.join(missing)}")
        low = np.array([reference[t][0] for t in tasks], dtype=float)
        high = np.array([reference[t][1] for t in tasks], dtype=float)
    else:
        stacked = np.concatenate(list(checked.values()), axis=0)
        low, high = stacked.min(axis=0), stacked.max(axis=0)
    span = high - low
    degenerate = [t for t, s in zip(tasks, span) if s == 0]
    if degenerate:
        raise HarnessError(f"cannot normalise {', '.join(degenerate)}: low and high scores are equal")
    return {group: (array - low) / span for group, array in checked.items()}
