"""The verdict between two groups of runs (original seeds, reproduced seeds), for ``reproduce`` and
``compare --against``.

``identical`` when every reproduced run repeats the original run of its seed bit for bit (and
bit-identity is not ruled out by the hardware), whether or not the manifest expected it; otherwise, with at least two seeds a side, the
equivalence verdict of harness.analysis.equivalence on each seed's final value (or mean of the
last N) of the metric, the per-checkpoint curve comparison, and the environment comparison. A
single run a side keeps the single-run verdict of harness.reproduce.compare (tolerances), unless
bit-identity is ruled out, when it is ``inconclusive``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq

from harness.analysis.equivalence import (
    CONSISTENT,
    DEFAULT_CONFIDENCE,
    DIVERGED,
    INCONCLUSIVE,
    MIN_VERDICT_SEEDS,
    CurveComparison,
    EquivalenceResult,
    Series,
    choose_seed_count,
    compare_curves,
    equivalence_test,
)
from harness.errors import HarnessError
from harness.reproduce.environment_diff import (
    EnvironmentComparison,
    bit_identity_ruled_out,
    compare_environments,
    read_run,
)
from harness.store.record import DEFAULT_METRIC

IDENTICAL = "identical"
EXIT_STATUS = {IDENTICAL: 0, CONSISTENT: 0, DIVERGED: 1, INCONCLUSIVE: 3}  # 2 is bad input


@dataclass(frozen=True)
class EquivalenceSpec:
    """The parts of a manifest's ``expect`` that decide a verdict across seeds."""

    deterministic: bool = True
    metric: str | None = None
    statistic: str = "last_n"  # final | last_n
    last_n: int = 10
    aggregate: str = "mean"  # mean | iqm
    margin: float | None = None
    margin_relative: float | None = None
    confidence: float = DEFAULT_CONFIDENCE
    rtol: float = 0.0
    atol: float = 0.0
    ignore: tuple[str, ...] = ()

    @classmethod
    def of(cls, expect: Any, **overrides: Any) -> EquivalenceSpec:
        """From a pydantic ``Expect``, its dict (record.json's ``expect``), None or a spec; then
        ``overrides`` whose value is not None (command-line options)."""
        if isinstance(expect, cls):
            spec = expect
        else:
            data = {} if expect is None else (expect if isinstance(expect, Mapping) else expect.model_dump())
            known = {name: data[name] for name in cls.__dataclass_fields__ if data.get(name) is not None}
            if "ignore" in known:
                known["ignore"] = tuple(known["ignore"])
            spec = cls(**known)
        chosen = {k: v for k, v in overrides.items() if v is not None}
        if "margin" in chosen:
            chosen.setdefault("margin_relative", None)
        elif "margin_relative" in chosen:
            chosen["margin"] = None
        return replace(spec, **chosen)


@dataclass
class GroupVerdict:
    """What ``reproduce`` and ``compare --against`` print and store."""

    verdict: str  # identical | consistent | diverged | inconclusive
    metric: str
    statistic: str
    original_runs: list[str]
    reproduction_runs: list[str]
    original_scores: list[float]
    reproduction_scores: list[float]
    seeds: str  # "same", "new" or "overlapping" seeds on the reproduction side
    equivalence: EquivalenceResult | None
    curves: CurveComparison | None
    environment: EnvironmentComparison
    bit_identity_ruled_out: list[str]
    notes: list[str] = field(default_factory=list)

    @property
    def exit_status(self) -> int:
        """0 identical or consistent, 1 diverged, 3 inconclusive (2 stays bad input)."""
        return EXIT_STATUS[self.verdict]

    def to_dict(self, curves: bool = False) -> dict[str, Any]:
        """JSON-ready form; the per-checkpoint arrays only with ``curves``."""
        curve_part: dict[str, Any] | None = None
        if self.curves is not None:
            curve_part = (
                self.curves.to_dict()
                if curves
                else {
                    "checkpoints": len(self.curves.steps),
                    "first_not_shown": self.curves.first_not_shown,
                    "first_diverged": self.curves.first_diverged,
                    "margin": self.curves.margin,
                }
            )
        return json_safe(
            {
                "verdict": self.verdict,
                "metric": self.metric,
                "statistic": self.statistic,
                "original_runs": self.original_runs,
                "reproduction_runs": self.reproduction_runs,
                "original_scores": self.original_scores,
                "reproduction_scores": self.reproduction_scores,
                "seeds": self.seeds,
                "equivalence": None if self.equivalence is None else self.equivalence.to_dict(),
                "curves": curve_part,
                "environment": self.environment.to_dict(),
                "bit_identity_ruled_out": self.bit_identity_ruled_out,
                "notes": self.notes,
            }
        )

    def lines(self) -> list[str]:
        """The verdict for a terminal: verdict, CI and margin, seeds needed, first diverging checkpoint,
        environment."""
        out = [f"verdict: {self.verdict}"]
        out.append(
            f"metric: {self.metric} ({self.statistic}), {len(self.original_runs)} original vs "
            f"{len(self.reproduction_runs)} reproduction runs ({self.seeds} seeds)"
        )
        eq = self.equivalence
        if eq is not None:
            out.append(
                f"{eq.aggregate}: original {eq.original:.6g}, reproduction {eq.reproduction:.6g}, "
                f"difference {eq.estimate:+.4g}"
            )
            out += interval_lines(eq)
        if self.curves is not None:
            c = self.curves
            if c.first_diverged is not None:
                out.append(
                    f"curves: first checkpoint outside the margin: step {c.first_diverged:g} "
                    f"(of {len(c.steps)} compared)"
                )
            elif c.first_not_shown is not None:
                out.append(
                    f"curves: no checkpoint outside the margin; the first where equivalence is not shown: "
                    f"step {c.first_not_shown:g} (of {len(c.steps)} compared)"
                )
            else:
                out.append(f"curves: inside the margin at all {len(c.steps)} checkpoints")
        for reason in self.bit_identity_ruled_out:
            out.append(f"bit-identity ruled out: {reason}")
        out += [f"environment: {line}" for line in self.environment.lines()]
        out += [f"note: {note}" for note in self.notes]
        return out


