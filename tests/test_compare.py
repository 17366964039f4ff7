"""Reproduction verdicts on real run folders (parquet metrics written through LocalStore)."""

from __future__ import annotations

import struct

import pytest

from harness.errors import HarnessError
from harness.reproduce.compare import ExpectSpec, compare_runs, plot_comparison
from harness.store.local import LocalStore
from tests.hubserver.runs import curve, make_run


@pytest.fixture
def store(tmp_path):
    return LocalStore(tmp_path / "store")


def next_float(value: float) -> float:
    """The next representable float64 after ``value``: the smallest possible difference."""
    return struct.unpack("<d", struct.pack("<q", struct.unpack("<q", struct.pack("<d", value))[0] + 1))[0]


def test_same_stream_is_identical_even_with_other_wall_times_and_hosts(store):
    make_run(store, "orig", seed=1)
    make_run(store, "repro", seed=1, host={"hostname": "other", "cpu_model": "Other CPU", "cpu_count": 16})

    verdict = compare_runs(store.run_dir("orig"), store.run_dir("repro"), ExpectSpec())

    assert verdict.verdict == "identical" and verdict.first_difference is None
    assert {row.status for row in verdict.rows} == {"identical"}
    assert ("host.cpu_model", "Test CPU", "Other CPU") in verdict.hardware_differences


def test_one_ulp_is_not_identical_and_names_the_first_difference(store):
    rows = curve(1)
    changed = [(n, s, next_float(v) if (n, s) == ("losses/td_loss", 1200) else v) for n, s, v in rows]
    make_run(store, "orig", seed=1, metrics=rows)
    make_run(store, "repro", seed=1, metrics=changed)

    strict = compare_runs(store.run_dir("orig"), store.run_dir("repro"), ExpectSpec(deterministic=True))
    assert strict.verdict == "diverged"
    first = strict.first_difference
    assert (first.metric, first.step) == ("losses/td_loss", 1200)
    assert first.reproduced == next_float(first.original)

    tolerant = compare_runs(store.run_dir("orig"), store.run_dir("repro"), {"deterministic": True, "rtol": 1e-9})
    assert tolerant.verdict == "consistent"
    assert [r.status for r in tolerant.rows] == ["identical", "within tolerance"]


def test_real_divergence_and_missing_steps(store):
    rows = curve(1)
    make_run(store, "orig", seed=1, metrics=rows)
    make_run(
        store,
        "shifted",
        seed=1,
        metrics=[(n, s, v + (3.0 if s >= 2500 and n.startswith("charts") else 0.0)) for n, s, v in rows],
    )
    make_run(store, "short", seed=1, metrics=[r for r in rows if r[1] < 4000])

    shifted = compare_runs(store.run_dir("orig"), store.run_dir("shifted"), {"rtol": 1e-3, "atol": 0.1})
    assert shifted.verdict == "diverged"
    assert (shifted.first_difference.metric, shifted.first_difference.step) == ("charts/episodic_return", 2500)

    short = compare_runs(store.run_dir("orig"), store.run_dir("short"), ExpectSpec())
    assert short.verdict == "diverged"
    assert short.first_difference.step == 4000 and short.first_difference.reproduced is None


def test_ignored_metrics_and_the_records_expect(store):
    rows = curve(1) + [("charts/SPS", s, 100.0) for s in range(0, 5000, 100)]
    make_run(store, "orig", seed=1, metrics=rows)
    make_run(store, "repro", seed=1, metrics=curve(1) + [("charts/SPS", s, 97.0) for s in range(0, 5000, 100)])

    assert compare_runs(store.run_dir("orig"), store.run_dir("repro"), ExpectSpec()).verdict == "diverged"
    verdict = compare_runs(store.run_dir("orig"), store.run_dir("repro"), {"ignore": ["charts/SPS"]})
    assert verdict.verdict == "identical"


def test_plot_writes_a_png(store, tmp_path):
    make_run(store, "orig", seed=1)
    make_run(store, "repro", seed=1, metrics=curve(1, noise=2.0))

    figure = plot_comparison(store.run_dir("orig"), store.run_dir("repro"), tmp_path / "out" / "cmp.png")

    header = figure.read_bytes()[:8]
    assert header == b"\x89PNG\r\n\x1a\n" and figure.stat().st_size > 10_000


def test_missing_metrics_file_is_bad_input(store, tmp_path):
    make_run(store, "orig", seed=1)
    (tmp_path / "empty").mkdir()
    with pytest.raises(HarnessError, match="no metrics.parquet"):
        compare_runs(store.run_dir("orig"), tmp_path / "empty")
