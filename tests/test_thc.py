"""THC against the 80 values the consistency study published, from its own data."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from harness.analysis.thc import interval_ranks, thc_from_intervals, thc_from_table
from tests.conftest import run_cli

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "thc-atari"
PUBLISHED = json.loads((DATA / "thc_published.json").read_text()) if DATA.is_dir() else {}


@pytest.fixture(scope="module")
def study_rows() -> dict[str, object]:
    table = pd.read_csv(DATA / "final_perf.csv", dtype={"value": str})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # 40M/DER/normalizations is ragged; the study reports no THC for it
        rows = thc_from_table(table, "hyperparameter", "value", "game_index", "seed", "score", ["regime", "agent"])
    return {f"{r.group['regime']}/{r.group['agent']}/{r.hyperparameter}": r for r in rows}


def test_the_reference_data_is_there() -> None:
    assert len(PUBLISHED) == 80, f"expected the study's 80 published THC values in {DATA}"


@pytest.mark.parametrize("key", sorted(PUBLISHED))
def test_published_value(study_rows: dict[str, object], key: str) -> None:
    row = study_rows[key]
    assert abs(row.score.thc_mean - PUBLISHED[key]["thc_mean"]) <= 1e-9
    assert abs(row.score.thc_std - PUBLISHED[key]["thc_std"]) <= 1e-9


def test_overlapping_intervals_share_the_midpoint_rank() -> None:
    # a and b overlap (ranks 1..2 -> 1.5); c is clearly last (3)
    assert interval_ranks([0.9, 0.8, 0.1], [1.1, 1.0, 0.2]).tolist() == [1.5, 1.5, 3.0]
    # disjoint intervals: plain ranks, best first
    assert interval_ranks([0.0, 2.0, 1.0], [0.5, 2.5, 1.5]).tolist() == [3.0, 1.0, 2.0]


def test_consistent_and_flipped_rankings() -> None:
    lo_same = np.array([[2.0, 0.0], [2.0, 0.0]])
    assert thc_from_intervals(["a", "b"], lo_same, lo_same + 1).thc_mean == 0.0
    lo_flip = np.array([[2.0, 0.0], [0.0, 2.0]])
    flipped = thc_from_intervals(["a", "b"], lo_flip, lo_flip + 1)
    assert flipped.thc_mean == 1.0 and flipped.spread == {"a": 1.0, "b": 1.0}


def test_iqm_ci_ranking_orders_clearly_separated_values() -> None:
    rng = np.random.default_rng(0)
    rows = []
    for agent, order in (("A", [0, 1, 2]), ("B", [2, 1, 0])):
        for v, level in zip(["x", "y", "z"], order):
            for seed in range(5):
                for game in range(4):
                    rows.append(
                        {
                            "hp": "lr",
                            "value": v,
                            "agent": agent,
                            "seed": seed,
                            "game": game,
                            "score": level * 10 + rng.normal(0, 0.1),
                        }
                    )
    table = pd.DataFrame(rows)
    (row,) = thc_from_table(table, "hp", "value", "agent", "seed", "score", ranking="iqm-ci", task_col="game", reps=200)
    # x and z swap ends (spread 2/2 each), y stays in the middle
    assert row.score.spread == {"x": 1.0, "y": 0.0, "z": 1.0}


def test_cli_table_json_matches_published() -> None:
    result = run_cli(
        "thc",
        "--table",
        str(DATA / "final_perf.csv"),
        "--hparam-col",
        "hyperparameter",
        "--value-col",
        "value",
        "--setting-col",
        "game_index",
        "--seed-col",
        "seed",
        "--score-col",
        "score",
        "--group-by",
        "regime,agent",
        "--json",
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    printed = json.loads(result.stdout)
    by_key = {f"{r['group']['regime']}/{r['group']['agent']}/{r['hyperparameter']}": r for r in printed}
    for key, value in PUBLISHED.items():
        assert abs(by_key[key]["thc_mean"] - value["thc_mean"]) <= 1e-9
        assert abs(by_key[key]["thc_std"] - value["thc_std"]) <= 1e-9
    assert "40M/DER/normalizations" in result.stderr  # the ragged one is named, not silently dropped


def test_cli_bad_column_is_one_line_exit_2() -> None:
    result = run_cli(
        "thc",
        "--table",
        str(DATA / "final_perf.csv"),
        "--score-col",
        "points",
        timeout=120,
    )
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0 and "no column points" in result.stderr
    assert "Traceback" not in result.stderr