def interval_lines(eq: EquivalenceResult) -> list[str]:
    """The interval, margin, power and seeds needed, in plain words when too few seeds allow none."""
    margin = f"margin ±{eq.margin:.4g}" + (
        f" ({100 * eq.margin_relative:g} % of the original)" if eq.margin_relative else ""
    )
    if not eq.has_interval:
        out = [
            f"no interval: {eq.n_original} vs {eq.n_reproduction} "
            f"seed{'s' if max(eq.n_original, eq.n_reproduction) != 1 else ''}, and a spread needs at least two "
            f"seeds a side ({margin}); a verdict needs {MIN_VERDICT_SEEDS} seeds a side"
        ]
    else:
        out = [
            f"{100 * eq.confidence:g} % CI of the difference: [{eq.ci[0]:+.4g}, {eq.ci[1]:+.4g}] "
            f"({eq.method}); {margin}"
        ]
    if eq.seeds_needed is not None:
        needed = f"more than {eq.seeds_needed}" if eq.seeds_needed_capped else str(eq.seeds_needed)
        out.append(f"power to show equivalence now: {100 * eq.power:.0f} %; seeds per side for 80 %: {needed}")
    elif not eq.has_interval:
        out.append("seeds per side for 80 %: unknown until a side has two seeds to show the spread")
    return out


def json_safe(value: Any) -> Any:
    """Non-finite floats as None and numpy scalars as Python ones: strict JSON."""
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def metric_series(run_dir: Path, metric: str) -> Series:
    """One run's (steps, values) of ``metric`` from its metrics.parquet, in step order."""
    path = Path(run_dir) / "metrics.parquet"
    if path.is_symlink() or not path.is_file():
        raise HarnessError(f"{run_dir}: no metrics.parquet; was the run completed?")
    table = pq.read_table(path, columns=["name", "step", "value"], filters=[("name", "=", metric)])
    steps = table.column("step").to_numpy().astype(np.float64)
    values = table.column("value").to_numpy(zero_copy_only=False).astype(np.float64)
    order = np.argsort(steps, kind="stable")
    return steps[order], values[order]


def run_score(series: Series, statistic: str, last_n: int) -> float:
    """A run's score: its final value, or the mean of its last ``last_n`` values (NaN dropped)."""
    values = series[1][~np.isnan(series[1])]
    if not len(values):
        return math.nan
    return float(values[-1] if statistic == "final" else values[-last_n:].mean())


def group_scores(run_dirs: Sequence[Path], expect: Any = None) -> tuple[str, list[float]]:
    """(metric, each run's score) as a verdict computes them, e.g. for ``plan_seeds(..., "auto")``
    from the published runs; ``expect`` defaults to the first run's record."""
    dirs = [Path(p) for p in run_dirs]
    if not dirs:
        raise HarnessError("no runs to score")
    first = read_run(dirs[0])[0]
    spec = EquivalenceSpec.of(expect if expect is not None else first.get("expect"))
    metric = spec.metric or first.get("primary_metric") or DEFAULT_METRIC
    return metric, [run_score(metric_series(d, metric), spec.statistic, spec.last_n) for d in dirs]


