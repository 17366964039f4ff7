"""Calibration of the equivalence verdicts by simulation with a known truth.

For each score distribution (normal, and Student-t with 3 degrees of freedom scaled to unit
standard deviation: heavy-tailed, like final returns where a few seeds collapse), aggregate
(mean, IQM), seed count per side (3, 5, 10, 20) and margin (in units of the scores' standard
deviation), 1,000 simulated comparisons print:

* ``div|eq``: the rate of ``diverged`` when the truth is equal (aim ≤ 5 %);
* ``con|1.5m``: the rate of ``consistent`` when the true difference is 1.5 x the margin (aim ≤ 5 %);
* ``con|1m``: the rate of ``consistent`` when the true difference is exactly the margin: the TOST's
  size, at most 5 % for a valid interval (no aim in the issue; the sharpest check of the CI);
* ``con|eq``: the rate of ``consistent`` when equal, at that seed count (power; no aim);
* ``auto``: the seed count ``--seeds auto`` picks from the published group (median over
  repetitions), the share of repetitions where its cap binds, and ``con|auto``: the rate of
  ``consistent`` when equal with the picked count, over the repetitions where the cap did not bind
  (aim ≥ 80 %; when the cap binds the chooser says that 80 % is out of reach). The closing line
  takes the worst of this over the cases where the cap binds in under half of the repetitions: in
  the others 80 % is out of reach for most published groups, and the few whose spread happened to
  look small are exactly the ones a plan from that spread underpowers;
* for the IQM, the same two error rates with a percentile bootstrap CI, to show why the verdict
  uses Yuen's interval instead.

The published group is the original side (its seed count is the case's); the reproduction runs
as many seeds as published, or as many as the chooser picks. Run: ``python benchmarks/bench_equivalence.py``
(``--reps``, ``--seed``, ``--quick``).

``--reference``: the same error rates for a verdict against a published table
(``compare --against-reference``): the reference side is only (mean, sd, seeds) of a published
group, the runs are per-seed scores, Welch's interval is computed from the summary statistics.
The cases cross the published seed count with the runs' seed count; ``se con|1m`` is the rate of
``consistent`` at a true difference of the margin when the published spread was a standard error
read as a standard deviation (what a bare "mean ± x" leaves open, and why the manifest must say
``spread``): the interval is too narrow and the TOST's size grows past 5 %.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from harness.analysis.equivalence import (
    CONSISTENT,
    DIVERGED,
    SD_PLANNING_CONFIDENCE,
    SEEDS_AUTO_CAP,
    aggregate_of,
    choose_seed_count,
    classify,
    difference_interval,
    summary_interval,
)

CONFIDENCE = 0.90
SEEDS = (3, 5, 10, 20)
MARGINS = (1.0, 2.0, 3.0)
BOOTSTRAP_REPS = 1000


def draw(rng: np.random.Generator, distribution: str, shape: tuple[int, ...]) -> np.ndarray:
    """Scores with mean and median 0 and standard deviation 1."""
    if distribution == "normal":
        return rng.standard_normal(shape)
    return rng.standard_t(3, shape) / np.sqrt(3.0)  # var of t(3) is 3


def rates(original: np.ndarray, reproduction: np.ndarray, aggregate: str, margin: float) -> np.ndarray:
    interval = difference_interval(original, reproduction, aggregate, CONFIDENCE)  # type: ignore[arg-type]
    return classify(interval.lo, interval.hi, margin)


def bootstrap_verdicts(
    rng: np.random.Generator, original: np.ndarray, reproduction: np.ndarray, margin: float
) -> np.ndarray:
    """Percentile bootstrap CI of the IQM difference (resampling seeds within each group)."""
    reps, n_a = original.shape
    n_b = reproduction.shape[1]
    rows = np.arange(reps)[:, None, None]
    boot_a = aggregate_of(original[rows, rng.integers(0, n_a, (reps, BOOTSTRAP_REPS, n_a))], "iqm")
    boot_b = aggregate_of(reproduction[rows, rng.integers(0, n_b, (reps, BOOTSTRAP_REPS, n_b))], "iqm")
    tail = 100 * (1 - CONFIDENCE) / 2
    lo, hi = np.percentile(boot_b - boot_a, [tail, 100 - tail], axis=1)
    return classify(lo, hi, margin)


def auto_case(
    rng: np.random.Generator, distribution: str, aggregate: str, n: int, margin: float, reps: int, sd_confidence: float
) -> tuple[float, float, float]:
    """(median seeds picked, share capped, rate consistent when equal among uncapped repetitions)."""
    published = draw(rng, distribution, (reps, n))
    picks = [
        choose_seed_count(
            row,
            margin=margin,
            confidence=CONFIDENCE,
            aggregate=aggregate,  # type: ignore[arg-type]
            sd_confidence=sd_confidence,
        )
        for row in published
    ]
    capped = np.array([p.capped for p in picks])
    hits = []
    for row, pick in zip(published, picks):
        if pick.capped:
            continue
        reproduction = draw(rng, distribution, (1, pick.seeds))
        hits.append(rates(row[None, :], reproduction, aggregate, margin)[0] == CONSISTENT)
    rate = float(np.mean(hits)) if hits else float("nan")
    return float(np.median([p.seeds for p in picks])), float(capped.mean()), rate


def reference_rates(
    rng: np.random.Generator,
    distribution: str,
    n_ref: int,
    n_runs: int,
    shift: float,
    margin: float,
    reps: int,
    se=False,
) -> np.ndarray:
    """Verdicts of ``reps`` simulated runs against a published summary whose truth is ``shift`` below
    theirs; ``se``: the published spread is a standard error taken for a standard deviation."""
    published = draw(rng, distribution, (reps, n_ref))
    runs = draw(rng, distribution, (reps, n_runs)) + shift
    spread = published.std(axis=-1, ddof=1) / (np.sqrt(n_ref) if se else 1.0)
    interval = summary_interval(
        (published.mean(axis=-1), spread, n_ref),
        (runs.mean(axis=-1), runs.std(axis=-1, ddof=1), n_runs),
        CONFIDENCE,
    )
    return classify(interval.lo, interval.hi, margin)


def reference_main(args: argparse.Namespace) -> None:
    """The calibration table of verdicts against a published mean ± sd."""
    started = time.perf_counter()
    rng = np.random.default_rng(args.seed)
    distributions = ("normal",) if args.quick else ("normal", "t3")
    print(f"{args.reps} repetitions per case, {100 * CONFIDENCE:g} % CI (TOST at 5 %), margin in score SDs")
    print(
        "| scores | published seeds | run seeds | margin | div\\|eq | con\\|1.5m | con\\|1m | con\\|eq | se con\\|1m |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    worst = {"div|eq": 0.0, "con|1.5m": 0.0, "con|1m": 0.0, "se con|1m": 0.0}
    for distribution in distributions:
        for n_ref in (3, 5, 10):
            for n_runs in (3, 5, 10):
                for margin in (1.0, 2.0):
                    cases = {
                        "div|eq": (0.0, DIVERGED, False),
                        "con|1.5m": (1.5 * margin, CONSISTENT, False),
                        "con|1m": (margin, CONSISTENT, False),
                        "con|eq": (0.0, CONSISTENT, False),
                        "se con|1m": (margin, CONSISTENT, True),
                    }
                    found = {
                        name: float(
                            np.mean(
                                reference_rates(rng, distribution, n_ref, n_runs, shift, margin, args.reps, se)
                                == verdict
                            )
                        )
                        for name, (shift, verdict, se) in cases.items()
                    }
                    for name in worst:
                        worst[name] = max(worst[name], found[name])
                    print(
                        f"| {distribution} | {n_ref} | {n_runs} | {margin:g} | "
                        + " | ".join(f"{100 * found[name]:.1f} %" for name in cases)
                        + " |"
                    )
    print(
        f"worst over cases: diverged when equal {100 * worst['div|eq']:.1f} % (aim <= 5 %), consistent at 1.5x margin "
        f"{100 * worst['con|1.5m']:.1f} % (aim <= 5 %), consistent at the margin {100 * worst['con|1m']:.1f} % "
        f"(the TOST's size, <= 5 % for a valid interval); with a standard error read as an sd "
        f"{100 * worst['se con|1m']:.1f} %"
    )
    print(f"took {time.perf_counter() - started:.1f} s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--reps", type=int, default=1000, help="repetitions per case")
    parser.add_argument("--seed", type=int, default=12, help="random seed of the simulation")
    parser.add_argument("--quick", action="store_true", help="seeds 3 and 10, normal only (a smoke run)")
    parser.add_argument(
        "--sd-confidence",
        type=float,
        default=SD_PLANNING_CONFIDENCE,
        help="upper-bound level of the published spread that --seeds auto plans with",
    )
    parser.add_argument("--only", help="run only this distribution (normal or t3)")
    parser.add_argument(
        "--reference", action="store_true", help="calibrate verdicts against a published mean ± sd instead"
    )
    args = parser.parse_args()
    if args.reference:
        reference_main(args)
        return
    rng = np.random.default_rng(args.seed)
    distributions = ("normal",) if args.quick else ("normal", "t3")
    if args.only:
        distributions = (args.only,)
    seeds = (3, 10) if args.quick else SEEDS
    started = time.perf_counter()
    print(
        f"{args.reps} repetitions per case, {100 * CONFIDENCE:g} % CI (TOST at 5 %), margin in score SDs, "
        f"--seeds auto cap {SEEDS_AUTO_CAP}"
    )
    header = (
        "| scores | aggregate | seeds | margin | div\\|eq | con\\|1.5m | con\\|1m | con\\|eq | auto seeds | capped "
        "| con\\|auto | boot div\\|eq | boot con\\|1.5m | boot con\\|1m |"
    )
    print(header)
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    worst = {"div|eq": 0.0, "con|1.5m": 0.0, "con|auto": 1.0}
    for distribution in distributions:
        for aggregate in ("mean", "iqm"):
            for n in seeds:
                for margin in MARGINS:
                    equal = rates(
                        draw(rng, distribution, (args.reps, n)),
                        draw(rng, distribution, (args.reps, n)),
                        aggregate,
                        margin,
                    )
                    shifted_a = draw(rng, distribution, (args.reps, n))
                    shifted_b = draw(rng, distribution, (args.reps, n)) + 1.5 * margin
                    shifted = rates(shifted_a, shifted_b, aggregate, margin)
                    div_eq, con_eq = float(np.mean(equal == DIVERGED)), float(np.mean(equal == CONSISTENT))
                    con_far = float(np.mean(shifted == CONSISTENT))
                    boundary_b = draw(rng, distribution, (args.reps, n)) + margin
                    con_edge = float(
                        np.mean(
                            rates(draw(rng, distribution, (args.reps, n)), boundary_b, aggregate, margin) == CONSISTENT
                        )
                    )
                    picked, capped, con_auto = auto_case(
                        rng, distribution, aggregate, n, margin, args.reps, args.sd_confidence
                    )
                    boot = ["", "", ""]
                    if aggregate == "iqm":
                        boot_equal = bootstrap_verdicts(
                            rng,
                            draw(rng, distribution, (args.reps, n)),
                            draw(rng, distribution, (args.reps, n)),
                            margin,
                        )
                        boot_far = bootstrap_verdicts(rng, shifted_a, shifted_b, margin)
                        boot_edge = bootstrap_verdicts(rng, draw(rng, distribution, (args.reps, n)), boundary_b, margin)
                        boot = [
                            f"{100 * np.mean(x == verdict):.1f} %"
                            for x, verdict in ((boot_equal, DIVERGED), (boot_far, CONSISTENT), (boot_edge, CONSISTENT))
                        ]
                    worst["div|eq"] = max(worst["div|eq"], div_eq)
                    worst["con|1.5m"] = max(worst["con|1.5m"], con_far)
                    if capped < 0.5:  # cases the chooser itself finds within reach
                        worst["con|auto"] = min(worst["con|auto"], con_auto)
                    auto = "-" if capped == 1.0 else f"{100 * con_auto:.1f} %"
                    print(
                        f"| {distribution} | {aggregate} | {n} | {margin:g} | {100 * div_eq:.1f} % | {100 * con_far:.1f} % "
                        f"| {100 * con_edge:.1f} % | {100 * con_eq:.1f} % | {picked:g} | {100 * capped:.0f} % | {auto} | {' | '.join(boot)} |"
                    )
    print(
        f"worst over cases: diverged when equal {100 * worst['div|eq']:.1f} % (aim <= 5 %), consistent at 1.5x margin "
        f"{100 * worst['con|1.5m']:.1f} % (aim <= 5 %), consistent when equal with the auto seed count "
        f"{100 * worst['con|auto']:.1f} % (repetitions where the cap did not bind, in cases where it binds in "
        f"under half of them; aim >= 80 %)"
    )
    print(f"took {time.perf_counter() - started:.1f} s")


if __name__ == "__main__":
    main()
