"""Reproduction verdicts: is a re-run identical to, consistent with, or diverged from the original?

* ``identical``: the metric streams (name, step, value) are bit-for-bit equal (wall_time ignored).
* ``consistent``: every point within the manifest's ``expect`` tolerance (``rtol``/``atol``).
* ``diverged``: otherwise, naming the first metric and step that differ.

This is the verdict between one run and one run; across seeds (runs that are not deterministic,
or whose bit-identity the hardware rules out) it is harness.reproduce.group_verdict's.
"""

from __future__ import annotations

import fnmatch
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq

from harness.errors import HarnessError
from harness.store.layout import METRICS_PARQUET, RECORD

HOST_FIELDS = ("cpu_model", "cpu_count", "memory_bytes", "gpus", "gpu_driver", "os", "kernel")


@dataclass(frozen=True)
class ExpectSpec:
    """What a reproduction must show (the manifest's ``expect``)."""

    deterministic: bool = True
    rtol: float = 0.0
    atol: float = 0.0
    ignore: tuple[str, ...] = ()

    @classmethod
    def of(cls, expect: Any) -> ExpectSpec:
        """From a pydantic ``Expect``, a dict (as in record.json), None (defaults) or an ExpectSpec."""
        if isinstance(expect, cls):
            return expect
        if expect is None:
            return cls()
        data = expect if isinstance(expect, dict) else expect.model_dump()
        return cls(
            bool(data.get("deterministic", True)),
            float(data.get("rtol", 0.0)),
            float(data.get("atol", 0.0)),
            tuple(data.get("ignore") or ()),
        )


@dataclass
class Difference:
    """The first point where original and reproduction differ (None: the point is missing on that side)."""

    metric: str
    step: int
    original: float | None
    reproduced: float | None


@dataclass
class MetricRow:
    """How one metric compares."""

    metric: str
    original_points: int
    reproduced_points: int
    max_abs_diff: float
    max_rel_diff: float
    status: str  # identical | within tolerance | differs | missing
    first_step: int | None = None