def _seed_relation(seeds_a: list[Any], seeds_b: list[Any]) -> str:
    a, b = set(seeds_a), set(seeds_b)
    if a == b:
        return "same"
    return "new" if not a & b else "overlapping"


def _identity(
    original: list[Path],
    reproduction: list[Path],
    records_a: list[dict[str, Any]],
    records_b: list[dict[str, Any]],
    spec: EquivalenceSpec,
) -> tuple[str | None, list[str]]:
    """The single-run verdict when every reproduced run pairs with an original of its seed:
    identical, consistent (tolerances) or diverged; None when the runs do not pair up."""
    from harness.reproduce.compare import ExpectSpec, compare_runs

    by_seed = {r.get("seed"): d for r, d in zip(records_a, original)}
    if len(by_seed) != len(original) or any(r.get("seed") not in by_seed for r in records_b):
        return None, []
    tolerance = ExpectSpec(True, spec.rtol, spec.atol, spec.ignore)
    verdicts = []
    first: str | None = None
    for record, folder in zip(records_b, reproduction):
        single = compare_runs(by_seed[record.get("seed")], folder, tolerance)
        verdicts.append(single.verdict)
        if single.verdict != IDENTICAL and first is None and single.first_difference is not None:
            d = single.first_difference
            first = f"seed {record.get('seed')}: {d.metric} at step {d.step}"
    differing = sum(v != IDENTICAL for v in verdicts)
    notes = (
        [f"{differing} of {len(verdicts)} runs are not bit-identical to the original of their seed (first: {first})"]
        if differing
        else []
    )
    for verdict in (DIVERGED, CONSISTENT):
        if verdict in verdicts:
            return verdict, notes
    return IDENTICAL, notes


def group_verdict(
    original_runs: Sequence[Path],
    reproduced_runs: Sequence[Path],
    expect: Any = None,
    points: int = 100,
    smooth: int = 1,
) -> GroupVerdict:
    """The verdict between an original group of run folders and a reproduced one.

    ``expect`` is an ``Expect``, its dict or an ``EquivalenceSpec`` (default: the first original
    record's ``expect``); the metric defaults to the original's primary metric.
    """
    original, reproduction = [Path(p) for p in original_runs], [Path(p) for p in reproduced_runs]
    if not original or not reproduction:
        raise HarnessError("a verdict needs at least one run on each side")
    read_a = [read_run(p) for p in original]
    read_b = [read_run(p) for p in reproduction]
    records_a, records_b = [r for r, _ in read_a], [r for r, _ in read_b]
    spec = EquivalenceSpec.of(expect if expect is not None else records_a[0].get("expect"))
    metric = spec.metric or records_a[0].get("primary_metric") or DEFAULT_METRIC
    statistic = "final value" if spec.statistic == "final" else f"mean of the last {spec.last_n}"
    environment = compare_environments(records_a[0], records_b[0], read_a[0][1], read_b[0][1])
    ruled_out = sorted({reason for a in records_a[:1] for b in records_b for reason in bit_identity_ruled_out(a, b)})
    notes: list[str] = []
    unfinished = [
        f"{r.get('run_id', p.name)} ({r.get('status')})"
        for r, p in zip(records_b, reproduction)
        if r.get("status") not in (None, "completed")
    ]
    ids_a = [str(r.get("run_id", p.name)) for r, p in zip(records_a, original)]
    ids_b = [str(r.get("run_id", p.name)) for r, p in zip(records_b, reproduction)]
    seeds = _seed_relation([r.get("seed") for r in records_a], [r.get("seed") for r in records_b])

    series_a = [metric_series(p, metric) for p in original]
    series_b = [metric_series(p, metric) for p in reproduction]
    lacking = [i for i, s in zip(ids_a + ids_b, series_a + series_b) if not len(s[0])]
    if lacking and not unfinished:
        raise HarnessError(f"no values of metric {metric!r} in {', '.join(lacking[:5])}")
    scores_a = [run_score(s, spec.statistic, spec.last_n) for s in series_a]
    scores_b = [run_score(s, spec.statistic, spec.last_n) for s in series_b]

    def result(
        verdict: str, equivalence: EquivalenceResult | None = None, curves: CurveComparison | None = None
    ) -> GroupVerdict:
        return GroupVerdict(
            verdict,
            metric,
            statistic,
            ids_a,
            ids_b,
            scores_a,
            scores_b,
            seeds,
            equivalence,
            curves,
            environment,
            ruled_out,
            notes,
        )

    if unfinished:
        notes.append(f"reproduction runs did not complete: {', '.join(unfinished)}")
        return result(DIVERGED)
    identity: str | None = None
    if not ruled_out:
        # Runs that repeat bit for bit are identical even when the manifest did not promise it.
        identity, differences = _identity(original, reproduction, records_a, records_b, spec)
        if identity == IDENTICAL:
            return result(identity)
        if spec.deterministic:
            notes += differences
            if identity is not None and (len(original) < 2 or len(reproduction) < 2):
                return result(identity)
    shared_seeds = sorted({r.get("seed") for r in records_a} & {r.get("seed") for r in records_b}, key=str)
    if shared_seeds:
        notes.append(
            f"seed{'s' if len(shared_seeds) > 1 else ''} {', '.join(map(str, shared_seeds))} on both sides: a repeated "
            "seed is not a new seed (it checks repeatability, not the spread across seeds); for new evidence "
            "run seeds neither side has"
        )
    equivalence = equivalence_test(
        scores_a,
        scores_b,
        spec.aggregate,  # type: ignore[arg-type]
        spec.margin,
        spec.margin_relative,
        spec.confidence,
    )
    notes += equivalence.notes
    curves = None
    if len(original) >= 2 and len(reproduction) >= 2:
        try:
            curves = compare_curves(
                series_a,
                series_b,
                equivalence.margin,
                spec.aggregate,  # type: ignore[arg-type]
                spec.confidence,
                points,
                smooth,
            )
        except HarnessError as exc:
            notes.append(f"curves not compared: {exc}")
    if identity is not None and spec.deterministic:
        notes.insert(0, f"expected bit-identity; the runs are {identity} run by run, so the verdict is statistical")
    return result(equivalence.verdict, equivalence, curves)


