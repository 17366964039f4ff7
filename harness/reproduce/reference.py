"""The verdict of a group of runs against a published result: a table's mean ± spread over seeds
(a manifest's ``expect.reference``), for ``compare --against-reference`` and a multi-seed ``run``.

Papers and documentation publish tables, not runs, so the reference side is only (mean, spread,
seeds): Welch's interval from the summary statistics (harness.analysis.equivalence), with the
margin, the classification and the three-seed rule of a reproduction's verdict. What a mean ±
spread cannot tell is asked of the manifest instead of guessed: whether the spread is a standard
deviation or a standard error, over how many seeds, and of which per-seed statistic. Neither can
it tell the shape of the published scores (a bimodal set of seeds looks like a wide normal one)
nor whether they were run as the manifest runs them (budget, evaluation protocol): a verdict is
only as good as the reference's description.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from harness.analysis.equivalence import EquivalenceResult, summary_equivalence_test
from harness.errors import HarnessError
from harness.reproduce.environment_diff import read_run
from harness.reproduce.group_verdict import (
    DEFAULT_METRIC,
    EXIT_STATUS,
    EquivalenceSpec,
    interval_lines,
    json_safe,
    metric_series,
    run_score,
)


@dataclass
class ReferenceVerdict:
    """Runs against a published reference: what ``compare --against-reference`` prints and returns."""

    verdict: str  # consistent | diverged | inconclusive
    metric: str
    statistic: str
    reference: dict[str, Any]
    runs: list[str]
    scores: list[float]
    equivalence: EquivalenceResult
    notes: list[str] = field(default_factory=list)

    @property
    def exit_status(self) -> int:
        """0 consistent, 1 diverged, 3 inconclusive (as ``reproduce``)."""
        return EXIT_STATUS[self.verdict]

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return json_safe(
            {
                "verdict": self.verdict,
                "metric": self.metric,
                "statistic": self.statistic,
                "reference": self.reference,
                "runs": self.runs,
                "scores": self.scores,
                "equivalence": self.equivalence.to_dict(),
                "notes": self.notes,
            }
        )

    def lines(self) -> list[str]:
        """The verdict for a terminal."""
        eq = self.equivalence
        ref = self.reference
        return [
            f"verdict against the reference: {self.verdict}",
            f"reference: {ref['mean']:.6g} ± {ref['sd']:.4g} ({'standard error' if ref['spread'] == 'se' else 'sd'}, "
            f"{ref['seeds']} seeds) from {ref['source']}",
            f"runs: {eq.reproduction:.6g} ± {_sd(self.scores):.4g} (sd, {len(self.scores)} seed{'s' if len(self.scores) != 1 else ''}); "
            f"metric {self.metric} ({self.statistic}); difference {eq.estimate:+.4g}",
            *interval_lines(eq),
            *(f"note: {note}" for note in self.notes),
        ]

    def summary(self) -> str:
        """One line, for the end of a run."""
        return f"against the reference ({self.reference['source']}): " + self.equivalence.summary()


def _sd(scores: Sequence[float]) -> float:
    return float(np.std(scores, ddof=1)) if len(scores) > 1 else math.nan


def reference_verdict(run_dirs: Sequence[Path], reference: Mapping[str, Any], expect: Any = None) -> ReferenceVerdict:
    """The verdict of the runs in ``run_dirs`` against ``reference`` (an ``expect.reference``
    mapping); ``expect`` gives the margin, confidence and default metric and statistic (default:
    the first run's record)."""
    dirs = [Path(p) for p in run_dirs]
    if not dirs:
        raise HarnessError("a verdict against the reference needs at least one run")
    records = [read_run(d)[0] for d in dirs]
    spec = EquivalenceSpec.of(expect if expect is not None else records[0].get("expect"))
    metric = reference.get("metric") or spec.metric or records[0].get("primary_metric") or DEFAULT_METRIC
    statistic = reference.get("statistic") or spec.statistic
    shown = "final value" if statistic == "final" else f"mean of the last {spec.last_n}"
    scores = [run_score(metric_series(d, metric), statistic, spec.last_n) for d in dirs]
    ids = [str(r.get("run_id", d.name)) for r, d in zip(records, dirs)]
    missing = [i for i, score in zip(ids, scores) if math.isnan(score)]
    if missing:
        raise HarnessError(f"no values of metric {metric!r} in {', '.join(missing[:5])}")
    spread = str(reference.get("spread") or "sd")
    seeds = int(reference["seeds"])
    sd_reference = float(reference["sd"]) * (math.sqrt(seeds) if spread == "se" else 1.0)
    notes: list[str] = []
    if spec.aggregate != "mean":
        notes.append(f"expect.aggregate is {spec.aggregate}, but a published table gives a mean: the mean is compared")
    seed_values = [r.get("seed") for r in records]
    if len(set(map(str, seed_values))) != len(seed_values):
        notes.append("some runs share a seed: a repeated seed is not a new seed, so the spread is understated")
    equivalence = summary_equivalence_test(
        (float(reference["mean"]), sd_reference, seeds),
        (float(np.mean(scores)), _sd(scores) if len(scores) > 1 else 0.0, len(scores)),
        spec.margin,
        spec.margin_relative,
        spec.confidence,
    )
    return ReferenceVerdict(
        equivalence.verdict,
        metric,
        shown,
        {**dict(reference), "spread": spread},
        ids,
        scores,
        equivalence,
        notes + equivalence.notes,
    )
