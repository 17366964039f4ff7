"""The learning-curve figure of a results repo on the Hub (``figures/learning_curves.png``): each
manifest's primary metric, mean and bootstrap CI over seeds. ``harness publish`` hands
:func:`learning_curves` to ``harness.store.hub.publish``, which draws it over the repo's runs."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq

from harness.store.card import FIGURE_RUNS

FIGURE_SMOOTH = 10  # rolling mean over this many points: episode returns are noisy (the title says so)


def learning_curves(run_dirs: Mapping[str, Path], rows: list[dict[str, Any]], path: Path) -> Path | None:
    """The repo's learning-curve figure: each manifest's primary metric, mean and bootstrap CI over
    seeds, reproductions drawn as their own group; smoke runs left out. None when nothing to draw."""
    import numpy as np

    from harness.analysis.curves import group_curves
    from harness.analysis.plots import plot_curves
    from harness.errors import HarnessError

    by_id = {row["run_id"]: row for row in rows}
    usable = [
        r
        for r in rows
        if r["run_id"] in run_dirs and not r.get("smoke") and r.get("status") == "completed" and r.get("primary_metric")
    ]
    if not usable:
        return None
    metric = max({r["primary_metric"] for r in usable}, key=lambda m: sum(r["primary_metric"] == m for r in usable))
    groups: dict[str, dict[str, tuple[Any, Any]]] = {}
    for row in usable[-FIGURE_RUNS:]:
        if row["primary_metric"] != metric:
            continue
        table = pq.read_table(run_dirs[row["run_id"]] / "metrics.parquet", columns=["name", "step", "value"])
        names = np.asarray(table.column("name").to_pylist(), dtype=object)
        chosen = names == metric
        if not chosen.any():
            continue
        steps = table.column("step").to_numpy()[chosen].astype(float)
        values = table.column("value").to_numpy(zero_copy_only=False)[chosen].astype(float)
        order = np.argsort(steps, kind="stable")
        label = f"{row['name']} (reproductions)" if by_id[row["run_id"]].get("reproduces") else str(row["name"])
        groups.setdefault(label, {})[row["run_id"]] = (steps[order], values[order])
    if not groups:
        return None
    try:
        curves, _ = group_curves(groups, points=200, smooth=FIGURE_SMOOTH)
    except HarnessError:
        return None
    path.parent.mkdir(parents=True, exist_ok=True)
    return plot_curves({"-": curves}, path, metric, smooth=FIGURE_SMOOTH)
