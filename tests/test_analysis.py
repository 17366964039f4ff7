"""Analysis over a real small store: index, selection, final scores, curves, rliable aggregates,
the compare / plot / thc commands and their bad-input errors."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from scipy import stats

from harness.analysis import index as run_index
from harness.analysis.aggregate import (
    interval_estimates,
    normalize_scores,
    probability_of_improvement,
)
from harness.analysis.curves import group_curves, mean_ci, rolling_mean
from harness.analysis.selection import select_runs
from harness.analysis.tables import build_comparison, to_csv, to_markdown
from harness.errors import HarnessError
from harness.store import journal
from harness.store.local import LocalStore
from tests.conftest import run_cli

METRIC = "charts/episodic_return"


def add_run(  # noqa: PLR0913 — a run described field by field, as a test reads it
    store: LocalStore,
    run_id: str,
    name: str,
    params: dict,
    seed: int,
    values: np.ndarray,
    steps: np.ndarray | None = None,
    status: str = "completed",
    tags: list[str] | None = None,
) -> None:
    """A run as the runner leaves it: metrics.parquet in the contract's schema and a sealed record."""
    folder = store.run_dir(run_id)
    folder.mkdir(parents=True)
    steps = np.arange(1, len(values) + 1, dtype=np.int64) * 100 if steps is None else steps
    pq.write_table(
        pa.table(
            {
                "run_id": [run_id] * len(values),
                "name": [METRIC] * len(values),
                "step": pa.array(steps, pa.int64()),
                "value": pa.array(values, pa.float64()),
                "wall_time": pa.array(1.7e9 + steps / 50.0, pa.float64()),
            }
        ),
        folder / "metrics.parquet",
    )
    store.seal(
        {
            "schema_version": 1,
            "run_id": run_id,
            "name": name,
            "tags": tags or [],
            "status": status,
            "started_at": "2025-01-01T00:00:00Z",
            "duration_s": 30.0 + seed,
            "seed": seed,
            "params": params,
            "primary_metric": METRIC,
        }
    )


@pytest.fixture()
def store(tmp_path: Path) -> LocalStore:
    """2 agents x 2 environments x 3 seeds, learning curves of 50 points."""
    store = LocalStore(tmp_path / "results")
    for agent, lr, gain in (("dqn-a", 1e-4, 1.0), ("dqn-b", 2.5e-4, 2.0)):
        for env, scale in (("CartPole-v1", 100.0), ("Acrobot-v1", 10.0)):
            for seed in (1, 2, 3):
                x = np.linspace(0, 1, 50)
                values = scale * gain * x + seed
                add_run(
                    store,
                    f"{agent}-{env}-{seed}",
                    agent,
                    {"env_id": env, "learning_rate": lr},
                    seed,
                    values,
                    tags=["paper"],
                )
    return store


def cli(home: Path, *args: str) -> subprocess.CompletedProcess:
    return run_cli(*args, env={"HARNESS_HOME": str(home), "MPLBACKEND": "Agg"}, timeout=120)


# ---- rliable -----------------------------------------------------------------------------


def test_iqm_and_ci_equal_rliable_called_directly() -> None:
    from rliable import library, metrics

    rng = np.random.default_rng(1)
    scores = {"a": rng.normal(0, 1, (7, 5)), "b": rng.normal(1, 2, (7, 5))}
    ours = interval_estimates(scores, ["iqm", "median", "mean", "optimality_gap"], reps=500, seed=11)
    via_rliable = interval_estimates(
        scores, ["iqm", "median", "mean", "optimality_gap"], reps=500, seed=11, engine="rliable"
    )
    np.random.seed(11)  # rliable draws from numpy's global state
    points, cis = library.get_interval_estimates(
        scores,
        lambda x: np.array(
            [
                metrics.aggregate_iqm(x),
                metrics.aggregate_median(x),
                metrics.aggregate_mean(x),
                metrics.aggregate_optimality_gap(x),
            ]
        ),
        reps=500,
    )
    for group in scores:
        for i, name in enumerate(["iqm", "median", "mean", "optimality_gap"]):
            for estimate in (ours[group][name], via_rliable[group][name]):
                assert estimate.point == pytest.approx(points[group][i], abs=1e-12)
                assert estimate.ci[0] == pytest.approx(cis[group][0, i], abs=1e-12)
                assert estimate.ci[1] == pytest.approx(cis[group][1, i], abs=1e-12)
    # seeded: the same again, and the caller's global random state is left alone
    state = np.random.get_state()[1].copy()
    assert interval_estimates(scores, ["iqm"], reps=500, seed=11)["a"]["iqm"] == ours["a"]["iqm"]
    assert (np.random.get_state()[1] == state).all()


