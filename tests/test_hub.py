"""publish / pull through the real huggingface_hub client against the test Hub (tests/hubserver)."""

from __future__ import annotations

import json
import logging
import os
import statistics
import subprocess
import sys

import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from harness.errors import HubError
from harness.store.hub import publish, pull
from harness.store.local import LocalStore
from tests.conftest import HUB_TOKEN, run_cli
from tests.hubserver import HubServer, RepoRef
from tests.hubserver.runs import curve, make_run

TOKEN = HUB_TOKEN
REPO = "lab/cartpole-results"


@pytest.fixture
def store(tmp_path, monkeypatch):
    """The local store runs are published from (also the default store, through HARNESS_HOME)."""
    monkeypatch.setenv("HARNESS_HOME", str(tmp_path / "origin"))
    return LocalStore(tmp_path / "origin")


def dataset_repo() -> RepoRef:
    return RepoRef("dataset", REPO)


def commits(hub: HubServer) -> list[str]:
    storage = hub.storage
    return [c["id"] for c in storage.history(dataset_repo(), storage.resolve(dataset_repo(), "main"))]


def test_publish_then_pull_into_an_empty_store(hub, store, tmp_path):
    make_run(store, "toy-aaa", seed=1)
    make_run(store, "toy-bbb", seed=2)

    result = publish(["toy-aaa", "toy-bbb"], REPO, endpoint=hub.url)

    assert result.commit is not None and result.published == ["toy-aaa", "toy-bbb"]
    assert len(commits(hub)) == 2  # the repo's initial commit + one commit for both runs
    tree = hub.storage.commit(dataset_repo(), result.commit)["tree"]
    assert {
        "README.md",
        "runs.parquet",
        "runs/toy-aaa/record.json",
        "runs/toy-aaa/context/Dockerfile",
        "runs/toy-bbb/metrics.parquet",
        "runs/toy-bbb/system.parquet",
    } <= set(tree)
    assert tree["runs/toy-aaa/metrics.parquet"]["lfs"] is True  # parquet goes through the LFS batch API

    empty = LocalStore(tmp_path / "fresh")
    pulled = pull(REPO, endpoint=hub.url, store=empty)

    assert pulled == ["toy-aaa", "toy-bbb"]
    for run_id in pulled:
        assert empty.verify(run_id) == []
        record = empty.load(run_id)
        assert record["pulled_from"] == {"repo": REPO, "revision": result.commit, "endpoint": hub.url}
        original = store.load(run_id)
        assert record["files"] == original["files"]
        assert (empty.run_dir(run_id) / "metrics.parquet").read_bytes() == (
            store.run_dir(run_id) / "metrics.parquet"
        ).read_bytes()
    assert not list(empty.root.glob(".pull-*")), "the staging folder is removed"


def test_pulled_runs_enter_the_stores_journal(hub, store, tmp_path):
    """A pulled run gets its journal entry as a run sealed in the store does: a cold index of the
    pulling store reads no run's metrics file, and its final values are those of the curve."""
    from harness.analysis import index as run_index
    from harness.store import journal

    rows = sorted(curve(3))  # by name and step, as the harness writes metrics.parquet
    make_run(store, "toy-ccc", seed=3, metrics=rows)
    publish(["toy-ccc"], REPO, endpoint=hub.url)
    fresh = LocalStore(tmp_path / "fresh")
    assert pull(REPO, endpoint=hub.url, store=fresh) == ["toy-ccc"]
    (entry,) = journal.read_journal(fresh.root)["toy-ccc"]
    assert entry.row["status"] == "completed" and entry.metrics_stamp
    index = run_index.refresh_index(fresh)
    assert journal.is_journal_part(index.column("metrics_part")[0].as_py())
    returns = [value for name, _, value in rows if name == "charts/episodic_return"]
    final = run_index.final_values(fresh, index, "charts/episodic_return", 10)
    assert final == {"toy-ccc": pytest.approx(statistics.fmean(returns[-10:]), rel=1e-12)}


@pytest.mark.parametrize("damage", ["garbage", "empty", "unsorted"])
def test_a_pulled_run_with_a_hostile_metrics_file_gets_no_journal_entry(hub, store, tmp_path, damage):
    """A repo can serve a metrics.parquet that matches its record's checksums and is still not what
    the harness writes: garbage bytes, an empty file, points out of order. The pull goes through,
    the run gets no journal entry (it is read from its files, as any run without one), nothing raises."""
    from harness.analysis import index as run_index
    from harness.store import journal

    make_run(store, "toy-ddd", seed=4, metrics=sorted(curve(4)))
    path = store.run_dir("toy-ddd") / "metrics.parquet"
    if damage == "garbage":
        path.write_bytes(b"PAR1" + os.urandom(5000) + b"PAR1")
    elif damage == "empty":
        path.write_bytes(b"")
    else:
        table = pq.read_table(path)
        pq.write_table(table.take(list(range(table.num_rows - 1, -1, -1))), path)
    store.seal(store.load("toy-ddd"))
    publish(["toy-ddd"], REPO, endpoint=hub.url)
    fresh = LocalStore(tmp_path / "fresh")
    assert pull(REPO, endpoint=hub.url, store=fresh) == ["toy-ddd"]
    assert "toy-ddd" not in journal.read_journal(fresh.root)
    if damage == "unsorted":
        index = run_index.refresh_index(fresh)
        assert not journal.is_journal_part(index.column("metrics_part")[0].as_py())


