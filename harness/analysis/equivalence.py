"""Equivalence verdicts between two groups of seeds: ``consistent``, ``diverged`` or ``inconclusive``.

The question a reproduction asks is not "can a difference be detected?" (with three seeds a side
almost nothing can) but "is the difference smaller than a margin the reader accepts?". So the
verdict reads a confidence interval of the difference (reproduction - original) against a margin
``±δ``:

* ``consistent``: the CI lies inside ``(-δ, δ)``. With a ``(1 - 2α)`` CI this is the two one-sided
  tests (TOST) at level α: the default confidence 0.90 is TOST at α = 0.05.
* ``diverged``: the CI lies wholly outside the margin (``lo > δ`` or ``hi < -δ``): the groups
  differ by more than the margin, at one-sided level α.
* ``inconclusive``: neither; the result says how many seeds per side would give 80 % power.

The CI method is chosen to hold its level at 3 seeds a side (benchmarks/bench_equivalence.py):

* mean across seeds: Welch's t interval (no equal-variance assumption, exact for normal scores,
  conservative for symmetric heavy tails);
* IQM across seeds (rliable's 25 % trimmed mean): Yuen's trimmed-mean interval (winsorised
  variances, Welch-type degrees of freedom on the kept points). A percentile bootstrap is not used
  for the verdict: with 3 seeds a group has only 10 distinct resamples and the interval is too
  narrow (the benchmark prints its error rates next to Yuen's).

All interval functions take arrays whose last axis is the seeds, so a curve (checkpoints x seeds)
or a simulation (repetitions x seeds) is one call.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import numpy as np
from scipy import stats

from harness.errors import HarnessError

Aggregate = Literal["mean", "iqm"]
Series = tuple[np.ndarray, np.ndarray]

CONSISTENT = "consistent"
DIVERGED = "diverged"
INCONCLUSIVE = "inconclusive"
IQM_TRIM = 0.25  # rliable's IQM: scipy.stats.trim_mean(x, 0.25)
DEFAULT_CONFIDENCE = 0.90
DEFAULT_MARGIN_RELATIVE = 0.10
DEFAULT_POWER = 0.80
SEEDS_AUTO_CAP = 20
SEEDS_NEEDED_CAP = 1000
# --seeds auto plans with an upper confidence bound of the published spread, not the spread
# itself: from 3-5 seeds the sample SD is below the true one about half the time, and a plan made
# with it would fall short of 80 % power about as often (benchmarks/bench_equivalence.py).
SD_PLANNING_CONFIDENCE = 0.95
MIN_AUTO_SEEDS = 3
# Two seeds give a spread with one degree of freedom: one pair that happens to agree makes the
# interval arbitrarily narrow, and with scores that are not normal (RL returns are often bimodal:
# seeds that learn early and seeds that learn late) its level no longer holds. So a decisive verdict
# needs three seeds a side; fewer is inconclusive, with the interval and the seeds still reported.
MIN_VERDICT_SEEDS = 3


@dataclass(frozen=True)
class Interval:
    """A difference (reproduction - original) with its two-sided CI; arrays for batched input."""

    estimate: np.ndarray
    lo: np.ndarray
    hi: np.ndarray
    df: np.ndarray
    method: str


@dataclass(frozen=True)
class EquivalenceResult:
    """The verdict between two groups of per-seed scores, and what a reader needs to judge it."""

    verdict: str  # consistent | diverged | inconclusive
    estimate: float  # aggregate(reproduction) - aggregate(original)
    ci: tuple[float, float]
    margin: float
    margin_relative: float | None  # the fraction the margin was made from, if relative
    confidence: float
    aggregate: str
    method: str
    original: float  # aggregate of the original group
    reproduction: float
    n_original: int
    n_reproduction: int
    sd_pooled: float  # on the aggregate's scale (winsorised for the IQM)
    power: float  # power to show equivalence at these seed counts, if the true difference is 0
    seeds_needed: int | None  # per side, for DEFAULT_POWER; None when the spread is unknown
    seeds_needed_capped: bool  # True: even SEEDS_NEEDED_CAP per side would not do
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return asdict(self)

    @property
    def has_interval(self) -> bool:
        """Whether a CI could be drawn (at least two seeds a side)."""
        return math.isfinite(self.ci[0]) and math.isfinite(self.ci[1])

    def summary(self) -> str:
        """One line: verdict, estimate, CI and margin, and the seeds that would settle it."""
        line = (
            f"{self.verdict}: {self.aggregate} difference {self.estimate:+.4g}, "
            + (
                f"{100 * self.confidence:g} % CI [{self.ci[0]:+.4g}, {self.ci[1]:+.4g}]"
                if self.has_interval
                else "no interval (a spread needs two seeds a side)"
            )
            + f", margin ±{self.margin:.4g}"
            + (
                f" ({100 * self.margin_relative:g} % of the original's {self.original:.4g})"
                if self.margin_relative
                else ""
            )
            + f"; {self.n_original} vs {self.n_reproduction} seed{'s' if max(self.n_original, self.n_reproduction) != 1 else ''}"
        )
        if self.verdict == INCONCLUSIVE and self.seeds_needed is not None:
            line += (
                f"; more than {SEEDS_NEEDED_CAP} seeds per side would be needed"
                if self.seeds_needed_capped
                else f"; {self.seeds_needed} seeds per side would give {100 * DEFAULT_POWER:g} % power"
            )
        return line


# -- aggregates and intervals -----------------------------------------------------------------


def _as_batch(values: Any) -> np.ndarray:
    array = np.asarray(values, dtype=float)
    if array.ndim == 0:
        raise HarnessError("scores must be a sequence of per-seed values")
    if np.isnan(array).any():
        raise HarnessError("scores contain NaN (a seed without a value)")
    return array


def trimmed_count(n: int) -> int:
    """Seeds cut from each end by the IQM of ``n`` seeds (as scipy.stats.trim_mean and rliable)."""
    return int(IQM_TRIM * n)


def aggregate_of(values: Any, aggregate: Aggregate = "mean") -> np.ndarray:
    """The mean or IQM over the last axis (the seeds)."""
    array = _as_batch(values)
    if aggregate == "mean":
        return array.mean(axis=-1)
    if aggregate == "iqm":
        g = trimmed_count(array.shape[-1])
        kept = np.sort(array, axis=-1)[..., g : array.shape[-1] - g]
        return kept.mean(axis=-1)
    raise HarnessError(f"unknown aggregate {aggregate!r}: use mean or iqm")


def _spread(array: np.ndarray, aggregate: Aggregate) -> tuple[np.ndarray, np.ndarray, int]:
    """(squared standard error of the aggregate, its variance scale, effective count h) per batch.

    For the mean: s²/n with h = n. For the IQM (Yuen): (n-1) s_w² / (h (h-1)) with the winsorised
    variance s_w² and h = n - 2g kept points.
    """
    n = array.shape[-1]
    if aggregate == "mean":
        variance = array.var(axis=-1, ddof=1)
        return variance / n, variance, n
    g = trimmed_count(n)
    h = n - 2 * g
    ordered = np.sort(array, axis=-1)
    if g:
        ordered[..., :g] = ordered[..., g : g + 1]
        ordered[..., n - g :] = ordered[..., n - g - 1 : n - g]
    variance = ordered.var(axis=-1, ddof=1)
    return (n - 1) * variance / (h * (h - 1)), variance, h


def difference_interval(
    original: Any, reproduction: Any, aggregate: Aggregate = "mean", confidence: float = DEFAULT_CONFIDENCE
) -> Interval:
    """CI of aggregate(reproduction) - aggregate(original): Welch (mean) or Yuen (IQM).

    The last axis holds the seeds; leading axes are batches and must match. Needs two seeds a
    side. When neither side varies the interval is the point itself (the difference is exact).
    """
    a, b = _as_batch(original), _as_batch(reproduction)
    if a.shape[-1] < 2 or b.shape[-1] < 2:
        raise HarnessError(f"an interval needs at least two seeds on each side, got {a.shape[-1]} and {b.shape[-1]}")
    if not 0.0 < confidence < 1.0:
        raise HarnessError(f"confidence {confidence} must be between 0 and 1")
    estimate = aggregate_of(b, aggregate) - aggregate_of(a, aggregate)
    se2_a, _, h_a = _spread(a, aggregate)
    se2_b, _, h_b = _spread(b, aggregate)
    se2 = se2_a + se2_b
    with np.errstate(invalid="ignore", divide="ignore"):
        df = se2**2 / (se2_a**2 / (h_a - 1) + se2_b**2 / (h_b - 1))
    df = np.where(se2 > 0, df, np.inf)
    half = np.where(se2 > 0, stats.t.ppf(0.5 + confidence / 2, np.where(se2 > 0, df, 1.0)) * np.sqrt(se2), 0.0)
    method = "Welch t interval" if aggregate == "mean" else "Yuen trimmed-mean interval (25 % trim)"
    return Interval(estimate, estimate - half, estimate + half, df, method)


def classify(lo: Any, hi: Any, margin: Any) -> np.ndarray:
    """The verdict of each interval against ``±margin`` (strict inequalities)."""
    lo, hi, margin = np.asarray(lo, float), np.asarray(hi, float), np.asarray(margin, float)
    inside = (lo > -margin) & (hi < margin)
    outside = (lo > margin) | (hi < -margin)
    return np.where(inside, CONSISTENT, np.where(outside, DIVERGED, INCONCLUSIVE))


def resolve_margin(
    original_statistic: float, margin: float | None = None, margin_relative: float | None = None
) -> tuple[float, float | None]:
    """(absolute margin, the relative fraction it came from or None).

    Neither given: ``DEFAULT_MARGIN_RELATIVE`` of ``|original_statistic|``.
    """
    if margin is not None and margin_relative is not None:
        raise HarnessError("give expect.margin (absolute) or expect.margin_relative (fraction), not both")
    if margin is not None:
        if not margin > 0 or not math.isfinite(margin):
            raise HarnessError(f"margin {margin} must be a positive number in the metric's units")
        return float(margin), None
    fraction = DEFAULT_MARGIN_RELATIVE if margin_relative is None else float(margin_relative)
    if not fraction > 0 or not math.isfinite(fraction):
        raise HarnessError(f"margin_relative {fraction} must be a positive fraction, e.g. 0.1 for 10 %")
    value = fraction * abs(float(original_statistic))
    if value == 0.0:
        raise HarnessError(
            f"a relative margin of an original {original_statistic!r} is 0: state an absolute expect.margin"
        )
    return value, fraction


# -- power and seed counts ----------------------------------------------------------------------


def _side(sd: float, n: np.ndarray, aggregate: Aggregate, sd_untrimmed: float | None) -> tuple[np.ndarray, np.ndarray]:
    """(squared standard error of one side's aggregate, its effective count) for ``n`` seeds.

    For the IQM, ``sd`` is the winsorised spread; a side of fewer than 4 seeds trims nothing, so
    its IQM is the mean and its spread ``sd_untrimmed``.
    """
    if aggregate == "mean":
        return sd**2 / n, n
    g = (IQM_TRIM * n).astype(int)
    h = n - 2 * g
    spread = np.where(g > 0, sd, sd if sd_untrimmed is None else sd_untrimmed)
    return (n - 1) * spread**2 / (h * (h - 1)), h


def tost_power(
    margin: float,
    sd: float,
    n_original: Any,
    n_reproduction: Any,
    confidence: float = DEFAULT_CONFIDENCE,
    true_difference: float = 0.0,
    aggregate: Aggregate = "mean",
    sd_untrimmed: float | None = None,
) -> Any:
    """Probability that the CI falls inside ``±margin`` (TOST power), shifted-t approximation.

    power = F((δ - |Δ|)/SE - t) + F((δ + |Δ|)/SE - t) - 1, F the t distribution with the Welch df
    and t its ``(1 + confidence)/2`` quantile (Chow, Shao & Wang, Sample Size Calculations in
    Clinical Research, the two one-sided tests for equivalence). The seed counts may be arrays
    (one power each); fewer than two seeds on a side give 0. For the IQM, ``sd`` is the
    winsorised spread and ``sd_untrimmed`` the plain one (used for sides too small to trim).
    """
    n_a = np.asarray(n_original, dtype=float)
    n_b = np.asarray(n_reproduction, dtype=float)
    scalar = n_a.ndim == 0 and n_b.ndim == 0
    n_a, n_b = np.broadcast_arrays(np.atleast_1d(n_a), np.atleast_1d(n_b))
    valid = (n_a >= 2) & (n_b >= 2)
    if sd <= 0:
        power = np.where(valid, float(abs(true_difference) < margin), 0.0)
    else:
        se2_a, h_a = _side(sd, np.where(valid, n_a, 2.0), aggregate, sd_untrimmed)
        se2_b, h_b = _side(sd, np.where(valid, n_b, 2.0), aggregate, sd_untrimmed)
        se2 = se2_a + se2_b
        df = se2**2 / (se2_a**2 / (h_a - 1) + se2_b**2 / (h_b - 1))
        se, t = np.sqrt(se2), stats.t.ppf(0.5 + confidence / 2, df)
        power = (
            stats.t.cdf((margin - abs(true_difference)) / se - t, df)
            + stats.t.cdf((margin + abs(true_difference)) / se - t, df)
            - 1.0
        )
        power = np.where(valid, np.maximum(power, 0.0), 0.0)
    return float(power[0]) if scalar else power


def _candidates(low: int, cap: int) -> np.ndarray:
    """Seed counts to try: every one up to 200, then geometric steps up to ``cap``."""
    counts = np.unique(np.r_[np.arange(low, min(cap, 200) + 1), np.geomspace(200, max(cap, 200), 400).astype(int)])
    return counts[(counts >= low) & (counts <= cap)]


def seeds_per_side(
    sd: float,
    margin: float,
    confidence: float = DEFAULT_CONFIDENCE,
    power: float = DEFAULT_POWER,
    aggregate: Aggregate = "mean",
    cap: int = SEEDS_NEEDED_CAP,
    sd_untrimmed: float | None = None,
) -> tuple[int, bool]:
    """(smallest n with ``power`` to show equivalence at n seeds per side, whether ``cap`` bound).

    Plans for a true difference of 0 with spread ``sd`` (the pooled spread seen). Roughly
    n ≈ 2 (z_{1-α} + z_{1-β/2})² sd² / margin², about 17 sd²/margin² at the defaults. Never fewer
    than ``MIN_VERDICT_SEEDS``: fewer could not give a verdict whatever their power.
    """
    if sd <= 0:
        return MIN_VERDICT_SEEDS, False
    candidates = _candidates(MIN_VERDICT_SEEDS, cap)
    achieved = tost_power(margin, sd, candidates, candidates, confidence, 0.0, aggregate, sd_untrimmed)
    enough = np.flatnonzero(achieved >= power)
    if not len(enough):
        return cap, True
    return int(candidates[enough[0]]), False


@dataclass(frozen=True)
class SeedChoice:
    """What ``--seeds auto`` picks for a reproduction of a published group."""

    seeds: int
    capped: bool
    power: float  # planned power at ``seeds`` (with the planning spread)
    sd_planning: float
    margin: float
    message: str

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return asdict(self)


def _spreads(scores: np.ndarray, aggregate: Aggregate) -> tuple[float, float, int]:
    """(spread on the aggregate's scale, plain SD, effective count) of one group of scores."""
    _, variance, h = _spread(scores[None, :], aggregate)
    return float(math.sqrt(variance[0])), float(scores.std(ddof=1)), int(h)


def choose_seed_count(
    published: Sequence[float],
    margin: float | None = None,
    margin_relative: float | None = None,
    confidence: float = DEFAULT_CONFIDENCE,
    aggregate: Aggregate = "mean",
    power: float = DEFAULT_POWER,
    cap: int = SEEDS_AUTO_CAP,
    sd_confidence: float = SD_PLANNING_CONFIDENCE,
) -> SeedChoice:
    """Seeds to run for a reproduction so it has ``power`` to show equivalence with the published group.

    The published seeds are fixed, so their count bounds the precision: past some point more
    reproduction seeds cannot help, and the cap binds with a message that says so. The spread
    planned with is the one-sided ``sd_confidence`` upper bound of the published spread
    (chi-square), because a spread seen on 3-5 seeds is as often too small as too large. At least
    ``MIN_AUTO_SEEDS`` are picked: two seeds give a spread with one degree of freedom.
    """
    scores = _as_batch(published)
    if scores.ndim != 1:
        raise HarnessError("published scores must be one value per seed")
    n0 = len(scores)
    statistic = float(aggregate_of(scores, aggregate))
    delta, _ = resolve_margin(statistic, margin, margin_relative)
    if n0 < 2:
        return SeedChoice(
            cap,
            True,
            0.0,
            math.nan,
            delta,
            f"one published seed gives no spread to plan with: running the cap, {cap} seeds",
        )
    sd, sd_plain, h = _spreads(scores, aggregate)
    inflate = math.sqrt((h - 1) / stats.chi2.ppf(1 - sd_confidence, h - 1))
    inflate_plain = math.sqrt((n0 - 1) / stats.chi2.ppf(1 - sd_confidence, n0 - 1))
    upper, upper_plain = sd * inflate, sd_plain * inflate_plain

    def plan(counts: Any) -> Any:
        return tost_power(delta, upper, n0, counts, confidence, 0.0, aggregate, upper_plain)

    counts = np.arange(MIN_AUTO_SEEDS, max(cap, MIN_AUTO_SEEDS) + 1)
    powers = plan(counts)
    enough = np.flatnonzero(powers >= power)
    basis = (
        f"planned with spread {upper:.4g}, the {100 * sd_confidence:g} % upper bound of the "
        f"{n0} published seeds' {sd:.4g}"
    )
    if len(enough):
        n, achieved = int(counts[enough[0]]), float(powers[enough[0]])
        return SeedChoice(
            n,
            False,
            achieved,
            upper,
            delta,
            f"{n} seeds give {100 * achieved:.0f} % power to show equivalence within ±{delta:.4g} ({basis})",
        )
    at_cap = float(plan(cap))
    beyond = _candidates(cap + 1, SEEDS_NEEDED_CAP)
    reaching = np.flatnonzero(plan(beyond) >= power)
    why = (
        f"{beyond[reaching[0]]} would"
        if len(reaching)
        else f"no seed count would: the {n0} published seeds limit the precision, so publish more seeds or state a wider margin"
    )
    return SeedChoice(
        cap,
        True,
        at_cap,
        upper,
        delta,
        f"the cap of {cap} seeds binds: it gives {100 * at_cap:.0f} % power to show equivalence "
        f"within ±{delta:.4g}, {why} ({basis})",
    )


# -- the verdict on two groups of scalars ----------------------------------------------------------


def equivalence_test(
    original: Sequence[float],
    reproduction: Sequence[float],
    aggregate: Aggregate = "mean",
    margin: float | None = None,
    margin_relative: float | None = None,
    confidence: float = DEFAULT_CONFIDENCE,
    power: float = DEFAULT_POWER,
) -> EquivalenceResult:
    """The verdict between two groups of per-seed scores (one value per seed and side).

    ``margin`` is absolute; ``margin_relative`` a fraction of the original's ``|aggregate|``;
    neither gives ``DEFAULT_MARGIN_RELATIVE``. ``confidence`` is the two-sided CI level, so
    ``consistent`` is TOST at α = (1 - confidence) / 2.
    """
    if not 0.5 < confidence < 1.0:
        raise HarnessError(f"confidence {confidence} must be between 0.5 and 1 (0.90 is TOST at α = 0.05)")
    a, b = _as_batch(original), _as_batch(reproduction)
    if a.ndim != 1 or b.ndim != 1:
        raise HarnessError("equivalence_test takes one score per seed on each side")
    if not len(a) or not len(b):
        raise HarnessError("each side needs at least one seed")
    original_value = float(aggregate_of(a, aggregate))
    reproduction_value = float(aggregate_of(b, aggregate))
    delta, fraction = resolve_margin(original_value, margin, margin_relative)
    notes: list[str] = []
    if len(a) < 2 or len(b) < 2:
        notes.append(f"{len(a)} vs {len(b)} seeds: a spread needs at least two seeds a side, so nothing can be shown")
        estimate = reproduction_value - original_value
        spread = [_spreads(x, aggregate) for x in (a, b) if len(x) >= 2]
        sd = spread[0][0] if spread else math.nan
        planned: tuple[int | None, bool] = (
            seeds_per_side(sd, delta, confidence, power, aggregate, sd_untrimmed=spread[0][1])
            if spread
            else (None, False)
        )
        return EquivalenceResult(
            INCONCLUSIVE,
            estimate,
            (-math.inf, math.inf),
            delta,
            fraction,
            confidence,
            aggregate,
            "none (too few seeds)",
            original_value,
            reproduction_value,
            len(a),
            len(b),
            sd,
            0.0,
            planned[0],
            planned[1],
            notes,
        )
    interval = difference_interval(a, b, aggregate, confidence)
    lo, hi = float(interval.lo), float(interval.hi)
    verdict = str(classify(lo, hi, delta))
    if min(len(a), len(b)) < MIN_VERDICT_SEEDS and verdict != INCONCLUSIVE:
        notes.append(
            f"the interval says {verdict}, but {min(len(a), len(b))} seeds a side cannot be trusted with "
            f"that: a verdict needs at least {MIN_VERDICT_SEEDS}"
        )
        verdict = INCONCLUSIVE
    sd_a, plain_a, h_a = _spreads(a, aggregate)
    sd_b, plain_b, h_b = _spreads(b, aggregate)
    sd = math.sqrt(((h_a - 1) * sd_a**2 + (h_b - 1) * sd_b**2) / (h_a + h_b - 2))
    sd_plain = math.sqrt(((len(a) - 1) * plain_a**2 + (len(b) - 1) * plain_b**2) / (len(a) + len(b) - 2))
    needed, capped = seeds_per_side(sd, delta, confidence, power, aggregate, sd_untrimmed=sd_plain)
    achieved = tost_power(delta, sd, len(a), len(b), confidence, 0.0, aggregate, sd_plain)
    if sd == 0.0:
        notes.append("neither group varies across seeds: the difference is exact")
    return EquivalenceResult(
        verdict,
        float(interval.estimate),
        (lo, hi),
        delta,
        fraction,
        confidence,
        aggregate,
        interval.method,
        original_value,
        reproduction_value,
        len(a),
        len(b),
        sd,
        achieved,
        needed,
        capped,
        notes,
    )


def summary_interval(
    original: tuple[Any, Any, Any], reproduction: tuple[Any, Any, Any], confidence: float = DEFAULT_CONFIDENCE
) -> Interval:
    """Welch's CI of mean(reproduction) - mean(original) from (mean, sd across seeds, seeds) of each
    side; arrays broadcast (a simulation is one call). Needs two seeds a side."""
    mean_a, sd_a, n_a = (np.asarray(x, dtype=float) for x in original)
    mean_b, sd_b, n_b = (np.asarray(x, dtype=float) for x in reproduction)
    if np.any(n_a < 2) or np.any(n_b < 2):
        raise HarnessError("an interval needs at least two seeds on each side")
    estimate = mean_b - mean_a
    se2_a, se2_b = sd_a**2 / n_a, sd_b**2 / n_b
    se2 = se2_a + se2_b
    with np.errstate(invalid="ignore", divide="ignore"):
        df = se2**2 / (se2_a**2 / (n_a - 1) + se2_b**2 / (n_b - 1))
    df = np.where(se2 > 0, df, np.inf)
    half = np.where(se2 > 0, stats.t.ppf(0.5 + confidence / 2, np.where(se2 > 0, df, 1.0)) * np.sqrt(se2), 0.0)
    return Interval(estimate, estimate - half, estimate + half, df, "Welch t interval from summary statistics")


def summary_equivalence_test(
    original: tuple[float, float, int],
    reproduction: tuple[float, float, int],
    margin: float | None = None,
    margin_relative: float | None = None,
    confidence: float = DEFAULT_CONFIDENCE,
    power: float = DEFAULT_POWER,
) -> EquivalenceResult:
    """The verdict between two groups given only as (mean, standard deviation across seeds, seeds),
    e.g. a published table and one's own runs: Welch's interval from the summary statistics, the
    same margin, classification and seed rule as ``equivalence_test`` (the mean only)."""
    if not 0.5 < confidence < 1.0:
        raise HarnessError(f"confidence {confidence} must be between 0.5 and 1 (0.90 is TOST at α = 0.05)")
    (mean_a, sd_a, n_a), (mean_b, sd_b, n_b) = original, reproduction
    if min(n_a, n_b) < 1 or min(sd_a, sd_b) < 0 or not all(map(math.isfinite, (mean_a, sd_a, mean_b, sd_b))):
        raise HarnessError("each side needs a finite mean, a non-negative spread and at least one seed")
    delta, fraction = resolve_margin(mean_a, margin, margin_relative)
    estimate = mean_b - mean_a
    notes: list[str] = []
    if min(n_a, n_b) < 2:
        notes.append(
            f"{n_a} vs {n_b} seeds: a spread needs at least two seeds a side, so no interval can be drawn; "
            f"a verdict needs {MIN_VERDICT_SEEDS}"
        )
        lo, hi, verdict, method = -math.inf, math.inf, INCONCLUSIVE, "none (too few seeds)"
    else:
        interval = summary_interval(original, reproduction, confidence)
        if sd_a == 0 and sd_b == 0:
            notes.append("neither side varies across seeds: the difference is exact")
        lo, hi, method = float(interval.lo), float(interval.hi), interval.method
        verdict = str(classify(lo, hi, delta))
        if min(n_a, n_b) < MIN_VERDICT_SEEDS and verdict != INCONCLUSIVE:
            notes.append(
                f"the interval says {verdict}, but {min(n_a, n_b)} seeds a side cannot be trusted with "
                f"that: a verdict needs at least {MIN_VERDICT_SEEDS}"
            )
            verdict = INCONCLUSIVE
    sides = [(sd, n) for sd, n in ((sd_a, n_a), (sd_b, n_b)) if n >= 2]
    sd = math.sqrt(sum((n - 1) * x**2 for x, n in sides) / sum(n - 1 for _, n in sides)) if sides else math.nan
    needed: int | None = None
    capped = False
    if sides:
        needed, capped = seeds_per_side(sd, delta, confidence, power)
    achieved = float(tost_power(delta, sd, n_a, n_b, confidence)) if sides else 0.0
    return EquivalenceResult(
        verdict,
        estimate,
        (lo, hi),
        delta,
        fraction,
        confidence,
        "mean",
        method,
        float(mean_a),
        float(mean_b),
        int(n_a),
        int(n_b),
        sd,
        achieved,
        needed,
        capped,
        notes,
    )


# -- learning curves ------------------------------------------------------------------------------


@dataclass(frozen=True)
class CurveComparison:
    """Two groups' curves on a shared grid and the CI of their difference at each checkpoint."""

    steps: np.ndarray
    original_mean: np.ndarray  # the aggregate across seeds at each checkpoint
    original_lo: np.ndarray  # the group's own CI (for the figure's band)
    original_hi: np.ndarray
    reproduction_mean: np.ndarray
    reproduction_lo: np.ndarray
    reproduction_hi: np.ndarray
    difference_lo: np.ndarray
    difference_hi: np.ndarray
    margin: float
    confidence: float
    verdicts: np.ndarray  # per checkpoint
    first_not_shown: float | None  # first checkpoint whose CI is not inside the margin
    first_diverged: float | None  # first checkpoint whose CI lies wholly outside the margin
    n_original: int
    n_reproduction: int

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready summary (the per-checkpoint arrays as lists)."""
        return {
            key: (value.tolist() if isinstance(value, np.ndarray) else value) for key, value in asdict(self).items()
        }


def _smooth(values: np.ndarray, window: int) -> np.ndarray:
    if window <= 1:
        return values
    sums = np.cumsum(np.r_[0.0, values])
    index = np.arange(1, len(values) + 1)
    start = np.maximum(index - window, 0)
    return (sums[index] - sums[start]) / (index - start)


def shared_grid(groups: Sequence[Sequence[Series]], points: int = 100) -> np.ndarray:
    """The checkpoints to compare at: the steps every run logged, when they all logged the same
    ones (at most ``points`` of them, evenly picked); otherwise ``points`` evenly spaced steps over
    the range every run covers."""
    runs = [xy for group in groups for xy in group]
    if not runs or any(len(x) == 0 for x, _ in runs):
        raise HarnessError("a curve comparison needs at least one point in every run")
    first = np.unique(np.asarray(runs[0][0], float))
    if all(np.array_equal(np.unique(np.asarray(x, float)), first) for x, _ in runs[1:]) and len(first) >= 2:
        if len(first) <= points:
            return first
        return first[np.unique(np.linspace(0, len(first) - 1, points).round().astype(int))]
    start = max(float(np.min(x)) for x, _ in runs)
    stop = min(float(np.max(x)) for x, _ in runs)
    if stop <= start:
        raise HarnessError(f"the runs share no common step range ({start:g} to {stop:g})")
    return np.linspace(start, stop, points)


def align(series: Sequence[Series], grid: np.ndarray, smooth: int = 1) -> np.ndarray:
    """(seeds x checkpoints): each run's curve, optionally smoothed, linearly interpolated onto ``grid``."""
    rows = []
    for given_x, given_y in series:
        x, y = np.asarray(given_x, float), np.asarray(given_y, float)
        order = np.argsort(x, kind="stable")
        rows.append(np.interp(grid, x[order], _smooth(y[order], smooth)))
    return np.vstack(rows)


def compare_curves(
    original: Sequence[Series],
    reproduction: Sequence[Series],
    margin: float,
    aggregate: Aggregate = "mean",
    confidence: float = DEFAULT_CONFIDENCE,
    points: int = 100,
    smooth: int = 1,
) -> CurveComparison:
    """Per checkpoint, the CI of the difference between two groups' curves against ``±margin``.

    Each series is one seed's (steps, values). The margin is the scalar verdict's margin, so the
    band has the same width at every checkpoint. Adjacent checkpoints are strongly correlated and
    many of them are compared, so one checkpoint outside the margin is a pointer, not a verdict.
    """
    if len(original) < 2 or len(reproduction) < 2:
        raise HarnessError(
            f"a curve comparison needs at least two seeds a side, got {len(original)} and {len(reproduction)}"
        )
    grid = shared_grid([original, reproduction], points)
    a, b = align(original, grid, smooth).T, align(reproduction, grid, smooth).T  # checkpoints x seeds
    interval = difference_interval(a, b, aggregate, confidence)
    verdicts = classify(interval.lo, interval.hi, margin)
    if min(len(original), len(reproduction)) < MIN_VERDICT_SEEDS:
        verdicts = np.full(verdicts.shape, INCONCLUSIVE)

    def band(matrix: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        centre = aggregate_of(matrix, aggregate)
        se2, _, h = _spread(matrix, aggregate)
        half = stats.t.ppf(0.5 + confidence / 2, h - 1) * np.sqrt(se2)
        return centre, centre - half, centre + half

    def first(mask: np.ndarray) -> float | None:
        hits = np.flatnonzero(mask)
        return float(grid[hits[0]]) if len(hits) else None

    original_band, reproduction_band = band(a), band(b)
    return CurveComparison(
        grid,
        *original_band,
        *reproduction_band,
        interval.lo,
        interval.hi,
        float(margin),
        confidence,
        verdicts,
        first(verdicts != CONSISTENT),
        first(verdicts == DIVERGED),
        len(original),
        len(reproduction),
    )
