"""What a researcher sees (issue 14), each through the CLI with real parts: run ids and their
completion, --json and examples everywhere, diff, TensorBoard export, gc against the real engine,
the Hub page (card, runs index, figure) read back with `datasets`, honest figures, live progress
and `harness logs -f` during a real sandboxed run."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
import tomllib
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from harness.store.local import LocalStore
from tests.conftest import REPO as ROOT
from tests.conftest import run_cli
from tests.hubserver import HubServer, RepoRef
from tests.hubserver.runs import curve, make_run

TOKEN = "hf_uxTestToken0123456789abcdef"
HUB_REPO = "lab/ux-results"


def harness(
    home: Path, *args: str, cwd: Path = ROOT, timeout: float = 600, **env: str
) -> subprocess.CompletedProcess[str]:
    """The CLI in a fresh interpreter, as a user runs it (stdout piped: not a terminal)."""
    return run_cli(
        *args,
        cwd=cwd,
        timeout=timeout,
        env={
            "HARNESS_HOME": str(home),
            "MPLBACKEND": "Agg",
            "HF_HUB_DISABLE_XET": "1",
            "HF_HUB_DISABLE_PROGRESS_BARS": "1",
            **env,
        },
    )


@pytest.fixture
def store(tmp_path: Path) -> LocalStore:
    """Three runs whose ids share prefixes, with a long param name and a long metric name."""
    store = LocalStore(tmp_path / "store")
    make_run(store, "dqn-cartpole-0123456789ab", seed=1)
    make_run(store, "dqn-cartpole-0123456789ab-2", seed=2)
    make_run(
        store,
        "dqn-cartpole-fedcba987654",
        seed=3,
        metrics=[("charts/episodic_return_of_the_evaluation_policy", s, float(s)) for s in range(0, 500, 100)],
    )
    record = store.load("dqn-cartpole-fedcba987654")
    record.update(
        primary_metric="charts/episodic_return_of_the_evaluation_policy",
        params={"learning_rate_of_the_q_network": 0.00025, "lr": 0.002},
    )
    store.save(record)
    return store


# ---- 1. run ids ------------------------------------------------------------------------------


def test_ls_prints_full_ids_on_an_80_column_terminal(store: LocalStore) -> None:
    done = harness(store.root, "ls", COLUMNS="80")
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert max(len(line) for line in lines) <= 80
    for run_id in ("dqn-cartpole-0123456789ab", "dqn-cartpole-0123456789ab-2", "dqn-cartpole-fedcba987654"):
        assert any(re.search(rf"(^|\s){re.escape(run_id)}(\s|$)", line) for line in lines), (run_id, done.stdout)
    assert "…" not in done.stdout


def test_a_unique_prefix_names_a_run_and_an_ambiguous_one_lists_candidates(store: LocalStore, tmp_path: Path) -> None:
    shown = harness(store.root, "show", "dqn-cartpole-f", "--json")
    assert shown.returncode == 0 and json.loads(shown.stdout)["run_id"] == "dqn-cartpole-fedcba987654"
    exact = harness(store.root, "show", "dqn-cartpole-0123456789ab", "--json")  # also a prefix of -2: exact wins
    assert json.loads(exact.stdout)["run_id"] == "dqn-cartpole-0123456789ab"

    for args in (
        ["show", "dqn-cartpole-0"],
        ["diff", "dqn-cartpole-0", "dqn-cartpole-f"],
        ["logs", "dqn-cartpole-0"],
        ["export", "dqn-cartpole-0", "--tensorboard", str(tmp_path / "tb")],
    ):
        ambiguous = harness(store.root, *args)
        assert ambiguous.returncode == 2, (args, ambiguous.stderr)
        assert ambiguous.stderr.splitlines() == [
            "error: run id prefix 'dqn-cartpole-0' is ambiguous: it matches dqn-cartpole-0123456789ab, "
            "dqn-cartpole-0123456789ab-2"
        ], args
    missing = harness(store.root, "show", "ppo")
    assert missing.returncode == 2 and len(missing.stderr.splitlines()) == 1 and "no run 'ppo'" in missing.stderr
    logs = harness(store.root, "logs", "dqn-cartpole-f")
    assert logs.returncode == 0 and "dqn-cartpole-fedcba987654: completed" in logs.stdout


def test_shell_completion_offers_run_ids_from_the_store(store: LocalStore) -> None:
    for command in ("show", "logs", "diff", "publish", "reproduce", "export"):
        done = harness(
            store.root,
            _HARNESS_COMPLETE="bash_complete",
            COMP_WORDS=f"harness {command} dqn-cartpole-0",
            COMP_CWORD="2",
        )
        assert done.returncode == 0, done.stderr
        assert done.stdout.split() == ["plain,dqn-cartpole-0123456789ab", "plain,dqn-cartpole-0123456789ab-2"], command
    pulled = store.load("dqn-cartpole-fedcba987654")
    pulled["pulled_from"] = {"repo": "lab/cartpole", "revision": "0" * 40, "endpoint": "http://hub"}
    store.save(pulled)
    for words, expected in (
        ("harness pull la", ["plain,lab/cartpole"]),
        ("harness reproduce lab/cartpole/", ["plain,lab/cartpole/dqn-cartpole-fedcba987654"]),
    ):
        done = harness(store.root, _HARNESS_COMPLETE="bash_complete", COMP_WORDS=words, COMP_CWORD="2")
        assert done.stdout.split() == expected, words
    script = harness(store.root, _HARNESS_COMPLETE="bash_source")
    assert "_harness_completion" in script.stdout
    readme = (ROOT / "README.md").read_text()
    assert "_HARNESS_COMPLETE=bash_source harness" in readme


# ---- 2. --json, tables, examples -----------------------------------------------------------


def test_every_command_has_an_example_in_its_help() -> None:
    from harness.cli import COMMANDS, cli

    runner = CliRunner()
    for name in [*COMMANDS, "image bootstrap"]:
        result = runner.invoke(cli, [*name.split(), "--help"])
        assert result.exit_code == 0, name
        assert "Examples:" in result.output and "  harness " in result.output.split("Examples:")[1], name


def test_json_of_validate_doctor_and_compare_and_unambiguous_csv(store: LocalStore, tmp_path: Path) -> None:
    valid = harness(store.root, "validate", "--json", "manifests/noop.yaml", "manifests/dqn-cartpole.yaml")
    assert valid.returncode == 0, valid.stderr
    assert [(v["name"], v["ok"], v["runs"]) for v in json.loads(valid.stdout)] == [
        ("noop", True, 1),
        ("dqn-cartpole", True, 1),
    ]
    bad = tmp_path / "bad.yaml"
    bad.write_text("apiVersion: harness/v1\nname: x\n")
    invalid = harness(store.root, "validate", "--json", str(bad))
    assert invalid.returncode == 2 and json.loads(invalid.stdout)[0]["ok"] is False
    assert json.loads(invalid.stdout)[0]["problems"]

    doctor = harness(store.root, "doctor", "--json")
    checks = json.loads(doctor.stdout)
    assert {c["name"] for c in checks["checks"]} >= {"docker engine", "gpu / nvml", "hub login"}
    assert doctor.returncode == (0 if checks["ok"] else 1)

    out = tmp_path / "table.csv"
    compared = harness(
        store.root,
        "compare",
        "toy-train",
        "--metric",
        "charts/episodic_return",
        "--reps",
        "200",
        "--out",
        str(out),
        "--json",
    )
    assert compared.returncode == 0, compared.stderr
    data = json.loads(compared.stdout)
    assert data["metric"] == "charts/episodic_return" and data["cells"][0]["runs"] == 2
    header = out.read_text().splitlines()[0].split(",")
    assert len(header) == len(set(header)), header
    assert header[:6] == ["group", "environment", "runs", "final_mean", "final_std", "runtime_mean_s"]
    assert "aggregate_mean" in header and "mean" not in header

    recovered = harness(store.root, "recover", "--json")
    assert recovered.returncode == 0 and json.loads(recovered.stdout) == {"recovered": []}
    figure = tmp_path / "curves.png"
    plotted = harness(
        store.root, "plot", "toy-train", "--metric", "charts/episodic_return", "--out", str(figure), "--json"
    )
    assert plotted.returncode == 0, plotted.stderr
    assert json.loads(plotted.stdout) == {
        "figure": str(figure),
        "metric": "charts/episodic_return",
        "runs": 2,
        "panels": ["-"],
    }


# ---- 5. diff ---------------------------------------------------------------------------------


def test_diff_puts_differences_first(store: LocalStore) -> None:
    done = harness(store.root, "diff", "dqn-cartpole-0123456789ab-2", "dqn-cartpole-f", "--json")
    assert done.returncode == 0, done.stderr
    data = json.loads(done.stdout)
    assert data["a"] == "dqn-cartpole-0123456789ab-2" and data["b"] == "dqn-cartpole-fedcba987654"
    differing = {(d["section"], d["field"]) for d in data["differences"]}
    assert {("params", "(seed)"), ("params", "learning_rate_of_the_q_network"), ("params", "lr")} <= differing
    lr = next(d for d in data["differences"] if d["field"] == "lr")
    assert (lr["a"], lr["b"]) == (0.001, 0.002)
    assert ("image", "tag") in {(d["section"], d["field"]) for d in data["same"]}
    sections = [d["section"] for d in data["differences"]]
    assert sections == sorted(
        sections, key=["manifest", "params", "lockfile", "packages", "image", "hardware", "metrics"].index
    )
    text = harness(store.root, "diff", "dqn-cartpole-0123456789ab-2", "dqn-cartpole-f")
    assert text.returncode == 0 and "learning_rate_of_the_q_network" in text.stdout and "field(s) differ" in text.stdout


# ---- 4. TensorBoard export -------------------------------------------------------------------


def test_export_writes_event_files_tensorboard_reads(store: LocalStore, tmp_path: Path) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    target = tmp_path / "tb"
    for _ in range(2):  # exporting again replaces, not duplicates
        done = harness(store.root, "export", "toy-train", "--tensorboard", str(target), "--json")
        assert done.returncode == 0, done.stderr
    exported = json.loads(done.stdout)["runs"]
    assert sorted(e["run_id"] for e in exported) == [
        "dqn-cartpole-0123456789ab",
        "dqn-cartpole-0123456789ab-2",
        "dqn-cartpole-fedcba987654",
    ]
    assert sorted(p.name for p in target.iterdir()) == sorted(e["run_id"] for e in exported)
    events = EventAccumulator(str(target / "dqn-cartpole-0123456789ab-2"))
    events.Reload()
    assert {"charts/episodic_return", "losses/td_loss", "system/cpu_percent"} <= set(events.Tags()["scalars"])
    expected = [(s, v) for n, s, v in curve(2) if n == "charts/episodic_return"]
    scalars = events.Scalars("charts/episodic_return")
    assert [(e.step, pytest.approx(e.value, rel=1e-6)) for e in scalars] == expected
    assert len(list((target / "dqn-cartpole-0123456789ab-2").iterdir())) == 1
    one = harness(store.root, "export", "dqn-cartpole-f", "--tensorboard", str(tmp_path / "one"))
    assert one.returncode == 0 and [p.name for p in (tmp_path / "one").iterdir()] == ["dqn-cartpole-fedcba987654"]


# ---- 7. figures ------------------------------------------------------------------------------


def test_bootstrap_intervals_stay_inside_a_bounded_metric() -> None:
    from harness.analysis.curves import bootstrap_ci, mean_ci

    # three CartPole seeds near the 500 ceiling: a t interval runs above 500, the bootstrap cannot
    scores = np.array([[500.0, 20.0], [500.0, 0.0], [380.0, 10.0]])
    _, t_lo, t_hi = mean_ci(scores)
    assert t_hi[0] > 500 and t_lo[1] < 0
    mean, lo, hi = bootstrap_ci(scores)
    assert (
        (lo >= scores.min(axis=0)).all()
        and (hi <= scores.max(axis=0)).all()
        and (lo <= mean).all()
        and (mean <= hi).all()
    )
    assert np.array_equal(bootstrap_ci(scores)[1], lo)  # seeded: the same figure every time


def _svg_text(path: Path) -> str:
    """The text of an SVG written with svg.fonttype none, lines of a wrapped title joined by spaces."""
    return " ".join(re.findall(r">([^<>]+)</text>", path.read_text()))


def test_plot_titles_say_n_and_smoothing_and_one_seed_has_no_interval(store: LocalStore, tmp_path: Path) -> None:
    rc = tmp_path / "matplotlibrc"
    rc.write_text("svg.fonttype: none\n")  # text stays text in the SVG, so the test can read it
    svg = tmp_path / "one.svg"
    done = harness(store.root, "plot", "dqn-cartpole-f", "--out", str(svg), "--smooth", "3", MATPLOTLIBRC=str(rc))
    assert done.returncode == 0, done.stderr
    assert "one seed only" in done.stderr
    text = _svg_text(svg)
    assert "one seed per curve, no confidence interval (rolling mean over 3 points)" in text
    many = tmp_path / "many.svg"
    done = harness(
        store.root, "plot", "toy-train", "--metric", "charts/episodic_return", "--out", str(many), MATPLOTLIBRC=str(rc)
    )
    assert done.returncode == 0, done.stderr
    # two seeds: a bootstrap would have three distinct resamples; the band is their range, said so
    assert "mean and range of 2 seeds, too few for a confidence interval (no smoothing)" in _svg_text(many)
    assert "two seeds only for toy-train: the band is their range" in done.stderr
    assert "environment steps" in _svg_text(many)


def test_aggregates_that_need_more_runs_are_refused(store: LocalStore, tmp_path: Path) -> None:
    figure = tmp_path / "profiles.png"
    done = harness(store.root, "compare", "dqn-cartpole-f", "--profiles", str(figure))
    assert done.returncode == 2 and not figure.exists()
    assert done.stderr.splitlines() == [
        "error: --profiles needs at least 2 runs per group and environment (toy-train has 1); select more seeds"
    ]
    improvement = harness(store.root, "compare", "dqn-cartpole-f", "--improvement")
    assert improvement.returncode == 2 and "--improvement needs at least 2 runs" in improvement.stderr


def test_the_reproduction_figure_has_the_verdict_run_ids_and_labelled_axes(store: LocalStore, tmp_path: Path) -> None:
    import matplotlib

    from harness.reproduce.compare import compare_runs, plot_comparison

    a, b = store.run_dir("dqn-cartpole-0123456789ab"), store.run_dir("dqn-cartpole-0123456789ab-2")
    verdict = compare_runs(a, b, None)
    with matplotlib.rc_context({"svg.fonttype": "none"}):  # text stays text, so the test can read it
        out = plot_comparison(a, b, tmp_path / "comparison.svg", verdict=verdict)
    text = out.read_text()
    assert f"verdict: {verdict.verdict}" in text
    assert "dqn-cartpole-0123456789ab reproduced as dqn-cartpole-0123456789ab-2" in text
    assert "charts/episodic_return: differs" in text and ">step<" in text


# ---- 6. the Hub page -------------------------------------------------------------------------

LOAD_DEFAULT = """
import json, sys
import datasets
table = datasets.load_dataset(sys.argv[1], cache_dir=sys.argv[2])["train"]
print(json.dumps({"rows": table.num_rows, "columns": table.column_names, "smoke": list(table["smoke"]),
                  "lr": list(table["param_lr"]), "verdicts": list(table["reproduction_verdict"]),
                  "run_ids": list(table["run_id"])}))