def test_runs_index_and_card(hub, store):
    make_run(store, "toy-aaa", seed=1)
    publish(["toy-aaa"], REPO, endpoint=hub.url)
    make_run(store, "toy-bbb", seed=2)
    publish(["toy-bbb"], REPO, endpoint=hub.url)

    storage = hub.storage
    tree = storage.commit(dataset_repo(), storage.resolve(dataset_repo(), "main"))["tree"]
    index = pq.read_table(storage.blob_path(tree["runs.parquet"]["sha256"])).to_pylist()
    assert [row["run_id"] for row in index] == ["toy-aaa", "toy-bbb"]  # the second publish kept the first row
    assert index[1]["seed"] == 2 and json.loads(index[1]["params"]) == {"lr": 0.001}
    assert json.loads(index[0]["hardware"])["host"]["cpu_model"] == "Test CPU"
    assert index[0]["primary_metric"] == "charts/episodic_return"
    assert index[0]["primary_last"] == store.load("toy-aaa")["metrics_summary"]["charts/episodic_return"]["last"]
    card = storage.blob_path(tree["README.md"]["sha256"]).read_text()
    assert "data_files: runs/*/metrics.parquet" in card and "data_files: runs.parquet" in card
    assert f"harness reproduce {REPO}/toy-bbb" in card


def test_second_publish_makes_no_commit(hub, store):
    make_run(store, "toy-aaa", seed=1)
    first = publish(["toy-aaa"], REPO, endpoint=hub.url)
    before = commits(hub)

    again = publish(["toy-aaa"], REPO, endpoint=hub.url)

    assert again.commit is None and again.unchanged == ["toy-aaa"] and again.published == []
    assert commits(hub) == before and before[0] == first.commit


LOAD_DATASETS = """
import json, sys
import datasets
repo, cache = sys.argv[1], sys.argv[2]
out = {}
for config in ("metrics", "runs", "system"):
    table = datasets.load_dataset(repo, config, cache_dir=cache)["train"]
    out[config] = {"rows": table.num_rows, "columns": sorted(table.column_names),
                   "run_ids": sorted(set(table["run_id"]))}
print(json.dumps(out))
"""


def test_load_dataset_reads_the_published_parquet(hub, store, tmp_path):
    make_run(store, "toy-aaa", seed=1)
    make_run(store, "toy-bbb", seed=2)
    publish(["toy-aaa", "toy-bbb"], REPO, endpoint=hub.url)

    # A fresh interpreter: datasets and huggingface_hub read HF_ENDPOINT when they are imported.
    done = subprocess.run(
        [sys.executable, "-c", LOAD_DATASETS, REPO, str(tmp_path / "datasets-cache")],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "HF_ENDPOINT": hub.url},
    )
    assert done.returncode == 0, done.stderr[-2000:]
    loaded = json.loads(done.stdout.strip().splitlines()[-1])

    local_rows = sum(pq.read_table(store.run_dir(r) / "metrics.parquet").num_rows for r in ("toy-aaa", "toy-bbb"))
    assert loaded["metrics"]["rows"] == local_rows
    assert loaded["metrics"]["columns"] == ["name", "run_id", "step", "value", "wall_time"]
    assert loaded["metrics"]["run_ids"] == ["toy-aaa", "toy-bbb"]
    assert loaded["runs"]["rows"] == 2 and loaded["runs"]["run_ids"] == ["toy-aaa", "toy-bbb"]
    assert loaded["system"]["rows"] == 10


def test_connection_cut_during_commit_leaves_nothing_then_retry_succeeds(hub, store):
    make_run(store, "toy-aaa", seed=1)
    hub.faults.drop_commits = 1

    with pytest.raises(HubError, match="connection failed"):
        publish(["toy-aaa"], REPO, endpoint=hub.url)

    storage = hub.storage
    head_tree = storage.commit(dataset_repo(), storage.resolve(dataset_repo(), "main"))["tree"]
    assert not [p for p in head_tree if p.startswith("runs/")], "no partial run is visible"
    assert len(commits(hub)) == 1

    result = publish(["toy-aaa"], REPO, endpoint=hub.url)
    assert result.commit is not None and len(commits(hub)) == 2


