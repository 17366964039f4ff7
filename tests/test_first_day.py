"""A researcher's first day (issue 24): third-party scripts run unmodified, smoke runs and runs of
another budget stay out of results, a published table is a target, small-seed statistics are said
plainly, and gc never removes an image a record names."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from harness.store.local import LocalStore
from tests.conftest import noop_variant

NOOP_COMMAND = (
    'command: [python, /workload/probe.py, --mode, "{mode}", --seconds, "{seconds}", --megabytes, '
    '"{megabytes}", --seed, "{seed}"]'
)
# what research code does: write next to where it starts, relative paths only
WRITE_RELATIVE = (
    "command: [python, -c, \"import os; os.makedirs('runs/exp', exist_ok=True); "
    "open('runs/exp/where.txt', 'w').write(os.getcwd())\"]"
)


def records(home: Path) -> list[dict]:
    return list(LocalStore(home).records())


@pytest.mark.docker
def test_a_script_writing_relative_paths_runs_in_the_captured_output_folder(noop_image, store_home, cli, tmp_path):
    manifest = noop_variant(tmp_path, NOOP_COMMAND, WRITE_RELATIVE)
    result = cli("run", manifest)
    assert result.returncode == 0, result.stderr
    (record,) = records(store_home)
    assert record["status"] == "completed"
    assert record["files"]["out/runs/exp/where.txt"]
    where = store_home / "runs" / record["run_id"] / "out" / "runs" / "exp" / "where.txt"
    assert where.read_text() == "/harness/out"


@pytest.mark.docker
def test_a_write_to_a_read_only_workdir_says_which_path_and_what_to_change(noop_image, store_home, cli, tmp_path):
    manifest = noop_variant(tmp_path, NOOP_COMMAND, WRITE_RELATIVE, extra="workdir: /workload\n")
    result = cli("run", manifest)
    assert result.returncode == 1
    (record,) = records(store_home)
    assert record["status"] == "failed"
    assert "read-only path ('runs')" in record["detail"] and "drop the manifest's workdir" in record["detail"]
    assert "read-only path ('runs')" in result.stdout + result.stderr


def test_the_process_runtime_starts_in_the_workdir_under_the_output_folder(store_home, cli, tmp_path):
    manifest = noop_variant(tmp_path, NOOP_COMMAND, WRITE_RELATIVE, extra="workdir: work\n")
    result = cli("run", manifest, "--runtime", "process")
    assert result.returncode == 0, result.stderr
    (record,) = records(store_home)
    out = store_home / "runs" / record["run_id"] / "out"
    assert (out / "work" / "runs" / "exp" / "where.txt").read_text() == str(out / "work")


def test_a_workdir_that_leaves_the_output_folder_is_refused(cli, tmp_path):
    manifest = noop_variant(tmp_path, extra="workdir: ../elsewhere\n")
    result = cli("validate", manifest)
    assert result.returncode == 2 and "workdir" in result.stderr and "Traceback" not in result.stderr


@pytest.fixture(scope="module")
def mixed_store(noop_image, tmp_path_factory):
    """A store with what a first day leaves: three full runs (seconds=5), a smoke run (seconds=1)
    and a run of another budget (seconds=3), all of the noop manifest."""
    from tests.conftest import REPO, run_cli

    home = tmp_path_factory.mktemp("mixed") / "store"
    env = {"HARNESS_HOME": str(home)}
    noop = str(REPO / "manifests" / "noop.yaml")
    for args in (
        ["--seed", "1", "--seed", "2", "--seed", "3"],
        ["--smoke", "--seed", "1"],
        ["--seed", "4", "--param", "seconds=3"],
    ):
        result = run_cli("run", noop, "--quiet", *args, env=env)
        assert result.returncode == 0, result.stderr
    return env


def test_analysis_leaves_smoke_runs_and_other_budgets_out_and_says_so(mixed_store, cli, tmp_path):
    compared = cli("compare", "noop", "--json", env=mixed_store)
    assert compared.returncode == 0, compared.stderr
    assert "left out 1 run of smoke tests (select them with smoke=true)" in compared.stderr
    assert "left out 1 run of noop with another budget than seconds=5 (select them with seconds=3)" in compared.stderr
    assert json.loads(compared.stdout)["cells"][0]["runs"] == 3
    figure = tmp_path / "curves.png"
    plotted = cli("plot", "noop", "--out", str(figure), env=mixed_store)
    assert plotted.returncode == 0 and "(3 runs" in plotted.stdout and "smoke=true" in plotted.stderr
    # asked for: only the smoke run; smoke=false is the default made explicit (other budgets still out)
    smoke = cli("compare", "noop", "smoke=true", "--json", env=mixed_store)
    assert smoke.returncode == 0 and json.loads(smoke.stdout)["cells"][0]["runs"] == 1
    full = cli("compare", "noop", "smoke=false", "--json", env=mixed_store)
    assert full.returncode == 0 and json.loads(full.stdout)["cells"][0]["runs"] == 3
    other = cli("compare", "noop", "seconds=3", "--json", env=mixed_store)
    assert other.returncode == 0 and json.loads(other.stdout)["cells"][0]["runs"] == 1
    listed = cli("ls", env=mixed_store)
    assert "smoke" in listed.stdout and "seconds=1" in listed.stdout and "seconds=3" in listed.stdout
    as_json = json.loads(cli("ls", "--json", env=mixed_store).stdout)
    assert sorted((r["smoke"], r["budget"]["seconds"]) for r in as_json) == [
        (False, 3),
        (False, 5),
        (False, 5),
        (False, 5),
        (True, 1),
    ]