def test_probability_of_improvement_equals_rliable() -> None:
    from rliable import library, metrics

    rng = np.random.default_rng(2)
    x, y = rng.normal(1, 1, (6, 4)), rng.normal(0, 1, (6, 4))
    ours = probability_of_improvement({"x": x, "y": y}, reps=200, seed=5)[("x", "y")]
    np.random.seed(5)
    points, cis = library.get_interval_estimates(
        {"xy": [x, y]}, lambda a, b: np.array([metrics.probability_of_improvement(a, b)]), reps=200
    )
    assert ours.point == pytest.approx(points["xy"][0]) and ours.ci == pytest.approx(tuple(cis["xy"][:, 0]))
    assert ours.point > 0.5


def test_normalisation_min_max_and_reference() -> None:
    scores = {"a": np.array([[0.0, 10.0], [2.0, 20.0]]), "b": np.array([[4.0, 30.0], [1.0, 15.0]])}
    minmax = normalize_scores(scores, ["e1", "e2"])
    assert minmax["a"].tolist() == [[0.0, 0.0], [0.5, 0.5]] and minmax["b"][0].tolist() == [1.0, 1.0]
    ref = normalize_scores(scores, ["e1", "e2"], {"e1": (0.0, 4.0), "e2": (10.0, 110.0)})
    assert ref["b"][0].tolist() == [1.0, 0.2]
    with pytest.raises(HarnessError, match="no reference scores for e2"):
        normalize_scores(scores, ["e1", "e2"], {"e1": (0.0, 1.0)})


# ---- curves ------------------------------------------------------------------------------


def test_rolling_mean_and_t_interval() -> None:
    values = np.array([1.0, 3.0, 5.0, 7.0, 9.0])
    expected = pd.Series(values).rolling(3, min_periods=1).mean().to_numpy()
    assert np.allclose(rolling_mean(values, 3), expected)
    matrix = np.array([[1.0, 2.0], [3.0, 5.0], [2.0, 2.0]])
    _, lo, hi = mean_ci(matrix)
    low, high = stats.t.interval(0.95, 2, loc=matrix.mean(0), scale=stats.sem(matrix, axis=0))
    assert np.allclose(lo, low) and np.allclose(hi, high)
    assert np.isnan(mean_ci(matrix[:1])[1]).all()


def test_groups_with_different_ranges_are_cut_to_the_common_one() -> None:
    long = {"r1": (np.array([0.0, 100.0, 200.0]), np.array([0.0, 1.0, 2.0]))}
    short = {"r2": (np.array([0.0, 100.0]), np.array([5.0, 6.0])), "r3": (np.array([0.0, 100.0]), np.array([7.0, 8.0]))}
    curves, notes = group_curves({"long": long, "short": short}, points=11)
    assert curves["long"].x[-1] == 100.0 and curves["short"].mean[-1] == 7.0
    assert any("cut to the common range 0-100" in n for n in notes)
    assert any("one seed only for long" in n for n in notes)


# ---- index, selection, final scores --------------------------------------------------------


def test_index_is_incremental_and_compacts_finished_runs(store: LocalStore) -> None:
    index = run_index.refresh_index(store)
    assert index.num_rows == 12 and (store.root / "index.parquet").is_file()
    assert set(index.column("metrics_part").to_pylist()) != {None}
    add_run(store, "late", "dqn-a", {"env_id": "CartPole-v1"}, 9, np.arange(30.0), status="running")
    index = run_index.refresh_index(store)
    late = index.filter(pa.compute.equal(index.column("run_id"), "late")).to_pylist()[0]
    assert late["status"] == "running" and late["metrics_part"] is None  # still growing: read in place
    # every final value equals the mean of the last 10 points read straight from the run's own file
    finals = run_index.final_values(store, index, METRIC, last_n=10)
    for run_id in index.column("run_id").to_pylist():
        own = pq.read_table(store.run_dir(run_id) / "metrics.parquet").to_pandas().sort_values("step")
        assert finals[run_id] == pytest.approx(own["value"].iloc[-10:].mean(), rel=1e-12)
    record = store.load("late")
    record["status"] = "completed"
    store.save(record)
    index = run_index.refresh_index(store)
    late = index.filter(pa.compute.equal(index.column("run_id"), "late")).to_pylist()[0]
    assert late["status"] == "completed" and late["metrics_part"]


