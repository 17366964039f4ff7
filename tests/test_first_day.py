"""A researcher's first day (issue 24): third-party scripts run unmodified, smoke runs and runs of
another budget stay out of results, a published table is a target, small-seed statistics are said
plainly, and gc never removes an image a record names."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from harness.store.local import LocalStore
from tests.conftest import REPO, copy_project, need, noop_variant

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
    from tests.conftest import run_cli

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


CLEANRL_DQN = REPO.parent / "shared" / "data" / "cleanrl" / "cleanrl" / "dqn.py"


@pytest.mark.docker
@pytest.mark.slow
def test_cleanrls_dqn_runs_unmodified_in_the_sandbox(base_image, store_home, cli, tmp_path):
    """CleanRL's dqn.py as published (tyro arguments, SB3's replay buffer, a SummaryWriter writing
    runs/<name>/ where it starts) runs with no wrapper; its TensorBoard scalars are found without
    configuration. Its code is copied in at test time, never committed."""
    if not CLEANRL_DQN.is_file():
        need("CleanRL's dqn.py", f"{CLEANRL_DQN} is missing")
    copy_project(tmp_path, "images/cleanrl", "lockfiles/cleanrl.txt")
    shutil.copy(CLEANRL_DQN, tmp_path / "images" / "cleanrl" / "workload" / "dqn.py")
    manifest = tmp_path / "manifests" / "cleanrl-dqn.yaml"
    manifest.write_text(
        "apiVersion: harness/v1\n"
        "name: cleanrl-dqn\n"
        "image: {build: images/cleanrl, lockfile: lockfiles/cleanrl.txt}\n"
        'command: [python, /workload/dqn.py, --seed, "{seed}", --total-timesteps, "{total_timesteps}", '
        '--learning-starts, "{learning_starts}", --no-cuda]\n'
        "params: {total_timesteps: 1500, learning_starts: 500}\n"
        "seeds: [1]\n"
        "hardware: {accelerator: cpu, gpus: 0, cpus: 1, memory: 2GiB, timeout: 10m}\n"
        "metrics: {primary: losses/td_loss}\n"
    )
    result = cli("run", str(manifest), "--quiet", cwd=tmp_path, timeout=1800)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    (record,) = records(store_home)
    assert record["status"] == "completed"
    events = [
        name for name in record["files"] if name.startswith("out/runs/CartPole-v1__dqn__1__") and "tfevents" in name
    ]
    assert events, sorted(record["files"])
    summary = record["metrics_summary"]
    assert summary["losses/td_loss"]["count"] >= 5 and summary["charts/SPS"]["count"] >= 5


REFERENCE = "reference: {mean: 3.5, sd: 1.0, seeds: 3, source: 'a test table'}"


def test_a_reference_from_summary_statistics_agrees_with_welch_on_the_scores():
    from harness.analysis.equivalence import equivalence_test, summary_equivalence_test

    published = [480.0, 495.0, 501.0, 488.0]
    ours = [470.0, 499.0, 490.0]
    raw = equivalence_test(published, ours, margin=30.0)
    summary = summary_equivalence_test(
        (float(np.mean(published)), float(np.std(published, ddof=1)), 4),
        (float(np.mean(ours)), float(np.std(ours, ddof=1)), 3),
        margin=30.0,
    )
    assert summary.verdict == raw.verdict == "consistent"
    assert summary.ci == pytest.approx(raw.ci) and summary.seeds_needed == raw.seeds_needed
    far = summary_equivalence_test((490.04, 6.12, 3), (300.0, 20.0, 5), margin_relative=0.1)
    assert far.verdict == "diverged"
    thin = summary_equivalence_test((490.04, 6.12, 3), (480.0, 0.0, 1))
    assert thin.verdict == "inconclusive" and not thin.has_interval and "no interval" in thin.summary()


def test_the_runs_are_checked_against_a_published_table(noop_image, store_home, cli, tmp_path):
    manifest = noop_variant(
        tmp_path, "expect: {deterministic: true}", "expect: {deterministic: true, " + REFERENCE + "}"
    )
    ran = cli("run", manifest, "--quiet", "--seed", "1", "--seed", "2", "--seed", "3")
    assert ran.returncode == 0, ran.stderr
    # probe/value's mean of the last points is 1 + seed: 2, 3, 4 against 3.5 ± 1.0 over 3 seeds
    assert "probe/value (mean of the last 10 points): 3 ± 1 (sd) over 3 seeds" in ran.stdout
    assert "against the reference (a test table): inconclusive: mean difference -0.5" in ran.stdout
    loose = cli("compare", "noop", "--against-reference", "--margin", "5")
    assert loose.returncode == 0, loose.stderr
    assert "verdict against the reference: consistent" in loose.stdout
    assert "reference: 3.5 ± 1 (sd, 3 seeds) from a test table" in loose.stdout
    tight = cli("compare", "noop", "--against-reference", "--json")
    assert tight.returncode == 3
    verdict = json.loads(tight.stdout)
    assert verdict["verdict"] == "inconclusive" and sorted(verdict["scores"]) == [2.0, 3.0, 4.0]
    assert verdict["equivalence"]["seeds_needed"] >= 3


def test_a_reference_without_seeds_or_with_a_bad_spread_is_refused_in_one_line(cli, tmp_path):
    manifest = noop_variant(
        tmp_path, "expect: {deterministic: true}", "expect: {reference: {mean: 490.04, sd: -6.12, seeds: 3, source: x}}"
    )
    result = cli("validate", manifest)
    assert result.returncode == 2 and "expect.reference.sd" in result.stderr and "Traceback" not in result.stderr
    none = noop_variant(tmp_path, "expect: {deterministic: true}", "expect: {reference: {mean: 490.04, sd: 6.12}}")
    result = cli("validate", none)
    assert result.returncode == 2 and "seeds" in result.stderr


def test_too_few_seeds_are_said_plainly_and_a_repeated_seed_is_not_a_new_one(mixed_store, cli):
    single = cli("compare", "seed=2", "--against", "seed=1", env=mixed_store)
    assert single.returncode == 3, single.stderr
    assert "inf" not in single.stdout and "no interval" in single.stdout
    assert "seeds per side for 80 %: 2" not in single.stdout
    # seeds 1 and 2 against the smoke run of seed 1 and the run of seed 4 (not paired: a statistical verdict)
    against = "smoke=true smoke=false seconds=1 seconds=3 seed=1 seed=4"
    same = cli("compare", "seed=1", "seed=2", "--against", against, env=mixed_store)
    assert "a repeated seed is not a new seed" in same.stdout


@pytest.mark.docker
def test_gc_never_removes_an_image_a_record_names_after_a_rebuild_moved_its_tag(base_image, tmp_path):
    import io

    from harness.runtime.engine import docker_client
    from tests.test_ux import _remove_images, harness, probe_project

    client = docker_client(timeout=600)
    project = probe_project(tmp_path / "project", "gcref")
    home = tmp_path / "store"
    try:
        ran = harness(home, "run", "manifests/gcref.yaml", "--quiet", cwd=project)
        assert ran.returncode == 0, ran.stderr
        (record,) = records(home)
        image_id, tag = record["image"]["id"], record["image"]["tag"]
        # a rebuild under the same tag (as a reproduction's rebuild does when the build is not bit-identical)
        labels = client.images.get(image_id).labels
        label_line = " ".join(f'{k}="{v}"' for k, v in labels.items() if k.startswith("org.harness."))
        dockerfile = f"FROM harness/base:bookworm\nLABEL {label_line} rebuilt=1\n"
        rebuilt = client.images.build(fileobj=io.BytesIO(dockerfile.encode()), rm=True)[0]
        rebuilt.tag(tag)
        assert client.images.get(image_id).tags == []  # the run's image is dangling now
        dry = harness(home, "gc", "--dry-run", "--json", cwd=project)
        assert dry.returncode == 0, dry.stderr
        listed = {i["id"] for i in json.loads(dry.stdout)["images"]}
        assert image_id not in listed
        done = harness(home, "gc", "--recipe", "gcref", "--json", cwd=project)
        assert done.returncode == 0, done.stderr
        client.images.get(image_id)  # still there: raises if gc removed it
        shown = harness(home, "show", record["run_id"])
        assert image_id[:19] in shown.stdout or image_id in shown.stdout
    finally:
        _remove_images(client, "gcref")


def test_lock_says_what_it_resolves_and_hashes_and_a_warm_relock_is_immediate(cli, tmp_path):
    image_dir = tmp_path / "images" / "tiny"
    image_dir.mkdir(parents=True)
    (image_dir / "requirements.in").write_text("six==1.16.0\n")
    cold = cli("lock", "images/tiny", cwd=tmp_path, env={"CI": "1"})
    assert cold.returncode == 0, cold.stderr
    assert "resolving: six==1.16.0" in cold.stdout and "hashing: six" in cold.stdout
    assert "pip-compile took" in cold.stdout and "resolving" in cold.stdout and "hashing" in cold.stdout
    lockfile = tmp_path / "lockfiles" / "tiny.txt"
    made = lockfile.read_bytes()
    warm = cli("lock", "images/tiny", cwd=tmp_path, env={"CI": "1"})
    assert warm.returncode == 0 and "is up to date" in warm.stdout and "pip-compile" not in warm.stdout
    assert lockfile.read_bytes() == made
    (image_dir / "requirements.in").write_text("six==1.16.0\n# a comment changes the input\n")
    again = cli("lock", "images/tiny", cwd=tmp_path, env={"CI": "1"})
    assert again.returncode == 0 and "pip-compile took" in again.stdout


def test_init_outside_the_harness_repository_points_at_no_submission_script(cli, tmp_path):
    project = copy_project(tmp_path, "images/noop", "lockfiles/noop.txt")
    made = cli("init", "my-probe", "--image", "noop", cwd=project)
    assert made.returncode == 0, made.stderr
    assert "Next: edit it, `harness run manifests/my-probe.yaml --smoke`." in made.stdout
    assert "verify-submission" not in made.stdout and "pull request" not in made.stdout


def test_a_plan_of_one_seed_says_seed():
    from harness.reproduce.group_verdict import plan_seeds

    assert plan_seeds([1], 1).message == "1 seed: 1"
    assert plan_seeds([1, 2], None, new_seeds=True).message == "2 new seeds: 3, 4"


def test_publish_takes_a_selection_and_leaves_smoke_runs_out(mixed_store, hub, cli):
    published = cli("publish", "noop", "--repo", "lab/first-day", "--json", env=mixed_store)
    assert published.returncode == 0, published.stderr
    assert len(json.loads(published.stdout)["published"]) == 3
    assert "left out 1 run of smoke tests" in published.stderr
    ambiguous = cli("publish", "noop-", "--repo", "lab/first-day", env=mixed_store)
    assert ambiguous.returncode == 2 and len(ambiguous.stderr.strip().splitlines()) == 1
