"""``harness compare SELECTION --against SELECTION``: the reproduction verdict between two
selections of the store (two library versions, two machines, a published group and its rerun)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from harness.errors import HarnessError

if TYPE_CHECKING:
    from harness.reproduce.group_verdict import GroupVerdict


@dataclass
class GroupComparison:
    """The verdict of one selection against another, what ``--json`` prints, and the figure written."""

    verdict: GroupVerdict
    payload: dict[str, Any]
    figure: Path | None = None
    notes: list[str] = field(default_factory=list)

    def lines(self) -> list[str]:
        """The verdict as text, with the figure's path when one was written."""
        return self.verdict.lines() + ([f"figure: {self.figure}"] if self.figure is not None else [])


def split_terms(values: tuple[str, ...]) -> list[str]:
    """Selection terms from repeated ``--against`` values, each possibly several words."""
    return [term for value in values for term in value.split()]


def compare_groups(
    selection: tuple[str, ...],
    against: tuple[str, ...],
    *,
    metric: str | None,
    last_n: int | None,
    statistic: str | None,
    aggregate: str | None,
    margin: float | None,
    margin_relative: float | None,
    confidence: float | None,
    points: int,
    smooth: int,
    figure: Path | None,
) -> GroupComparison:
    """The verdict of ``against`` (the reproduction side) against ``selection`` (the original side),
    with the curves and margin figure written to ``figure`` when both sides have curves."""
    from harness.analysis.selection import select_runs
    from harness.reproduce.group_verdict import EquivalenceSpec, group_verdict
    from harness.store.local import LocalStore

    if figure is not None:
        from harness.analysis.plots import check_output

        check_output(figure)
    store = LocalStore()
    original = select_runs(store, list(selection))
    reproduction = select_runs(store, split_terms(against))
    ids_a = original.column("run_id").to_pylist()
    ids_b = reproduction.column("run_id").to_pylist()
    shared = sorted(set(ids_a) & set(ids_b))
    if shared:
        raise HarnessError(
            f"the two selections share run{'s' if len(shared) > 1 else ''} {', '.join(shared[:5])}: "
            "narrow them so each run is on one side"
        )
    record = store.load(ids_a[0])
    spec = EquivalenceSpec.of(
        record.get("expect"),
        metric=metric,
        last_n=last_n,
        statistic=statistic,
        aggregate=aggregate,
        margin=margin,
        margin_relative=margin_relative,
        confidence=confidence,
    )
    result = group_verdict(
        [store.run_dir(r) for r in ids_a], [store.run_dir(r) for r in ids_b], spec, points=points, smooth=smooth
    )
    comparison = GroupComparison(
        result,
        {"original_selection": list(selection), "reproduction_selection": split_terms(against), **result.to_dict()},
    )
    if figure is not None:
        if result.curves is None:
            comparison.notes.append("no figure: curves need at least two runs on each side")
        else:
            from harness.analysis.plots import plot_equivalence

            plot_equivalence(
                result.curves,
                figure,
                result.metric,
                result.verdict,
                labels=(_label("original", selection), _label("against", tuple(split_terms(against)))),
                run_ids=(ids_a, ids_b),
            )
            comparison.figure = figure
            comparison.payload["figure"] = str(figure)
    return comparison


def _label(side: str, terms: tuple[str, ...]) -> str:
    shown = " ".join(terms)
    return f"{side} {shown[:60]}{'…' if len(shown) > 60 else ''}"