"""


def test_publish_makes_a_card_and_index_that_load_dataset_reads_with_no_config(
    store: LocalStore, tmp_path: Path
) -> None:
    smoke = store.load("dqn-cartpole-0123456789ab")
    smoke["smoke"] = True
    store.save(smoke)
    reproduction = store.load("dqn-cartpole-0123456789ab-2")
    reproduction.update(
        reproduces="dqn-cartpole-fedcba987654", reproduction_verdict="identical", started_at="2026-01-02T00:00:00Z"
    )
    store.save(reproduction)
    with HubServer(tmp_path / "hub", token=TOKEN) as hub:
        env = {"HF_TOKEN": TOKEN, "HF_ENDPOINT": hub.url}
        first = harness(
            store.root,
            "publish",
            "dqn-cartpole-f",
            "--repo",
            HUB_REPO,
            "--license",
            "cc-by-4.0",
            "--pretty-name",
            "DQN on CartPole, reproduced",
            "--json",
            **env,
        )
        assert first.returncode == 0, first.stderr
        assert json.loads(first.stdout)["published"] == ["dqn-cartpole-fedcba987654"]
        second = harness(
            store.root,
            "publish",
            "dqn-cartpole-0123456789ab",
            "dqn-cartpole-0123456789ab-2",
            "--repo",
            HUB_REPO,
            "--license",
            "cc-by-4.0",
            "--pretty-name",
            "DQN on CartPole, reproduced",
            "--json",
            **env,
        )
        assert second.returncode == 0, second.stderr
        commit = json.loads(second.stdout)["commit"]

        repo = RepoRef("dataset", HUB_REPO)
        tree = hub.storage.commit(repo, commit)["tree"]
        assert "figures/learning_curves.png" in tree  # in the same commit as the runs
        card = hub.storage.blob_path(tree["README.md"]["sha256"]).read_text()
        from huggingface_hub import DatasetCard

        data = DatasetCard(card).data
        assert data.license == "cc-by-4.0" and data.pretty_name == "DQN on CartPole, reproduced"
        assert {"config_name": "runs", "data_files": "runs.parquet", "default": True} in data.configs
        assert "a toy run for tests" in card and "![learning curves](figures/learning_curves.png)" in card
        assert f"harness reproduce {HUB_REPO}/dqn-cartpole-fedcba987654" in card
        assert "| `dqn-cartpole-0123456789ab-2` |" in card and "identical" in card
        index = pq.read_table(hub.storage.blob_path(tree["runs.parquet"]["sha256"]))
        assert {
            "param_lr",
            "param_learning_rate_of_the_q_network",
            "smoke",
            "reproduction_verdict",
            "host_cpu_model",
            "accelerator",
        } <= set(index.column_names)
        assert index.schema.field("param_lr").type == "double" and index.schema.field("smoke").type == "bool"

        pulled = harness(tmp_path / "fresh", "pull", HUB_REPO, "--json", **env)
        assert pulled.returncode == 0, pulled.stderr
        assert sorted(r["run_id"] for r in json.loads(pulled.stdout)) == sorted(index.column("run_id").to_pylist())

        loaded = subprocess.run(
            [sys.executable, "-c", LOAD_DEFAULT, HUB_REPO, str(tmp_path / "cache")],
            capture_output=True,
            text=True,
            timeout=180,
            env={**os.environ, **env},
        )
        assert loaded.returncode == 0, loaded.stderr[-2000:]
        rows = json.loads(loaded.stdout.strip().splitlines()[-1])
    assert rows["rows"] == 3 and "param_lr" in rows["columns"]
    by_id = dict(zip(rows["run_ids"], zip(rows["smoke"], rows["lr"], rows["verdicts"])))
    assert by_id["dqn-cartpole-0123456789ab"] == (True, 0.001, None)
    assert by_id["dqn-cartpole-0123456789ab-2"] == (False, 0.001, "identical")
    assert by_id["dqn-cartpole-fedcba987654"] == (False, 0.002, None)


# ---- 9. distribution name --------------------------------------------------------------------


def test_the_distribution_name_is_not_pypis_harness() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert project["name"] == "harness-repro" and project["scripts"]["harness"] == "harness.cli:main"
    done = harness(ROOT / "no-store", "--version")
    assert done.returncode == 0 and done.stdout.strip() == f"harness, version {project['version']}"


# ---- with the real engine: live progress, logs -f, run/reproduce --json, gc ------------------


@pytest.mark.docker
def test_a_piped_run_prints_plain_progress_lines_and_logs_follows_it(noop_image, tmp_path: Path) -> None:
    home = tmp_path / "store"
    env = {**os.environ, "HARNESS_HOME": str(home), "CI": "1"}
    run = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "harness",
            "run",
            "manifests/noop.yaml",
            "--param",
            "mode=sleep",
            "--param",
            "seconds=6",
            "--progress-every",
            "1",
        ],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        deadline = time.time() + 120
        runs = home / "runs"
        while time.time() < deadline and not (runs.is_dir() and any(runs.glob("*/record.json"))):
            time.sleep(0.2)
        (run_dir,) = [p.parent for p in runs.glob("*/record.json")]
        follow = harness(home, "logs", "-f", run_dir.name[:8], "--interval", "1", timeout=120, CI="1")
        out, err = run.communicate(timeout=120)
    finally:
        run.kill()
    assert run.returncode == 0, err
    lines = out.splitlines()
    progress = [line for line in lines if line.startswith("[progress] ")]
    assert len(progress) >= 3, out
    assert all(re.match(rf"\[progress\] {run_dir.name}: \d+:\d\d elapsed, ", line) for line in progress)
    assert any(re.search(r"step \d+", line) for line in progress)
    assert "\r" not in out and "\x1b" not in out  # plain lines, never redrawn
    assert lines[-1].startswith(f"{run_dir.name}: completed in ")

    assert follow.returncode == 0, follow.stderr
    assert "[progress] " in follow.stdout and "\r" not in follow.stdout
    assert re.search(rf"{run_dir.name}: completed in \d+:\d\d; step \d+", follow.stdout.splitlines()[-1])


def test_progress_has_an_eta_when_the_params_say_how_many_steps(tmp_path: Path) -> None:
    from harness.run.progress import RunProgress, total_steps
    from harness.store.layout import RunLayout

    layout = RunLayout(tmp_path)
    layout.out.mkdir()
    progress = RunProgress(
        "r", layout, "charts/episodic_return", None, total_steps({"total_timesteps": 100_000}), started=1000.0
    )
    with open(layout.out / "metrics.jsonl", "w") as handle:
        handle.write(json.dumps({"name": "charts/episodic_return", "step": 10_000, "value": 20.0}) + "\n")
    progress.poll(now=1010.0)
    with open(layout.out / "metrics.jsonl", "a") as handle:
        handle.write(json.dumps({"name": "charts/episodic_return", "step": 30_000, "value": 95.5}) + "\n")
    snapshot = progress.poll(now=1020.0)
    assert snapshot.line() == "r: 0:20 elapsed, step 30,000/100,000 (30%), charts/episodic_return 95.5, ETA 0:35"


def probe_project(root: Path, recipe: str) -> Path:
    """A project with the noop recipe under another name, so that rebuilding or removing its images
    leaves the session's images (and other checkouts sharing the engine) alone; manifest manifests/<recipe>.yaml."""
    import shutil

    shutil.copytree(ROOT / "images" / "noop", root / "images" / recipe)
    (root / "lockfiles").mkdir()
    shutil.copy(ROOT / "lockfiles" / "noop.txt", root / "lockfiles" / f"{recipe}.txt")
    (root / "manifests").mkdir()
    text = (ROOT / "manifests" / "noop.yaml").read_text()
    text = text.replace("images/noop", f"images/{recipe}").replace("lockfiles/noop.txt", f"lockfiles/{recipe}.txt")
    (root / "manifests" / f"{recipe}.yaml").write_text(text)
    return root