def test_index_reads_no_link_and_no_special_file(store: LocalStore, tmp_path: Path) -> None:
    """A metrics file or record that is a symlink (to a file the run does not own) or a FIFO is
    neither followed nor waited on: the run is indexed without metrics, or left out."""
    outside = tmp_path / "outside.parquet"
    pq.write_table(
        pa.table({"run_id": ["linked"], "name": [METRIC], "step": [1], "value": [1e9], "wall_time": [0.0]}), outside
    )
    add_run(store, "linked", "dqn-a", {"env_id": "CartPole-v1"}, 7, np.arange(20.0))
    (store.run_dir("linked") / "metrics.parquet").unlink()
    (store.run_dir("linked") / "metrics.parquet").symlink_to(outside)
    add_run(store, "fifo", "dqn-a", {"env_id": "CartPole-v1"}, 8, np.arange(20.0))
    (store.run_dir("fifo") / "metrics.parquet").unlink()
    os.mkfifo(store.run_dir("fifo") / "metrics.parquet")
    add_run(store, "recordlink", "dqn-a", {"env_id": "CartPole-v1"}, 9, np.arange(20.0))
    (tmp_path / "record.json").write_bytes((store.run_dir("recordlink") / "record.json").read_bytes())
    (store.run_dir("recordlink") / "record.json").unlink()
    (store.run_dir("recordlink") / "record.json").symlink_to(tmp_path / "record.json")
    index = run_index.refresh_index(store)
    rows = {r["run_id"]: r for r in index.to_pylist()}
    assert "recordlink" not in rows and len(rows) == 14
    assert rows["linked"]["metrics_part"] is None and rows["fifo"]["metrics_part"] is None
    finals = run_index.final_values(store, index, METRIC, last_n=10)
    assert "linked" not in finals and "fifo" not in finals and len(finals) == 12
    assert "linked" not in run_index.metric_series(store, index, METRIC)
    assert max(finals.values()) < 1e9


def test_ctrl_c_while_compacting_leaves_no_part_file_behind(store: LocalStore, monkeypatch) -> None:
    """Ctrl-C lands after the COPY wrote the temporary part and before its rename: the temporary
    file goes, the index stays unwritten, and the next refresh compacts as if nothing happened.
    (A store without a journal: made before it, so its runs are compacted from their files.)"""
    shutil.rmtree(store.root / journal.JOURNAL_DIR)
    replace = os.replace

    def interrupted_replace(source, target):
        os.kill(os.getpid(), signal.SIGINT)  # a real Ctrl-C: Python raises KeyboardInterrupt here
        time.sleep(5)  # the signal arrives at the next bytecode, long before this ends
        replace(source, target)

    monkeypatch.setattr(run_index.os, "replace", interrupted_replace)
    with pytest.raises(KeyboardInterrupt):
        run_index.refresh_index(store)
    monkeypatch.undo()
    parts = store.root / run_index.PARTS_DIR
    assert parts.is_dir() and list(parts.iterdir()) == []
    index = run_index.refresh_index(store)
    assert index.num_rows == 12 and [p.name for p in parts.iterdir() if p.name.startswith(".")] == []


def test_selection_terms(store: LocalStore) -> None:
    assert select_runs(store, ["dqn-a"]).num_rows == 6
    assert select_runs(store, ["learning_rate=2.5e-4"]).num_rows == 6  # 2.5e-4 == 0.00025
    assert select_runs(store, ["dqn-a", "dqn-b", "env_id=Acrobot-v1", "seed=1"]).num_rows == 2
    assert select_runs(store, ["tag=paper", "status=completed"]).num_rows == 12
    with pytest.raises(HarnessError, match=r"no runs match 'ppo'.*dqn-a \(6\).*params env_id, learning_rate"):
        select_runs(store, ["ppo"])
    with pytest.raises(HarnessError, match="no runs match 'status=failed'"):
        select_runs(store, ["status=failed"])


def test_comparison_table(store: LocalStore) -> None:
    runs = select_runs(store, ["tag=paper"])
    comparison = build_comparison(store, runs, METRIC, by="manifest", env_key="env_id", last_n=1, reps=300)
    cell = next(c for c in comparison.cells if c.group == "dqn-b" and c.env == "CartPole-v1")
    assert cell.runs == 3 and cell.mean == pytest.approx(200.0 + 2.0) and cell.std == pytest.approx(1.0)
    assert cell.runtime_s == pytest.approx(32.0)
    assert comparison.aggregates["dqn-b"]["iqm"].point > comparison.aggregates["dqn-a"]["iqm"].point
    markdown = to_markdown(comparison)
    assert "| dqn-b | CartPole-v1 | 3 | 202 ± 1 | 32 |" in markdown and "min-max normalised" in markdown
    rows = to_csv(comparison).splitlines()
    assert rows[0].startswith("group,environment,runs,final_mean,final_std") and len(rows) == 1 + 4 + 2
    with pytest.raises(HarnessError, match=r"no selected run logged metric 'losses/td'.*charts/episodic_return"):
        build_comparison(store, runs, "losses/td")