GROUP_FIELDS = ("name", "manifest_sha256", "lockfile_sha256", "params", "smoke")


def published_group(records: Sequence[Mapping[str, Any]], target: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    """The completed (or imported) original runs of ``target``'s configuration (one per seed, ``target``'s first),
    out of ``records`` (e.g. every run pulled from a repo): same manifest, lockfile, params and
    smoke flag, and the same image recipe (the workload's code lives there, not in the manifest);
    reproductions (``reproduces`` set) left out."""

    def key(record: Mapping[str, Any]) -> tuple[Any, ...]:
        recipe = (record.get("image") or {}).get("content_hash")
        return (*(repr(record.get(name)) for name in GROUP_FIELDS), repr(recipe))

    wanted = key(target)
    by_seed: dict[Any, Mapping[str, Any]] = {target.get("seed"): target}
    for record in records:
        if (
            key(record) == wanted
            and record.get("status") in ("completed", "imported")
            and not record.get("reproduces")
            and record.get("seed") not in by_seed
        ):
            by_seed[record.get("seed")] = record
    return list(by_seed.values())


@dataclass(frozen=True)
class SeedPlan:
    """The seeds a reproduction runs, and why."""

    seeds: list[int]
    message: str


def plan_seeds(
    published: Sequence[int],
    count: int | str | None = None,
    new_seeds: bool = False,
    published_scores: Sequence[float] | None = None,
    expect: Any = None,
) -> SeedPlan:
    """Seeds for ``reproduce --seeds N|auto [--new-seeds]``.

    Default: the published seeds. ``N``: the first N published seeds, then new ones. ``auto``: the
    count ``choose_seed_count`` picks from ``published_scores``. ``new_seeds``: none of the
    published ones (the smallest integers above them), to check that a result is not a property of
    the seeds chosen.
    """
    published = [int(s) for s in published]
    message = ""
    if count is None:
        wanted = len(published)
    elif count == "auto":
        if published_scores is None:
            raise HarnessError("--seeds auto needs the published runs' scores")
        spec = EquivalenceSpec.of(expect)
        choice = choose_seed_count(published_scores, spec.margin, spec.margin_relative, spec.confidence, spec.aggregate)  # type: ignore[arg-type]
        wanted, message = choice.seeds, choice.message
    else:
        wanted = int(count)
        if wanted < 1:
            raise HarnessError(f"--seeds {count}: give a positive number of seeds or auto")
    fresh = (max(published, default=-1) + 1 + i for i in range(wanted))
    seeds = list(fresh)[:wanted] if new_seeds else (published[:wanted] + list(fresh)[: max(0, wanted - len(published))])
    return SeedPlan(
        seeds,
        message
        or f"{len(seeds)} {'new ' if new_seeds else ''}seed{'s' if len(seeds) != 1 else ''}: "
        f"{', '.join(map(str, seeds[:12]))}"
        + (" ..." if len(seeds) > 12 else ""),
    )
