"""Done-when of issue 4: run DQN, publish it to the test Hub, pull it into an empty store and
reproduce it -> identical. Real Docker engine, real image build, real huggingface_hub client."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from harness.store.local import LocalStore
from tests.conftest import HUB_TOKEN, run_cli

pytestmark = [pytest.mark.docker, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[1]
TOKEN = HUB_TOKEN
REPO = "lab/dqn-cartpole"
BASE_IMAGE = "harness/base:bookworm"


def need(reason: str) -> None:
    """Fail under CI (the service must be there), skip elsewhere."""
    if os.environ.get("CI"):
        pytest.fail(reason)
    pytest.skip(reason)


@pytest.fixture
def engine() -> None:
    try:
        found = subprocess.run(["docker", "image", "inspect", BASE_IMAGE], capture_output=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as exc:
        need(f"docker engine: {exc}")
    if found.returncode != 0:
        need(f"docker engine without {BASE_IMAGE} (scripts/ bootstrap it)")


def harness(args: list[str], home: Path, **env: str) -> subprocess.CompletedProcess[str]:
    return run_cli(
        *args,
        cwd=ROOT,
        timeout=900,
        env={
            "HARNESS_HOME": str(home),
            "HF_HUB_DISABLE_XET": "1",
            "HF_TOKEN": TOKEN,
            "HF_HUB_DISABLE_PROGRESS_BARS": "1",
            **env,
        },
    )


def test_run_publish_pull_reproduce_identical(engine, tmp_path, hub):
    origin, fresh = tmp_path / "origin", tmp_path / "fresh"
    ran = harness(
        ["run", "manifests/dqn-cartpole.yaml", "--param", "total_timesteps=1500", "--param", "learning_starts=500"],
        origin,
    )
    assert ran.returncode == 0, ran.stderr[-3000:]
    (original,) = LocalStore(origin).records()
    assert original["status"] == "completed"

    published = harness(["publish", original["run_id"], "--repo", REPO, "--endpoint", hub.url], origin)
    assert published.returncode == 0, published.stderr[-3000:]

    reproduced = harness(
        [
            "reproduce",
            f"{REPO}/{original['run_id']}",
            "--endpoint",
            hub.url,
            "--out",
            str(tmp_path / "out"),
            "--publish",
        ],
        fresh,
    )
    assert reproduced.returncode == 0, reproduced.stdout[-3000:] + reproduced.stderr[-3000:]
    assert "verdict: identical" in reproduced.stdout

    store = LocalStore(fresh)
    pulled = store.load(original["run_id"])
    assert pulled["pulled_from"]["repo"] == REPO and store.verify(original["run_id"]) == []
    (reproduction,) = [r for r in store.records() if r.get("reproduces") == original["run_id"]]
    assert reproduction["status"] == "completed" and reproduction["reproduction_verdict"] == "identical"
    assert reproduction["run_id"] != original["run_id"]
    verdict = json.loads((tmp_path / "out" / "verdict.json").read_text())
    assert verdict["verdict"] == "identical" and verdict["first_difference"] is None
    assert (tmp_path / "out" / "comparison.png").stat().st_size > 10_000

    tree = hub.storage.commit(hub_repo(), hub.storage.resolve(hub_repo(), "main"))["tree"]
    assert f"runs/{reproduction['run_id']}/record.json" in tree  # --publish added the confirmation

    for output in (ran, published, reproduced):
        assert TOKEN not in output.stdout + output.stderr


def hub_repo():
    from tests.hubserver import RepoRef

    return RepoRef("dataset", REPO)
