"""``harness reproduce`` over seeds (issue 12): the published group of a configuration is re-run
(the same seeds, more, or new ones) and judged as a group. Real Docker engine, real image builds,
the project's test Hub and the CLI in a subprocess."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from harness.store.local import LocalStore
from tests.conftest import HUB_TOKEN, noop_variant

pytestmark = [pytest.mark.docker, pytest.mark.slow]

REPO = "lab/noop-seeds"


def in_store(cli, home: Path, **env: str):
    """``cli`` with ``HARNESS_HOME`` set to ``home`` (and ``env``)."""

    def call(*args: str):
        return cli(*args, env={"HARNESS_HOME": str(home), **env})

    return call


def test_bad_seed_counts_are_one_line_and_run_nothing(store_home, cli):
    for value in ("0", "-2", "many", "2.5"):
        done = cli("reproduce", f"{REPO}/noop-aaaaaaaaaaaa", "--seeds", value)
        assert done.returncode == 2, done.stderr
        assert done.stderr.strip().splitlines() == [f"error: --seeds {value}: give a positive number of seeds or auto"]
    assert not (store_home / "runs").exists()


def test_published_seeds_rerun_identical_and_new_seeds_inconclusive(noop_image, tmp_path, hub, cli):
    manifest = noop_variant(tmp_path / "project", "seeds: [0]", "seeds: [0, 1]")
    origin = in_store(cli, tmp_path / "origin")
    ran = origin("run", manifest, "--param", "seconds=1")
    assert ran.returncode == 0, ran.stderr[-2000:]
    published = sorted(LocalStore(tmp_path / "origin").records(), key=lambda r: r["seed"])
    assert [r["seed"] for r in published] == [0, 1]
    ids = [r["run_id"] for r in published]
    done = origin("publish", *ids, "--repo", REPO)
    assert done.returncode == 0, done.stderr[-2000:]

    # The manifest lists two seeds, so the whole repo is pulled and both are re-run: bit for bit.
    fresh_home = tmp_path / "fresh"
    fresh = in_store(cli, fresh_home, HARNESS_PROGRESS_INTERVAL="0.5")
    same = fresh("reproduce", f"{REPO}/{ids[0]}", "--out", str(tmp_path / "same"))
    assert same.returncode == 0, same.stdout[-3000:] + same.stderr[-3000:]
    assert "building image: step " in same.stdout + same.stderr  # the rebuild is never silent
    assert "verdict: identical" in same.stdout and "environment: environment identical" in same.stdout
    assert "2 seeds: 0, 1" in same.stderr
    store = LocalStore(fresh_home)
    again = [r for r in store.records() if r.get("reproduces")]
    assert sorted((r["seed"], r["reproduces"]) for r in again) == [(0, ids[0]), (1, ids[1])]
    assert {r["reproduction_verdict"] for r in again} == {"identical"}
    assert all(r["reproduction"]["environment"]["differences"] == [] for r in again)
    verdict = json.loads((tmp_path / "same" / "verdict.json").read_text())
    assert verdict["verdict"] == "identical" and verdict["first_difference"] is None
    assert [p["verdict"] for p in verdict["pairs"]] == ["identical", "identical"]
    assert (tmp_path / "same" / "comparison.png").stat().st_size > 10_000

    # Two new seeds a side: never decisive; exit 3 with the seeds that would settle it.
    new = fresh("reproduce", f"{REPO}/{ids[0]}", "--new-seeds", "--out", str(tmp_path / "new"), "--publish")
    assert new.returncode == 3, new.stdout[-3000:] + new.stderr[-3000:]
    assert "verdict: inconclusive" in new.stdout and "seeds per side for 80 %:" in new.stdout
    assert "2 new seeds: 2, 3" in new.stderr
    verdict = json.loads((tmp_path / "new" / "verdict.json").read_text())
    assert verdict["verdict"] == "inconclusive" and verdict["seeds"] == "new" and verdict["pairs"] == []
    assert verdict["original_runs"] == ids and len(verdict["reproduction_runs"]) == 2
    assert verdict["equivalence"]["seeds_needed"] >= 3 and len(verdict["curves"]["steps"]) == 5
    assert (tmp_path / "new" / "comparison.png").stat().st_size > 10_000
    tree = hub.storage.commit(hub_repo(), hub.storage.resolve(hub_repo(), "main"))["tree"]
    assert all(f"runs/{run}/record.json" in tree for run in verdict["reproduction_runs"])
    for output in (ran, done, same, new):
        assert HUB_TOKEN not in output.stdout + output.stderr


def test_seeds_auto_from_the_local_store_with_new_seeds(noop_image, tmp_path, store_home, cli):
    # probe/value is 0.5 * step + seed: the groups differ by 3 and the stated margin is 50, so the
    # published spread plans the minimum of 3 seeds and the verdict is consistent.
    manifest = noop_variant(tmp_path, "seeds: [0]", "seeds: [0, 1, 2]")
    text = (
        Path(manifest)
        .read_text()
        .replace("expect: {deterministic: true}", "expect: {deterministic: false, margin: 50}")
    )
    Path(manifest).write_text(text)
    ran = cli("run", manifest, "--param", "seconds=1")
    assert ran.returncode == 0, ran.stderr[-2000:]
    published = sorted(LocalStore(store_home).records(), key=lambda r: r["seed"])

    done = cli("reproduce", published[1]["run_id"], "--seeds", "auto", "--new-seeds", "--out", str(tmp_path / "auto"))
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "3 seeds give" in done.stderr and "verdict: consistent" in done.stdout
    verdict = json.loads((tmp_path / "auto" / "verdict.json").read_text())
    assert verdict["original_runs"] == [published[i]["run_id"] for i in (1, 0, 2)]
    assert verdict["original_scores"] == [2.0, 1.0, 3.0] and verdict["reproduction_scores"] == [4.0, 5.0, 6.0]
    assert verdict["equivalence"]["margin"] == 50 and verdict["seeds"] == "new"


def hub_repo():
    from tests.hubserver import RepoRef

    return RepoRef("dataset", REPO)


DQN_REPO = "lab/dqn-seeds"
# Smoke-sized DQN (3,000 steps, 2,000 of them learning): the return is still a random policy's, so
# the metric is the Q-value estimate over the last 500 steps, which the learning rate sets and the
# seed barely moves (SD about 3 % at learning rate 1e-3). See docs/hub.md, "A real demonstration".
DQN_EXPECT = (
    "expect: {deterministic: false, ignore: [charts/SPS], metric: losses/q_values, last_n: 5, margin_relative: 0.1}"
)


def dqn_variant(target: Path) -> str:
    from tests.conftest import REPO as ROOT
    from tests.conftest import copy_project

    copy_project(target, "images/rl", "lockfiles/rl.txt")
    text = (ROOT / "manifests" / "dqn-cartpole.yaml").read_text()
    for old, new in (
        ("learning_rate: 2.5e-4", "learning_rate: 1.0e-3"),
        ("seeds: [1]", "seeds: [1, 2, 3]"),
        ("expect: {deterministic: true, ignore: [charts/SPS]}", DQN_EXPECT),
    ):
        assert old in text
        text = text.replace(old, new)
    manifest = target / "manifests" / "dqn-seeds.yaml"
    manifest.write_text(text)
    return str(manifest)


def test_dqn_new_seeds_consistent_changed_learning_rate_diverged_two_seeds_inconclusive(rl_image, tmp_path, hub, cli):
    manifest = dqn_variant(tmp_path / "project")
    origin_home = tmp_path / "origin"
    origin = in_store(cli, origin_home)
    for extra in ((), ("--param", "learning_rate=1e-05")):
        ran = origin("run", manifest, "--smoke", "--quiet", *extra)
        assert ran.returncode == 0, ran.stderr[-3000:]
    runs = sorted(LocalStore(origin_home).records(), key=lambda r: (-r["params"]["learning_rate"], r["seed"]))
    published = [r["run_id"] for r in runs if r["params"]["learning_rate"] == 1e-3]
    slow = [r["run_id"] for r in runs if r["params"]["learning_rate"] == 1e-5]
    assert len(published) == len(slow) == 3
    done = origin("publish", *published, *slow, "--repo", DQN_REPO)
    assert done.returncode == 0, done.stderr[-3000:]

    fresh_home = tmp_path / "fresh"
    fresh = in_store(cli, fresh_home)
    new = fresh(
        "reproduce", f"{DQN_REPO}/{published[0]}", "--seeds", "3", "--new-seeds", "--out", str(tmp_path / "new")
    )
    assert new.returncode == 0, new.stdout[-3000:] + new.stderr[-3000:]
    assert "verdict: consistent" in new.stdout and "margin ±" in new.stdout and "(10 % of the original)" in new.stdout
    assert "3 new seeds: 4, 5, 6" in new.stderr
    verdict = json.loads((tmp_path / "new" / "verdict.json").read_text())
    assert verdict["original_runs"] == published and verdict["seeds"] == "new"
    assert verdict["equivalence"]["n_original"] == verdict["equivalence"]["n_reproduction"] == 3
    assert verdict["curves"]["first_diverged"] is None
    store = LocalStore(fresh_home)
    reproduced = sorted((r for r in store.records() if r.get("reproduces")), key=lambda r: r["seed"])
    assert [r["seed"] for r in reproduced] == [4, 5, 6]
    assert {r["reproduction_verdict"] for r in reproduced} == {"consistent"}
    assert all(r["reproduction"]["environment"]["differences"] == [] for r in reproduced)

    # The same configuration with the learning rate changed to 1e-5, against the published seeds.
    changed = fresh("compare", *(f"run={r}" for r in published), "--against", " ".join(f"run={r}" for r in slow))
    assert changed.returncode == 1, changed.stdout[-3000:] + changed.stderr[-3000:]
    assert "verdict: diverged" in changed.stdout and "curves: first checkpoint outside the margin" in changed.stdout

    # Two seeds a side (published 1, 2 against reproduced 4, 5): not decisive, with a seed count.
    two = fresh(
        "compare",
        *(f"run={r}" for r in published[:2]),
        "--against",
        " ".join(f"run={r['run_id']}" for r in reproduced[:2]),
    )
    assert two.returncode == 3, two.stdout[-3000:] + two.stderr[-3000:]
    assert "verdict: inconclusive" in two.stdout and "seeds per side for 80 %:" in two.stdout


def test_a_seed_that_never_came_home_is_one_line_and_leaves_the_original_alone(noop_image, tmp_path):
    """What ``harness reproduce --backend ray`` gets back for a job that failed before its run began
    (a node's build failed): a status and a reason under the run's own id, which for the same seed
    is the original's. The seed runner here hands back exactly that, as Ray's backend does."""
    from harness.errors import HarnessError
    from harness.reproduce.reproduction import ReproduceOptions, SeedJob, reproduce
    from tests.conftest import run_cli

    home = tmp_path / "store"
    manifest = noop_variant(tmp_path / "project")
    ran = run_cli("run", manifest, "--smoke", "--quiet", env={"HARNESS_HOME": str(home)})
    assert ran.returncode == 0, ran.stderr
    store = LocalStore(home)
    (original,) = list(store.records())
    record_file = store.run_dir(original["run_id"]) / "record.json"
    before = record_file.read_bytes()

    def never_came_home(jobs: list[SeedJob], echo) -> list[dict]:
        return [
            {"run_id": job.spec.run_id, "status": "node_fail", "detail": "Ray job x FAILED: podman build failed"}
            for job in jobs
        ]

    with pytest.raises(HarnessError, match=r"the run of seed 0 never came home from Ray \(node_fail\): .*podman build"):
        reproduce(original["run_id"], ReproduceOptions(seed_runner=never_came_home), store=store)
    assert record_file.read_bytes() == before  # not replaced by the lost job's status
    assert [r["run_id"] for r in store.records()] == [original["run_id"]]