@dataclass
class Verdict:
    """The outcome of a comparison, with what a reader needs to trust or question it."""

    verdict: str  # identical | consistent | diverged
    first_difference: Difference | None
    rows: list[MetricRow]
    hardware_differences: list[tuple[str, Any, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return asdict(self)


def _load_streams(run_dir: Path, ignore: Sequence[str]) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """metric name -> (steps, values), in step order (stable for repeated steps); wall_time dropped."""
    path = Path(run_dir) / METRICS_PARQUET
    if not path.is_file():
        raise HarnessError(f"{run_dir}: no {METRICS_PARQUET}; was the run completed?")
    table = pq.read_table(path, columns=["name", "step", "value"])
    names = np.asarray(table.column("name").to_pylist(), dtype=object)
    steps = table.column("step").to_numpy().astype(np.int64)
    values = table.column("value").to_numpy(zero_copy_only=False).astype(np.float64)
    streams = {}
    for name in sorted(set(names.tolist())):
        if any(fnmatch.fnmatchcase(name, pattern) for pattern in ignore):
            continue
        mask = names == name
        order = np.argsort(steps[mask], kind="stable")
        streams[name] = (steps[mask][order], values[mask][order])
    return streams


def _record(run_dir: Path) -> dict[str, Any]:
    from harness.errors import StoreError
    from harness.store.local import read_record

    try:
        return dict(read_record(Path(run_dir) / RECORD))
    except StoreError:
        return {}


def hardware_differences(original: dict[str, Any], reproduction: dict[str, Any]) -> list[tuple[str, Any, Any]]:
    """(field, original, reproduction) for host, engine, image and runtime facts that differ."""
    pairs = [
        (f"host.{name}", (original.get("host") or {}).get(name), (reproduction.get("host") or {}).get(name))
        for name in HOST_FIELDS
    ]
    pairs += [
        ("image.id", (original.get("image") or {}).get("id"), (reproduction.get("image") or {}).get("id")),
        ("docker_version", original.get("docker_version"), reproduction.get("docker_version")),
        ("runtime", original.get("runtime"), reproduction.get("runtime")),
        ("harness_version", original.get("harness_version"), reproduction.get("harness_version")),
    ]
    return [(name, a, b) for name, a, b in pairs if a != b]


def _bits_equal(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return a.view(np.int64) == b.view(np.int64)


def _compare_metric(
    name: str,
    original: tuple[np.ndarray, np.ndarray] | None,
    reproduced: tuple[np.ndarray, np.ndarray] | None,
    expect: ExpectSpec,
) -> tuple[MetricRow, Difference | None]:
    if original is None or reproduced is None:
        present = original if original is not None else reproduced
        assert present is not None
        step = int(present[0][0]) if len(present[0]) else 0
        value = float(present[1][0]) if len(present[1]) else None
        diff = Difference(
            name, step, value if original is not None else None, value if reproduced is not None else None
        )
        row = MetricRow(
            name,
            len(original[0]) if original else 0,
            len(reproduced[0]) if reproduced else 0,
            math.inf,
            math.inf,
            "missing",
            step,
        )
        return row, diff
    (steps_a, values_a), (steps_b, values_b) = original, reproduced
    common = min(len(steps_a), len(steps_b))
    same_steps = steps_a[:common] == steps_b[:common]
    a, b = values_a[:common], values_b[:common]
    with np.errstate(invalid="ignore", divide="ignore"):
        abs_diff = np.where(np.isnan(a) & np.isnan(b), 0.0, np.abs(a - b))
        rel_diff = np.where(abs_diff == 0, 0.0, abs_diff / np.maximum(np.abs(a), np.finfo(float).tiny))
    identical = _bits_equal(a, b) & same_steps
    close = (np.isclose(b, a, rtol=expect.rtol, atol=expect.atol, equal_nan=True) & same_steps) | identical
    bad = np.flatnonzero(~identical)
    first_bad_index = int(bad[0]) if len(bad) else (common if len(steps_a) != len(steps_b) else None)
    if first_bad_index is None:
        status = "identical"
    elif len(steps_a) == len(steps_b) and bool(close.all()):
        status = "within tolerance"
    else:
        status = "differs"
    difference = None
    first_step = None
    if first_bad_index is not None:
        index = first_bad_index
        if status == "differs" and len(np.flatnonzero(~close)):
            index = int(np.flatnonzero(~close)[0])
        in_a, in_b = index < len(steps_a), index < len(steps_b)
        first_step = int(steps_a[index] if in_a else steps_b[index])
        difference = Difference(
            name, first_step, float(values_a[index]) if in_a else None, float(values_b[index]) if in_b else None
        )
    row = MetricRow(
        name,
        len(steps_a),
        len(steps_b),
        float(np.nanmax(abs_diff)) if common else 0.0,
        float(np.nanmax(rel_diff)) if common else 0.0,
        status,
        first_step,
    )
    return row, difference


def compare_runs(original_record_dir: Path, reproduction_record_dir: Path, expect: Any = None) -> Verdict:
    """Compare two runs' metrics.parquet; ``expect`` defaults to the original record's ``expect``."""
    original_record = _record(original_record_dir)
    spec = ExpectSpec.of(expect if expect is not None else original_record.get("expect"))
    original = _load_streams(Path(original_record_dir), spec.ignore)
    reproduced = _load_streams(Path(reproduction_record_dir), spec.ignore)
    compared = [
        _compare_metric(name, original.get(name), reproduced.get(name), spec)
        for name in sorted(set(original) | set(reproduced))
    ]
    rows = [row for row, _ in compared]
    statuses = {row.status for row in rows}
    if statuses <= {"identical"}:
        verdict = "identical"
    elif statuses <= {"identical", "within tolerance"}:
        verdict = "consistent"
    else:
        verdict = "diverged"
    # The first difference that decides the verdict: any for "consistent", a real one for "diverged".
    deciding = {"within tolerance"} if verdict == "consistent" else {"differs", "missing"}
    candidates = [diff for row, diff in compared if diff is not None and row.status in deciding]
    first = min(candidates, key=lambda d: (d.step, d.metric)) if candidates else None
    reproduction_record = _record(reproduction_record_dir)
    if reproduction_record and reproduction_record.get("status") not in (None, "completed"):
        verdict = "diverged"
    return Verdict(verdict, first, rows, hardware_differences(original_record, reproduction_record))


def plot_comparison(
    original_record_dir: Path,
    reproduction_record_dir: Path,
    out_path: Path,
    metrics: Sequence[str] | None = None,
    max_panels: int = 6,
    verdict: Verdict | None = None,
) -> Path:
    """Write a PNG of original vs reproduction curves, one panel per metric (primary first), each
    axis labelled, the run ids in the legends and, given ``verdict``, the verdict in the title and
    each metric's status in its panel's title."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    original = _load_streams(Path(original_record_dir), ())
    reproduced = _load_streams(Path(reproduction_record_dir), ())
    primary = _record(original_record_dir).get("primary_metric")
    names = list(metrics) if metrics else sorted(set(original) | set(reproduced), key=lambda n: (n != primary, n))
    names = names[:max_panels]
    if not names:
        raise HarnessError(f"{original_record_dir}: no metrics to plot")
    columns = min(2, len(names))
    rows = math.ceil(len(names) / columns)
    figure, axes = plt.subplots(rows, columns, figsize=(6 * columns, 3.2 * rows + 0.6), squeeze=False)
    statuses = {row.metric: row.status for row in verdict.rows} if verdict is not None else {}
    original_id = _record(original_record_dir).get("run_id") or Path(original_record_dir).name
    reproduction_id = _record(reproduction_record_dir).get("run_id") or Path(reproduction_record_dir).name
    for axis, name in zip(axes.flat, names):
        if name in original:
            axis.plot(*original[name], label=f"original {original_id}", linewidth=2.2, alpha=0.7)
        if name in reproduced:
            axis.plot(*reproduced[name], label=f"reproduction {reproduction_id}", linewidth=1.0, linestyle="--")
        status = statuses.get(name) or ("not compared (expect.ignore)" if verdict is not None else None)
        axis.set_title(f"{name}: {status}" if status else name, fontsize=10)
        axis.set_xlabel("step")
        axis.set_ylabel(name, fontsize=9)
        axis.grid(alpha=0.3)
        axis.legend(fontsize=7)
    for axis in list(axes.flat)[len(names) :]:
        axis.set_visible(False)
    if verdict is not None:
        colour = {"identical": "#1a7f37", "consistent": "#1f6feb"}.get(verdict.verdict, "#cf222e")
        figure.suptitle(
            f"verdict: {verdict.verdict}  ({original_id} reproduced as {reproduction_id})",
            fontsize=11,
            fontweight="bold",
            color=colour,
        )
    from harness.analysis.plots import save_figure

    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    save_figure(figure, out_path)
    return out_path
