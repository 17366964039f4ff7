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