def _remove_images(client: Any, recipe: str) -> None:
    for image in client.images.list(filters={"label": f"org.harness.recipe={recipe}"}):
        try:
            client.images.remove(image.id, force=True)
        except Exception:  # noqa: BLE001 — best-effort cleanup
            pass


@pytest.mark.docker
def test_run_and_reproduce_print_json(base_image, tmp_path: Path) -> None:
    from harness.runtime.engine import docker_client

    project = probe_project(tmp_path / "project", "uxprobe")
    home = tmp_path / "store"
    try:
        built = harness(home, "build", "manifests/uxprobe.yaml", "--json", cwd=project)
        assert built.returncode == 0, built.stderr
        assert json.loads(built.stdout)["tag"].startswith("harness/uxprobe:")
        ran = harness(home, "run", "manifests/uxprobe.yaml", "--json", cwd=project)
        assert ran.returncode == 0, ran.stderr
        result = json.loads(ran.stdout)
        assert result["status"] == "completed" and result["primary_metric"] == "probe/value" and not result["skipped"]
        again = harness(home, "run", "manifests/uxprobe.yaml", "--json", cwd=project)
        assert json.loads(again.stdout)["skipped"] is True

        reproduced = harness(home, "reproduce", result["run_id"][:8], "--out", str(tmp_path / "out"), "--json")
        assert reproduced.returncode == 0, reproduced.stderr[-3000:]
        verdict = json.loads(reproduced.stdout)
        assert verdict["original"] == result["run_id"] and verdict["verdict"] == "identical"
        assert Path(verdict["figure"]).is_file() and Path(verdict["verdict_file"]).is_file()
    finally:
        _remove_images(docker_client(timeout=600), "uxprobe")


