"""Figures (matplotlib, Agg backend): learning curves with one panel per environment and the
legend outside the data, and performance profiles. PNG, SVG or PDF, chosen by the file suffix.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from harness.analysis.curves import Curve
from harness.errors import HarnessError
from harness.fsutil import atomic_path

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


def plot_curves(
    panels: Mapping[str, Mapping[str, Curve]],
    path: Path,
    metric: str,
    x_label: str = "environment steps",
    title: str | None = None,
) -> Path:
    """Mean curves with shaded 95 % CIs, one panel per environment, legend outside on the right."""
    check_output(path)
    plt = _pyplot()
    count = len(panels)
    columns = min(3, count)
    rows = math.ceil(count / columns)
    fig, axes = plt.subplots(rows, columns, figsize=(4.2 * columns, 3.2 * rows), squeeze=False)
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    groups = sorted({g for curves in panels.values() for g in curves})
    handles = {}
    for ax, (env, curves) in zip(axes.flat, sorted(panels.items())):
        for group in groups:
            if group not in curves:
                continue
            curve = curves[group]
            colour = colours[groups.index(group) % len(colours)]
            (line,) = ax.plot(curve.x, curve.mean, color=colour, linewidth=1.6)
            if not np.isnan(curve.lo).all():
                ax.fill_between(curve.x, curve.lo, curve.hi, color=colour, alpha=0.2, linewidth=0)
            handles[group] = line
        ax.set_title(env)
        ax.set_xlabel(x_label)
        ax.set_ylabel(metric)
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[count:]:
        ax.set_visible(False)
    labels = [f"{g} (n={max(c[g].runs for c in panels.values() if g in c)})" for g in groups]
    fig.legend([handles[g] for g in groups], labels, loc="center left", bbox_to_anchor=(1.0, 0.5), frameon=False)
    fig.suptitle(title or f"{metric}: mean and 95 % CI over seeds")
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
    ax.fill_between(steps, curves.original_mean - curves.margin, curves.original_mean + curves.margin,
                    color="0.85", linewidth=0, label=f"margin ±{curves.margin:.3g} around the original")
    for (mean, lo, hi), label, ids, n, colour in (
        ((curves.original_mean, curves.original_lo, curves.original_hi), labels[0], run_ids[0], curves.n_original, "C0"),
        ((curves.reproduction_mean, curves.reproduction_lo, curves.reproduction_hi), labels[1], run_ids[1],
         curves.n_reproduction, "C1"),
    ):
        ax.plot(steps, mean, color=colour, linewidth=1.6, label=_runs_label(label, list(ids), n))
        ax.fill_between(steps, lo, hi, color=colour, alpha=0.2, linewidth=0)
    if curves.first_diverged is not None:
        ax.axvline(curves.first_diverged, color="C3", linestyle="--", linewidth=1.0,
                   label=f"first checkpoint outside the margin ({curves.first_diverged:g})")
    ax.set_xlabel(x_label)
    ax.set_ylabel(metric)
    ax.set_title(f"{verdict}: {metric}, {100 * curves.confidence:g} % CIs over seeds")
    ax.grid(alpha=0.3)
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.13), frameon=False, fontsize=8)
    save_figure(fig, path)
    return path