# ---- the commands --------------------------------------------------------------------------


def test_compare_command(store: LocalStore, tmp_path: Path) -> None:
    out = tmp_path / "table.csv"
    result = cli(store.root, "compare", "tag=paper", "--by", "param:learning_rate", "--out", str(out), "--reps", "200")
    assert result.returncode == 0, result.stderr
    assert "| learning_rate=0.00025 | CartPole-v1 | 3 |" in result.stdout and "IQM" in result.stdout
    assert out.read_text().startswith("group,environment")
    missing = cli(store.root, "compare", "tag=paper", "--metric", "charts/sps")
    assert missing.returncode == 2 and missing.stderr.count("\n") == 1 and "charts/sps" in missing.stderr
    nothing = cli(store.root, "compare", "ppo")
    assert nothing.returncode == 2 and "dqn-a (6)" in nothing.stderr and "Traceback" not in nothing.stderr


def test_compare_adds_probability_of_improvement_and_profiles(store: LocalStore, tmp_path: Path) -> None:
    figure = tmp_path / "profiles.png"
    result = cli(
        store.root,
        "compare",
        "tag=paper",
        "--by",
        "param:learning_rate",
        "--reps",
        "200",
        "--improvement",
        "--profiles",
        str(figure),
    )
    assert result.returncode == 0, result.stderr
    assert "Probability of improvement" in result.stdout
    row = next(
        line
        for line in result.stdout.splitlines()
        if line.startswith("| learning_rate=0.0001 | learning_rate=0.00025 |")
    )
    point = float(row.split("|")[3].split("[")[0])
    assert point == 0.0  # dqn-b (2.5e-4) learns twice as fast in every environment and seed
    assert figure.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_plot_command_png_svg_and_single_seed(store: LocalStore, tmp_path: Path) -> None:
    png = tmp_path / "fig.png"
    result = cli(store.root, "plot", "tag=paper", "--out", str(png), "--smooth", "5")
    assert result.returncode == 0, result.stderr
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and "2 panels" in result.stdout
    svg = tmp_path / "fig.svg"
    single = cli(store.root, "plot", "seed=1", "--out", str(svg), "--x", "wall_time")
    assert single.returncode == 0, single.stderr
    assert "one seed only" in single.stderr and b"<svg" in svg.read_bytes()[:500]
    bad = cli(store.root, "plot", "tag=paper", "--out", str(tmp_path / "fig.gif"))
    assert bad.returncode == 2 and ".png, .svg or .pdf" in bad.stderr


def test_plot_warns_about_different_step_ranges(tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "results")
    for seed in (1, 2):
        add_run(store, f"long-{seed}", "long", {"env_id": "E"}, seed, np.arange(100.0))
        add_run(store, f"short-{seed}", "short", {"env_id": "E"}, seed, np.arange(40.0))
    result = cli(store.root, "plot", "long", "short", "--out", str(tmp_path / "f.pdf"))
    assert result.returncode == 0, result.stderr
    assert "cut to the common range 100-4000" in result.stderr
    assert (tmp_path / "f.pdf").read_bytes()[:5] == b"%PDF-"


def test_thc_from_a_harness_sweep(tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "results")
    # learning_rate: 1e-3 beats 1e-4 on CartPole, loses on Acrobot (flip: THC 1);
    # buffer: 1000 always beats 100 (THC 0)
    for env, lr_best in (("CartPole-v1", 1e-3), ("Acrobot-v1", 1e-4)):
        for lr in (1e-3, 1e-4):
            for buffer in (100, 1000):
                for seed in (1, 2, 3):
                    level = 100.0 * (lr == lr_best) + 10.0 * (buffer == 1000) + 0.1 * seed
                    add_run(
                        store,
                        f"{env}-{lr}-{buffer}-{seed}",
                        "sweep",
                        {"env_id": env, "learning_rate": lr, "buffer": buffer},
                        seed,
                        np.full(20, level),
                    )
    result = cli(store.root, "thc", "sweep", "--hparams", "learning_rate,buffer", "--across", "env_id", "--json")
    assert result.returncode == 0, result.stderr
    rows = json.loads(result.stdout)
    lr_rows = [r for r in rows if r["hyperparameter"] == "learning_rate"]
    buffer_rows = [r for r in rows if r["hyperparameter"] == "buffer"]
    assert {r["group"]["buffer"] for r in lr_rows} == {"100", "1000"}
    assert all(r["thc_mean"] == 1.0 for r in lr_rows) and all(r["thc_mean"] == 0.0 for r in buffer_rows)
    missing = cli(store.root, "thc", "sweep", "--hparams", "gamma", "--across", "env_id")
    assert missing.returncode == 2 and "no selected run has param 'gamma'" in missing.stderr