FOREIGN_DOCKERFILE = "FROM harness/base:bookworm\nLABEL made.by=someone-else\nRUN echo {n} > /marker\n"


@pytest.mark.docker
def test_gc_removes_the_harness_leftovers_and_never_a_foreign_image(base_image, tmp_path: Path) -> None:
    import io

    from harness.runtime.engine import docker_client

    client = docker_client(timeout=600)
    project = probe_project(tmp_path / "project", "gcprobe")
    home = tmp_path / "store"

    built = []
    for version in (1, 2):  # the recipe changes: the first image is no longer what the manifest names
        (project / "images" / "gcprobe" / "workload" / "version.txt").write_text(f"{version}\n")
        # Docker's builder: it is the one that leaves a dangling builder stage for gc to find
        done = harness(home, "build", "manifests/gcprobe.yaml", "--quiet", "--no-reproducible", cwd=project)
        assert done.returncode == 0, done.stderr
        built.append(done.stdout.split()[0])
    old, current = built
    foreign_tagged = client.images.build(
        fileobj=io.BytesIO(FOREIGN_DOCKERFILE.format(n=1).encode()), tag="harness/foreign-gc-test:1", rm=True
    )[0]
    foreign_dangling = client.images.build(fileobj=io.BytesIO(FOREIGN_DOCKERFILE.format(n=2).encode()), rm=True)[0]
    child = client.images.build(fileobj=io.BytesIO(f"FROM {current}\nRUN echo child > /child\n".encode()), rm=True)[0]
    foreign = {foreign_tagged.id, foreign_dangling.id, child.id}
    try:
        dry = harness(home, "gc", "--dry-run", "--json", cwd=project)
        assert dry.returncode == 0, dry.stderr
        listed = json.loads(dry.stdout)["images"]
        assert not foreign & {i["id"] for i in listed}, "a foreign image was listed"
        assert client.images.get(old)  # a dry run removes nothing
        outside = harness(home, "gc", "--dry-run", "--json", cwd=tmp_path)  # no manifests/: tagged images stay
        assert outside.returncode == 0 and "no manifests/ here" in outside.stderr
        assert not [i for i in json.loads(outside.stdout)["images"] if i["reason"] == "unreferenced"]

        done = harness(home, "gc", "--recipe", "gcprobe", "--json", cwd=project)
        assert done.returncode == 0, done.stderr
        result = json.loads(done.stdout)
        removed = [i for i in result["images"] if i["removed"]]
        assert old in {t for i in removed for t in i["tags"]}
        assert any(i["reason"] == "dangling builder stage" and i["recipe"] == "gcprobe" for i in removed)
        assert result["reclaimed_bytes"] is not None and result["reclaimed_bytes"] >= 0
        assert old not in {t for image in client.images.list() for t in image.tags}
        client.images.get(current)  # what the manifest names stays
        for image_id in foreign:
            client.images.get(image_id)  # raises if gc removed it
        text = harness(home, "gc", "--recipe", "gcprobe", "--dry-run", cwd=project)
        assert "would come back" in text.stdout
    finally:
        for image in (child.id, foreign_dangling.id, "harness/foreign-gc-test:1"):
            try:
                client.images.remove(image, force=True)
            except Exception:  # noqa: BLE001 — best-effort cleanup
                pass
        _remove_images(client, "gcprobe")


