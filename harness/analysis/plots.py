"""Figures (matplotlib, Agg backend): learning curves with one panel per environment and the
legend outside the data, and performance profiles. PNG, SVG or PDF, chosen by the file suffix.
"""

from __future__ import annotations

import math
import textwrap
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from harness.analysis.curves import Curve
from harness.errors import HarnessError
from harness.util.fsutil import atomic_path

if TYPE_CHECKING:
    from harness.analysis.equivalence import CurveComparison

FORMATS = {".png", ".svg", ".pdf"}


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def check_output(path: Path) -> None:
    """Refuse a figure path whose format matplotlib is not asked to write here."""
    if path.suffix.lower() not in FORMATS:
        raise HarnessError(f"figure {path}: use a .png, .svg or .pdf file name")
    if not path.parent.exists():
        raise HarnessError(f"figure {path}: folder {path.parent} does not exist")


def save_figure(fig: Any, path: Path) -> None:
    """Lay out, save atomically (a reader never sees half a figure) and close the figure."""
    try:
        fig.tight_layout()
        with atomic_path(path) as tmp:
            fig.savefig(tmp, dpi=150, bbox_inches="tight")
    finally:
        _pyplot().close(fig)


def curves_title(metric: str, panels: Mapping[str, Mapping[str, Curve]], smooth: int = 1) -> str:
    """What the figure shows, in words: the statistic, n, and the smoothing."""
    counts = sorted({c.runs for curves in panels.values() for c in curves.values()})
    smoothing = f"rolling mean over {smooth} points" if smooth > 1 else "no smoothing"
    if counts == [1]:
        return f"{metric}: one seed per curve, no confidence interval ({smoothing})"
    n = f"n = {counts[0]} seeds" if len(counts) == 1 else "n seeds per curve in the legend"
    single = "; curves of one seed have no interval" if counts[0] == 1 else ""
    return f"{metric}: mean and 95 % bootstrap CI over seeds ({n}, {smoothing}{single})"


def plot_curves(
    panels: Mapping[str, Mapping[str, Curve]],
    path: Path,
    metric: str,
    x_label: str = "environment steps",
    title: str | None = None,
    smooth: int = 1,
) -> Path:
    """Mean curves with shaded 95 % bootstrap CIs, one panel per environment, legend outside on the
    right; a curve of one seed is drawn dashed with no interval, and the title says n and the smoothing."""
    check_output(path)
    plt = _pyplot()
    count = len(panels)
    columns = min(3, count)
    rows = math.ceil(count / columns)
    size = (4.2 * columns, 3.2 * rows) if count > 1 else (6.4, 4.0)
    fig, axes = plt.subplots(rows, columns, figsize=size, squeeze=False)
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    groups = sorted({g for curves in panels.values() for g in curves})
    handles = {}
    for ax, (env, curves) in zip(axes.flat, sorted(panels.items())):
        for group in groups:
            if group not in curves:
                continue
            curve = curves[group]
            colour = colours[groups.index(group) % len(colours)]
            (line,) = ax.plot(
                curve.x, curve.mean, color=colour, linewidth=1.6, linestyle="-" if curve.runs > 1 else "--"
            )
            if curve.runs > 1 and not np.isnan(curve.lo).all():
                ax.fill_between(curve.x, curve.lo, curve.hi, color=colour, alpha=0.2, linewidth=0)
            handles[group] = line
        if env != "-" or count > 1:
            ax.set_title(env)
        ax.set_xlabel(x_label)
        ax.set_ylabel(metric)
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[count:]:
        ax.set_visible(False)

    def label(group: str) -> str:
        n = max(c[group].runs for c in panels.values() if group in c)
        return f"{group} (n={n})" if n > 1 else f"{group} (one seed: no CI)"

    labels = [label(g) for g in groups]
    fig.legend([handles[g] for g in groups], labels, loc="center left", bbox_to_anchor=(1.0, 0.5), frameon=False)
    # wrapped to the figure's width: a title that says n and the smoothing must not widen the figure
    fig.suptitle(textwrap.fill(title or curves_title(metric, panels, smooth), width=int(14 * size[0])), fontsize=10)
    save_figure(fig, path)
    return path


def plot_profiles(
    taus: np.ndarray,
    profiles: Mapping[str, np.ndarray],
    cis: Mapping[str, np.ndarray],
    path: Path,
    x_label: str = "normalised score (τ)",
) -> Path:
    """Performance profiles (fraction of runs with score > τ) with their bootstrap CIs."""
    check_output(path)
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    for group, profile in profiles.items():
        (line,) = ax.plot(taus, profile, label=group, linewidth=1.6)
        ax.fill_between(taus, cis[group][0], cis[group][1], color=line.get_color(), alpha=0.2, linewidth=0)
    ax.set_xlabel(x_label)
    ax.set_ylabel("fraction of runs with score > τ")
    ax.set_title("Performance profiles, 95 % bootstrap CIs")
    ax.grid(alpha=0.3)
    ax.legend(loc="center left", bbox_to_anchor=(1.0, 0.5), frameon=False)
    save_figure(fig, path)
    return path


def _runs_label(label: str, ids: Sequence[str], n: int) -> str:
    shown = ", ".join(ids) if len(ids) <= 2 else f"{ids[0]}, …, {ids[-1]}"
    return f"{label} (n={n}{': ' + shown if ids else ''})"


def plot_equivalence(
    curves: CurveComparison,
    path: Path,
    metric: str,
    verdict: str,
    labels: tuple[str, str] = ("original", "reproduction"),
    run_ids: tuple[Sequence[str], Sequence[str]] = ((), ()),
    x_label: str = "environment steps",
) -> Path:
    """Both groups' curves (aggregate across seeds, CI band) with the margin band around the
    original, the first checkpoint outside the margin marked, and the verdict in the title; the
    legend (below the axes) names each group's runs and count."""
    check_output(path)
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7.5, 5.0))
    steps = curves.steps
    ax.fill_between(
        steps,
        curves.original_mean - curves.margin,
        curves.original_mean + curves.margin,
        color="0.85",
        linewidth=0,
        label=f"margin ±{curves.margin:.3g} around the original",
    )
    for (mean, lo, hi), label, ids, n, colour in (
        (
            (curves.original_mean, curves.original_lo, curves.original_hi),
            labels[0],
            run_ids[0],
            curves.n_original,
            "C0",
        ),
        (
            (curves.reproduction_mean, curves.reproduction_lo, curves.reproduction_hi),
            labels[1],
            run_ids[1],
            curves.n_reproduction,
            "C1",
        ),
    ):
        ax.plot(steps, mean, color=colour, linewidth=1.6, label=_runs_label(label, list(ids), n))
        ax.fill_between(steps, lo, hi, color=colour, alpha=0.2, linewidth=0)
    if curves.first_diverged is not None:
        ax.axvline(
            curves.first_diverged,
            color="C3",
            linestyle="--",
            linewidth=1.0,
            label=f"first checkpoint outside the margin ({curves.first_diverged:g})",
        )
    ax.set_xlabel(x_label)
    ax.set_ylabel(metric)
    ax.set_title(f"{verdict}: {metric}, {100 * curves.confidence:g} % CIs over seeds")
    ax.grid(alpha=0.3)
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.13), frameon=False, fontsize=8)
    save_figure(fig, path)
    return path