def test_wrong_token_is_a_clear_error(hub, store):
    make_run(store, "toy-aaa", seed=1)
    with pytest.raises(HubError, match=r"refused the token .*401"):
        publish(["toy-aaa"], REPO, endpoint=hub.url, token="hf_wrong")
    assert not hub.storage.exists(dataset_repo())


def test_missing_token_is_a_clear_error(hub, store, monkeypatch, tmp_path):
    from huggingface_hub import constants

    monkeypatch.delenv("HF_TOKEN")
    monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(tmp_path / "no-token"))
    make_run(store, "toy-aaa", seed=1)
    with pytest.raises(HubError, match="no Hugging Face token"):
        publish(["toy-aaa"], REPO, endpoint=hub.url)


def test_tampered_file_on_the_server_is_refused(hub, store, tmp_path):
    make_run(store, "toy-aaa", seed=1)
    publish(["toy-aaa"], REPO, endpoint=hub.url)
    original = (store.run_dir("toy-aaa") / "logs/output.log").read_bytes()
    hub.storage.tamper(dataset_repo(), "runs/toy-aaa/logs/output.log", original.replace(b"done", b"DONE"))

    empty = LocalStore(tmp_path / "fresh")
    with pytest.raises(HubError, match="checksum mismatch logs/output.log"):
        pull(f"{REPO}/toy-aaa", endpoint=hub.url, store=empty)
    assert not empty.runs_dir.exists() or not any(empty.runs_dir.iterdir())


def test_extra_and_missing_files_are_refused(hub, store, tmp_path):
    make_run(store, "toy-aaa", seed=1)
    publish(["toy-aaa"], REPO, endpoint=hub.url)
    hub.storage.force_commit(dataset_repo(), {"runs/toy-aaa/out/payload.sh": b"rm -rf /\n"})

    empty = LocalStore(tmp_path / "fresh")
    with pytest.raises(HubError, match="extra out/payload.sh"):
        pull(REPO, endpoint=hub.url, store=empty)
    assert not empty.exists("toy-aaa")


def test_path_escape_in_a_crafted_repo_is_refused(hub, store, tmp_path):
    make_run(store, "toy-aaa", seed=1)
    publish(["toy-aaa"], REPO, endpoint=hub.url)
    hub.storage.force_commit(dataset_repo(), {"runs/toy-aaa/../../escaped.txt": b"outside\n"})

    empty = LocalStore(tmp_path / "fresh")
    with pytest.raises(HubError, match="path outside"):
        pull(REPO, endpoint=hub.url, store=empty)
    assert not empty.exists("toy-aaa")
    assert not list(tmp_path.rglob("escaped.txt"))


def test_pull_of_an_older_revision_by_commit_sha(hub, store, tmp_path):
    make_run(store, "toy-aaa", seed=1)
    first = publish(["toy-aaa"], REPO, endpoint=hub.url)
    make_run(store, "toy-bbb", seed=2)
    publish(["toy-bbb"], REPO, endpoint=hub.url)

    empty = LocalStore(tmp_path / "fresh")
    assert pull(REPO, revision=first.commit, endpoint=hub.url, store=empty) == ["toy-aaa"]
    assert empty.load("toy-aaa")["pulled_from"]["revision"] == first.commit
    with pytest.raises(HubError, match="has no run 'nope'"):
        pull(f"{REPO}/nope", endpoint=hub.url, store=empty)


def test_token_never_reaches_files_or_output(hub, store, tmp_path, capfd, caplog):
    from harness.cli import cli

    caplog.set_level(logging.DEBUG)
    make_run(store, "toy-aaa", seed=1)
    runner = CliRunner()
    env = {"HARNESS_HOME": str(store.root)}
    published = runner.invoke(cli, ["publish", "toy-aaa", "--repo", REPO, "--endpoint", hub.url], env=env)
    assert published.exit_code == 0, published.output
    pulled = runner.invoke(cli, ["pull", REPO, "--endpoint", hub.url], env={"HARNESS_HOME": str(tmp_path / "fresh")})
    assert pulled.exit_code == 0, pulled.output
    bad = runner.invoke(
        cli, ["publish", "toy-aaa", "--repo", REPO, "--endpoint", hub.url], env={**env, "HF_TOKEN": TOKEN + "x"}
    )
    assert bad.exit_code != 0

    captured = capfd.readouterr()
    texts = [published.output, pulled.output, bad.output, str(bad.exception), captured.out, captured.err, caplog.text]
    assert all(TOKEN not in text for text in texts)
    for root in (tmp_path / "hub", store.root, tmp_path / "fresh"):
        for path in root.rglob("*"):
            if path.is_file():
                assert TOKEN.encode() not in path.read_bytes(), path