def test_logs_follow_stops_when_the_harness_process_running_the_run_is_gone(store: LocalStore) -> None:
    import socket

    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    record = store.load("dqn-cartpole-fedcba987654")
    record.update(status="running", duration_s=None, owner={"pid": gone.pid, "hostname": socket.gethostname()})
    store.save(record)
    done = harness(store.root, "logs", "-f", "dqn-cartpole-f", timeout=60)
    assert done.returncode == 2
    assert done.stderr.splitlines()[-1] == (
        "error: run dqn-cartpole-fedcba987654: the harness process running it has ended; "
        "`harness recover` marks it interrupted"
    )
    assert "seed 3" in done.stdout  # the output so far was printed first


@pytest.mark.docker
def test_on_a_terminal_the_status_line_is_redrawn_in_place(noop_image, tmp_path: Path) -> None:
    import pty
    import select

    master, slave = pty.openpty()
    env = {k: v for k, v in os.environ.items() if k != "CI"}  # CI set means plain lines even on a terminal
    run = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "harness",
            "run",
            "manifests/noop.yaml",
            "--param",
            "mode=sleep",
            "--param",
            "seconds=4",
        ],
        cwd=ROOT,
        stdin=subprocess.DEVNULL,
        stdout=slave,
        stderr=subprocess.PIPE,
        env={**env, "HARNESS_HOME": str(tmp_path / "store"), "COLUMNS": "80"},
    )
    os.close(slave)
    output = b""
    while True:
        ready, _, _ = select.select([master], [], [], 120)
        if not ready:
            break
        try:
            chunk = os.read(master, 65536)
        except OSError:  # the child closed the terminal
            break
        if not chunk:
            break
        output += chunk
    os.close(master)
    assert run.wait(timeout=60) == 0, run.stderr.read() if run.stderr else ""
    text = output.decode(errors="replace")
    redraws = re.findall(r"\r\x1b\[K(\d+:\d\d elapsed[^\r\n]*)", text)
    assert len(redraws) >= 3, text
    assert any("step" in line for line in redraws) and all(len(line) <= 79 for line in redraws)
    between = text[text.index(redraws[0]) : text.index(redraws[-1])]
    assert "\n" not in between, "the status line is redrawn in place, not printed line after line"
    assert re.search(r"\r\x1b\[Knoop-[0-9a-f]{12}: completed in", text)
