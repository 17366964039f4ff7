"""``harness import`` of CleanRL's Hub model repos, published to the test Hub by CleanRL's own
``push_to_hub`` (tests/cleanrl_publish.py), then read back as a second user with an empty store."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import REPO, SHARED, run_cli

CLEANRL = SHARED / "data" / "cleanrl"
ENTITY = "cleanrl"
STEPS = 40


@pytest.fixture(scope="module")
def cleanrl_source() -> Path:
    if not (CLEANRL / "cleanrl_utils" / "huggingface.py").is_file():
        pytest.skip(f"CleanRL is not beside this checkout ({CLEANRL})")
    return CLEANRL


def write_run_folder(folder: Path, seed: int) -> Path:
    """What dqn.py leaves in runs/<run_name>: TensorBoard events (written by torch's SummaryWriter,
    as dqn.py does) and a weights file that is never loaded."""
    from torch.utils.tensorboard import SummaryWriter

    folder.mkdir(parents=True)
    writer = SummaryWriter(str(folder))
    writer.add_text("hyperparameters", f"|param|value|\n|-|-|\n|seed|{seed}|")
    for step in range(STEPS):
        writer.add_scalar("charts/episodic_return", 10.0 + step * 3.0 + seed, step * 100)
        writer.add_scalar("charts/SPS", 1000 + seed, step * 100)
    for index in range(10):
        writer.add_scalar("eval/episodic_return", 500.0 - index, index)
    writer.close()
    (folder / "dqn.cleanrl_model").write_bytes(b"not a pickle: never loaded\n" + os.urandom(64))
    return folder


def card_args(seed: int) -> list[str]:
    return [
        "--seed",
        str(seed),
        "--env-id",
        "CartPole-v1",
        "--total-timesteps",
        "500000",
        "--save-model",
        "--upload-model",
        "--hf-entity",
        ENTITY,
        "--track",
    ]


def publish_seed(cleanrl: Path, tmp: Path, hub, seed: int, args: list[str] | None = None) -> str:
    """One seed repo ``cleanrl/CartPole-v1-dqn-seed<seed>``, written by CleanRL's push_to_hub."""
    folder = write_run_folder(tmp / f"run{seed}-{os.urandom(3).hex()}", seed)
    repo = f"{ENTITY}/CartPole-v1-dqn-seed{seed}"
    env = {**os.environ, "HF_ENDPOINT": hub.url, "PYTHONPATH": str(REPO)}
    done = subprocess.run(
        [
            sys.executable,
            str(REPO / "tests" / "cleanrl_publish.py"),
            str(cleanrl),
            str(folder),
            repo,
            str(seed),
            *(card_args(seed) if args is None else args),
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return repo


@pytest.fixture
def published(cleanrl_source, hub, tmp_path) -> list[str]:
    return [publish_seed(cleanrl_source, tmp_path, hub, seed) for seed in (1, 2, 3)]


def empty_project(tmp_path: Path) -> Path:
    project = tmp_path / "second-user"
    for part in ("images", "lockfiles", "manifests"):
        (project / part).mkdir(parents=True)
    return project


def test_import_three_seed_repos_then_validate(published, hub, tmp_path, monkeypatch):
    project = empty_project(tmp_path)
    store = tmp_path / "second-store"
    env = {"HARNESS_HOME": str(store)}

    done = run_cli("import", *published, "--project", str(project), "--json", env=env)

    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["name"] == "cartpole-v1-dqn" and result["format"] == "cleanrl"
    assert [r["seed"] for r in result["runs"]] == [1, 2, 3]
    assert sorted(result["dropped"]) == ["--hf-entity cleanrl", "--save-model", "--track", "--upload-model"]
    manifest = project / "manifests" / "cartpole-v1-dqn.yaml"
    validated = run_cli("validate", str(manifest), env=env)
    assert validated.returncode == 0, validated.stderr

    import yaml

    data = yaml.safe_load(manifest.read_text())
    assert data["command"] == [
        "python",
        "/workload/dqn.py",
        "--seed",
        "{seed}",
        "--env-id",
        "{env_id}",
        "--total-timesteps",
        "{total_timesteps}",
    ]
    assert data["params"] == {"env_id": "CartPole-v1", "total_timesteps": 500000}
    assert data["seeds"] == [1, 2, 3] and data["metrics"]["primary"] == "charts/episodic_return"
    assert data["expect"]["margin_relative"] == 0.1 and not data["expect"]["deterministic"]
    assert [s["repo"] for s in data["source"]] == published
    assert all(len(s["revision"]) == 40 for s in data["source"])
    assert "--track" in data["description"] and "--save-model" in data["description"]
    assert (project / "images" / "cartpole-v1-dqn" / "workload" / "dqn.py").read_bytes() == (
        CLEANRL / "cleanrl" / "dqn.py"
    ).read_bytes()
    dockerfile = (project / "images" / "cartpole-v1-dqn" / "Dockerfile").read_text()
    assert "ARG BASE=harness/base:bullseye" in dockerfile and "--require-hashes" in dockerfile

    lockfile = (project / "lockfiles" / "cartpole-v1-dqn.txt").read_text()
    assert "torch==1.12.1 \\" in lockfile and "stable-baselines3==2.0.0" in lockfile
    assert "wandb" not in lockfile and "pygame" not in lockfile  # not imported by the script
    assert "importlib-metadata==" in lockfile  # a dependency only below Python 3.10: the marker was evaluated
    assert "# harness: python 3.9" in lockfile
    torch_hashes = lockfile.split("torch==1.12.1 \\\n", 1)[1].split("\n", 1)[0]
    assert "sha256:" in torch_hashes

    from harness.lockfile import lockfile_problems

    assert lockfile_problems(project / "lockfiles" / "cartpole-v1-dqn.txt") == []

    listed = run_cli("ls", "--json", env=env)
    assert listed.returncode == 0, listed.stderr
    rows = json.loads(listed.stdout)
    assert sorted(r["status"] for r in rows) == ["imported"] * 3

    from harness.store.local import LocalStore

    local = LocalStore(store)
    for run in result["runs"]:
        record = local.load(run["run_id"])
        assert local.verify(run["run_id"]) == []
        source = record["imported_from"]
        assert source["repo"] == run["repo"] and source["revision"] == run["revision"]
        assert set(source["files"]) >= {"README.md", "dqn.py", "poetry.lock", "pyproject.toml", "dqn.cleanrl_model"}
        assert all(v.startswith(("sha256:", "git-blob:")) for v in source["files"].values())
        assert record["metrics_summary"]["charts/episodic_return"]["count"] == STEPS
        assert record["metrics_summary"]["eval/mean_reward"]["last"] == pytest.approx(
            (500.0 + 490.0 + run["seed"] + 500.0) / 3, abs=0.01
        )
        assert not any("cleanrl_model" in p for p in record["files"])  # the weights were not downloaded
    shown = run_cli("show", result["runs"][0]["run_id"], env=env)
    assert shown.returncode == 0 and "imported" in shown.stdout

    for target in ("cartpole-v1-dqn", published[1]):  # the group's name or a seed repo names the group
        refused = run_cli("reproduce", target, "--runtime", "process", cwd=project, env=env)
        assert refused.returncode == 2 and "--trust-code" in refused.stderr, refused.stderr

    again = run_cli("import", *published, "--project", str(project), "--json", env=env)
    assert again.returncode == 0, again.stderr
    assert json.loads(again.stdout)["written"] == []  # the same commits: nothing changes


def test_publish_refuses_an_imported_run(published, hub, tmp_path):
    project = empty_project(tmp_path)
    env = {"HARNESS_HOME": str(tmp_path / "s")}
    done = run_cli("import", published[0], "--project", str(project), "--json", env=env)
    assert done.returncode == 0, done.stderr
    run_id = json.loads(done.stdout)["runs"][0]["run_id"]

    refused = run_cli("publish", run_id, "--repo", "lab/mine", env=env)

    assert refused.returncode == 2
    assert "imported" in refused.stderr and len(refused.stderr.strip().splitlines()) == 1


def _variant(hub, source: str, target: str, tmp: Path, change) -> str:
    """A copy of seed repo ``source`` as ``target`` with ``change(folder)`` applied to its files."""
    from huggingface_hub import HfApi, snapshot_download

    api = HfApi(endpoint=hub.url)
    folder = tmp / target.replace("/", "_")
    snapshot_download(source, local_dir=folder, endpoint=hub.url)
    shutil.rmtree(folder / ".cache", ignore_errors=True)
    change(folder)
    api.create_repo(target, exist_ok=True)
    api.upload_folder(repo_id=target, folder_path=str(folder))
    return target


def _edit(name: str, edit):
    def change(folder: Path) -> None:
        path = folder / name
        path.write_text(edit(path.read_text()))

    return change


def _no_events(folder: Path) -> None:
    for path in folder.glob("*tfevents*"):
        path.unlink()


def _git_torch(text: str) -> str:
    head, tail = text.split('name = "torch"\n', 1)
    return (
        head
        + 'name = "torch"\n'
        + tail.replace(
            "\n[package.dependencies]",
            '\n[package.source]\ntype = "git"\nurl = "https://example.org/torch.git"\n'
            'reference = "main"\nresolved_reference = "0123456789abcdef0123456789abcdef01234567"\n\n[package.dependencies]',
            1,
        )
    )


def _unhashed_torch(text: str) -> str:
    head, tail = text.split('name = "torch"\nversion = "1.12.1"\n', 1)
    block, rest = tail.split("\n]\n", 1)
    return head + 'name = "torch"\nversion = "1.12.1"\n' + block.split("files = [", 1)[0] + "files = []\n" + rest


HOSTILE = [
    (
        "no-command",
        _edit("README.md", lambda t: t.replace("## Command to reproduce the training", "## Training")),
        "has no '## Command to reproduce the training' block",
    ),
    ("unhashed-lock", _edit("poetry.lock", _unhashed_torch), "torch==1.12.1 has no file hashes"),
    (
        "git-dependency",
        _edit("poetry.lock", _git_torch),
        "package torch comes from git 'https://example.org/torch.git'",
    ),
    ("no-events", _no_events, "no TensorBoard events file"),
    ("huge-card", _edit("README.md", lambda t: t + "x" * (1 << 20)), "README.md is "),
    ("bad-lock", _edit("poetry.lock", lambda t: t + "\n[[[nonsense"), "poetry.lock: not valid TOML"),
]


def test_hostile_repos_are_refused_in_one_line(cleanrl_source, hub, tmp_path):
    good = publish_seed(cleanrl_source, tmp_path, hub, 1)
    project = empty_project(tmp_path)
    env = {"HARNESS_HOME": str(tmp_path / "store")}
    for case, change, message in HOSTILE:
        repo = _variant(hub, good, f"{ENTITY}/{case}-seed1", tmp_path, change)

        done = run_cli("import", repo, "--project", str(project), env=env)

        assert done.returncode == 2, (case, done.stderr)
        lines = done.stderr.strip().splitlines()
        assert len(lines) == 1 and message in lines[0] and repo in lines[0], (case, done.stderr)
        assert "Traceback" not in done.stderr
    assert not list((project / "manifests").iterdir()), "a refused import writes nothing"
    assert not (tmp_path / "store" / "runs").exists()


def test_a_linked_file_in_the_download_is_refused(tmp_path):
    from harness.store.importers import RepoFile, RepoImportError, RepoSnapshot

    (tmp_path / "secret").write_text("host file")
    (tmp_path / "repo").mkdir()
    (tmp_path / "repo" / "README.md").symlink_to(tmp_path / "secret")
    snapshot = RepoSnapshot("lab/x", "a" * 40, {"README.md": RepoFile("README.md", 9)}, tmp_path / "repo")

    with pytest.raises(RepoImportError, match="README.md: symlink"):
        snapshot.read("README.md", 1 << 20)


def test_the_card_command_becomes_an_argument_list():
    from harness.store.importers.cleanrl import command_of

    script, command, params, dropped, seed = command_of(
        "python ppo.py --seed 4 --track --capture-video --learning-rate 2.5e-4 --exp-name 'a b{c}' "
        "--hf-entity cleanrl --num-envs=8 --no-cuda",
        "card",
    )

    assert script == "ppo.py" and seed == 4
    assert command == [
        "python",
        "/workload/ppo.py",
        "--seed",
        "{seed}",
        "--learning-rate",
        "{learning_rate}",
        "--exp-name",
        "{exp_name}",
        "--num-envs",
        "{num_envs}",
        "--no-cuda",
    ]
    assert params == {"learning_rate": "2.5e-4", "exp_name": "a b{c}", "num_envs": 8}
    assert dropped == ["--track", "--capture-video", "--hf-entity cleanrl"]


SHORT = ["--total-timesteps", "3000", "--learning-starts", "1000", "--target-network-frequency", "100"]


@pytest.fixture(scope="module")
def bullseye_base(docker_engine):
    """Debian bullseye's Python 3.9 base, made with mmdebstrap once (CleanRL's lock wants <3.11)."""
    from harness.images.build import bootstrap_base

    return bootstrap_base("harness/base:bullseye", suite="bullseye")


@pytest.mark.slow
@pytest.mark.docker
@pytest.mark.skipif(
    not os.environ.get("HARNESS_TEST_CLEANRL_IMAGE"),
    reason="builds CleanRL's locked image (0.8 GB of wheels, about 5 min a build, two builds) and runs 8 trainings: "
    "7 to 23 min on 2 cores with the wheels cached (a cold machine adds the 0.8 GB download and the "
    "bullseye bootstrap); set HARNESS_TEST_CLEANRL_IMAGE=1",
)
def test_reproduce_an_imported_cleanrl_group(cleanrl_source, bullseye_base, hub, tmp_path):
    """A first user trains dqn.py briefly in the imported image and publishes the runs with
    CleanRL's push_to_hub; a second user imports them into an empty store and reproduces the
    published seeds (same wheels, CPU: identical) and new seeds (a statistical verdict)."""
    seeds = (1, 2, 3)
    args = lambda seed: ["--seed", str(seed), "--env-id", "CartPole-v1", *SHORT, "--upload-model"]  # noqa: E731
    repos = [publish_seed(cleanrl_source, tmp_path, hub, seed, args(seed)) for seed in seeds]
    first = empty_project(tmp_path / "first")
    first_env = {"HARNESS_HOME": str(tmp_path / "first-store")}
    done = run_cli("import", *repos, "--project", str(first), "--json", env=first_env)
    assert done.returncode == 0, done.stderr
    name = json.loads(done.stdout)["name"]
    trained = run_cli("run", str(first / "manifests" / f"{name}.yaml"), "--quiet", env=first_env, timeout=3600)
    assert trained.returncode == 0, trained.stderr[-3000:]
    from harness.store.local import LocalStore

    runs = [r for r in LocalStore(tmp_path / "first-store").records() if r["status"] == "completed"]
    assert sorted(r["seed"] for r in runs) == list(seeds)
    env = {**os.environ, "HF_ENDPOINT": hub.url, "PYTHONPATH": str(REPO)}
    for record in runs:
        (folder,) = (LocalStore(tmp_path / "first-store").run_dir(record["run_id"]) / "out" / "runs").iterdir()
        done = subprocess.run(
            [
                sys.executable,
                str(REPO / "tests" / "cleanrl_publish.py"),
                str(cleanrl_source),
                str(folder),
                f"{ENTITY}/CartPole-v1-dqn-seed{record['seed']}",
                str(record["seed"]),
                *args(record["seed"]),
            ],
            capture_output=True,
            text=True,
            env=env,
            timeout=300,
        )
        assert done.returncode == 0, done.stderr[-2000:]

    second = empty_project(tmp_path / "second")
    second_env = {"HARNESS_HOME": str(tmp_path / "second-store")}
    started = time.monotonic()
    done = run_cli("import", *repos, "--project", str(second), "--json", env=second_env)
    assert done.returncode == 0, done.stderr
    print(f"import of {len(repos)} seed repos: {time.monotonic() - started:.1f} s")
    started = time.monotonic()
    # the published seeds and two new ones in one reproduction (one image rebuild, not two)
    done = run_cli("reproduce", name, "--seeds", "5", "--json", cwd=second, env=second_env, timeout=3600)
    print(f"reproduce of the {len(seeds)} published seeds and 2 new ones: {time.monotonic() - started:.1f} s")
    assert done.returncode in (0, 1, 3), done.stderr[-3000:]
    result = json.loads(done.stdout)
    print(json.dumps({k: result.get(k) for k in ("verdict", "seeds", "notes", "environment")}, default=str)[:4000])
    pairs = {pair["seed"]: pair["verdict"] for pair in result["pairs"]}
    assert pairs == {1: "identical", 2: "identical", 3: "identical"}, result["pairs"]
    assert result["seeds"] == "overlapping" and result["verdict"] in ("consistent", "diverged", "inconclusive")
    assert [row["seed"] for row in result["published_evaluation"]] == list(seeds)


def test_the_lock_and_the_image_name_packages_alike():
    from harness.reproduce.environment_diff import compare_environments

    lock = {"environment": {"packages": ["typing-extensions==4.5.0", "torch==1.12.1"]}}
    image = {"environment": {"packages": ["typing_extensions==4.5.0", "torch==1.12.1", "pip==20.3.4"]}}

    differences = compare_environments(lock, image).differences

    assert [(d.category, d.name) for d in differences] == [("python", "pip")]