def test_a_run_containing_the_token_is_not_published(hub, store):
    make_run(store, "toy-aaa", seed=1, extra_files={"out/leak.txt": f"token={TOKEN}\n".encode()})
    with pytest.raises(HubError, match="contains your Hub token"):
        publish(["toy-aaa"], REPO, endpoint=hub.url)
    assert len(commits(hub)) == 1


def test_a_run_that_does_not_match_its_record_is_not_published(hub, store):
    make_run(store, "toy-aaa", seed=1)
    (store.run_dir("toy-aaa") / "logs/output.log").write_text("edited after the run\n")
    with pytest.raises(HubError, match="does not match its record"):
        publish(["toy-aaa"], REPO, endpoint=hub.url)


def test_cli_bad_input_exits_2():
    done = run_cli("pull", "not-a-repo-id", timeout=60)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == ["error: 'not-a-repo-id': write org/name or org/name/<run_id>"]


def test_reproduce_refuses_the_process_runtime_for_pulled_runs(hub, store, tmp_path):
    make_run(store, "toy-aaa", seed=1)
    publish(["toy-aaa"], REPO, endpoint=hub.url)
    fresh = LocalStore(tmp_path / "fresh")
    pull(REPO, endpoint=hub.url, store=fresh)

    for target in (f"{REPO}/toy-aaa", "toy-aaa"):
        done = run_cli(
            "reproduce",
            target,
            "--runtime",
            "process",
            "--endpoint",
            hub.url,
            env={"HARNESS_HOME": str(fresh.root)},
            timeout=60,
        )
        assert done.returncode == 2, done.stderr
        assert "--trust-code" in done.stderr and "Traceback" not in done.stderr
    assert [r["run_id"] for r in fresh.records()] == ["toy-aaa"], "nothing was run"


def test_card_shows_the_across_seed_summary_with_env_and_budget(hub, store):
    scores = {}
    for seed in (1, 2, 3):
        record = make_run(store, f"toy-s{seed}", seed=seed)
        record["params"] = {"lr": 0.001, "env_id": "CartPole-v1", "total_timesteps": 5000}
        record["budget"] = {"total_timesteps": 5000}
        record["summary_last_n"] = 10
        store.seal(record)
        scores[seed] = record["metrics_summary"]["charts/episodic_return"]["mean_last_n"]
    smoke = make_run(store, "toy-smoke", seed=4)
    smoke.update(smoke=True, budget={"total_timesteps": 100})
    store.seal(smoke)
    publish(["toy-s1", "toy-s2", "toy-s3", "toy-smoke"], REPO, endpoint=hub.url)

    tree = hub.storage.commit(dataset_repo(), hub.storage.resolve(dataset_repo(), "main"))["tree"]
    card = hub.storage.blob_path(tree["README.md"]["sha256"]).read_text()
    values = list(scores.values())
    mean, sd = statistics.fmean(values), statistics.stdev(values)
    assert "## Results across seeds" in card
    row = next(line for line in card.splitlines() if line.startswith("| toy-train | CartPole-v1 |"))
    assert row.split(" | ")[2:] == [
        "total_timesteps=5000",
        "charts/episodic_return",
        "mean of last 10",
        f"{mean:.6g} ± {sd:.4g}",
        "3 |",
    ], row
    assert "not a standard error" in card
    summary = card.split("## Results across seeds")[1].split("## Runs")[0]
    assert "total_timesteps=100" not in summary  # the smoke run is left out of the summary
    runs = card.split("## Runs")[1]
    assert f"| {scores[1]:.6g} |" in runs  # each run's per-seed score, not one episode's return
    index = pq.read_table(hub.storage.blob_path(tree["runs.parquet"]["sha256"])).to_pylist()
    first = next(row for row in index if row["run_id"] == "toy-s1")
    assert (first["env"], json.loads(first["budget"]), first["score"]) == (
        "CartPole-v1",
        {"total_timesteps": 5000},
        scores[1],
    )


def test_card_summary_survives_hostile_rows_from_the_hub():
    from harness.store.card import card_text

    base = {"name": "x", "status": "completed", "primary_metric": "m", "score_statistic": "final", "params": "{}"}
    rows = [
        {**base, "run_id": "a", "score": 1.0, "budget": "not json", "env": "E|nv\nX"},
        {**base, "run_id": "b", "score": 3.0, "budget": "[1, 2]", "env": "E|nv\nX"},
        {**base, "run_id": "c", "score": None, "budget": None, "env": None},
    ]
    card = card_text("org/repo", rows, has_system=False, figure=None)
    summary = card.split("## Results across seeds")[1].split("## Runs")[0]
    assert "| x | E\\|nv X |  | m | final | 2 ± 1.414 | 2 |" in summary
