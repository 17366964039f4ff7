"""Connections cut during large transfers: the server process (the test Hub, a real image registry)
is killed (SIGKILL) while a file is under way, then started again on the same address and storage.
Each command ends in one line and a non-zero exit, leaves nothing half-visible (no partial run in
the store, no commit on the Hub, no tag in the registry), and the same command run again finishes
the job."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from harness.store.local import LocalStore
from tests.conftest import HUB_TOKEN, run_cli
from tests.hubserver import HubStorage, RepoRef
from tests.hubserver.runs import make_run
from tests.registryserver import free_port, registry

__all__ = ["registry"]  # fixture

ROOT = Path(__file__).resolve().parents[1]
REPO = "lab/cut-transfers"
PAYLOAD_BYTES = 16 << 20  # large enough to be cut in the middle at the throttled rate, small enough to be quick
THROTTLE = 4 << 20  # bytes a second the test Hub moves a file body at while a cut is due: about 4 s a transfer
CUT_AFTER = 2 << 20  # bytes seen on the receiving side before the server is killed
WAIT_S = 120  # bound on every wait for an event


class HubProcess:
    """The test Hub as its own process (so that it can be killed), on a fixed port and storage."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.process: subprocess.Popen[str] | None = None

    def start(self, throttle: int = 0) -> HubProcess:
        """Serve (again) on the same port and storage, moving file bodies at ``throttle`` bytes/s."""
        self.process = subprocess.Popen(
            [sys.executable, "-m", "tests.hubserver", "--root", str(self.root), "--port", str(self.port)]
            + ["--token", HUB_TOKEN, "--throttle", str(throttle)],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.process.stdout is not None
        assert self.process.stdout.readline().strip() == self.url
        return self

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(timeout=WAIT_S)
        self.process = None

    @property
    def storage(self) -> HubStorage:
        return HubStorage(self.root)


@pytest.fixture
def hub_process(tmp_path: Path) -> Iterator[HubProcess]:
    server = HubProcess(tmp_path / "hub")
    yield server
    server.kill()


def hub_env(hub: HubProcess, store: Path) -> dict[str, str]:
    return {
        "HF_ENDPOINT": hub.url,
        "HF_TOKEN": HUB_TOKEN,
        "HF_HUB_DISABLE_XET": "1",
        "HF_HUB_DISABLE_PROGRESS_BARS": "1",
        "HARNESS_HOME": str(store),
    }


def cut_when(
    command: list[str], env: dict[str, str], cwd: Path, under_way: Callable[[], bool], kill: Callable[[], None]
) -> subprocess.CompletedProcess[str]:
    """Run the CLI with ``command``; kill the server once ``under_way()`` says the transfer is in the
    middle; the CLI's result once it exits."""
    process = subprocess.Popen(
        [sys.executable, "-m", "harness", *command],
        cwd=cwd,
        env={**os.environ, **env},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + WAIT_S
    while not under_way():
        assert process.poll() is None, f"finished before the cut: {process.communicate()}"
        assert time.monotonic() < deadline, "the transfer never got under way"
        time.sleep(0.02)
    kill()
    stdout, stderr = process.communicate(timeout=WAIT_S * 2)
    return subprocess.CompletedProcess(command, process.returncode, stdout, stderr)


def largest_file(folder: Path, pattern: str = "*") -> int:
    sizes = [path.stat().st_size for path in folder.rglob(pattern) if path.is_file()] if folder.exists() else []
    return max(sizes, default=0)


def assert_one_line_error(result: subprocess.CompletedProcess[str], *expected: str, lines_before: int = 1) -> None:
    """Non-zero exit, no traceback; the last line is the error, after at most ``lines_before``
    lines (the one retry note; for a push, each layer's status changes)."""
    assert result.returncode != 0, result.stdout[-2000:] + result.stderr[-2000:]
    lines = result.stderr.strip().splitlines()
    assert "Traceback" not in result.stderr and lines[-1].startswith("error: "), result.stderr[-3000:]
    assert len(lines) <= lines_before + 1, result.stderr[-3000:]
    for text in expected:
        assert text in lines[-1], lines[-1]


def runs_on_hub(storage: HubStorage) -> list[str]:
    repo = RepoRef("dataset", REPO)
    if not storage.exists(repo):
        return []
    return sorted(p for p in storage.commit(repo, storage.resolve(repo, "main"))["tree"] if p.startswith("runs/"))


def test_publish_cut_mid_upload_leaves_no_commit_and_a_retry_publishes(hub_process, tmp_path):
    store = LocalStore(tmp_path / "store")
    make_run(store, "big-run", extra_files={"out/weights.bin": os.urandom(PAYLOAD_BYTES)})
    env = hub_env(hub_process, store.root)
    uploads = hub_process.root / "tmp"
    hub_process.start(THROTTLE)

    cut = cut_when(
        ["publish", "big-run", "--repo", REPO],
        env,
        tmp_path,
        lambda: largest_file(uploads) >= CUT_AFTER,
        hub_process.kill,
    )
    assert_one_line_error(cut, "connection failed", "try again")
    hub_process.start()
    assert runs_on_hub(hub_process.storage) == []  # no half commit: the head holds no file of the run

    again = run_cli("publish", "big-run", "--repo", REPO, env=env, cwd=tmp_path)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "runs/big-run/out/weights.bin" in runs_on_hub(hub_process.storage)


def test_pull_cut_mid_download_leaves_nothing_in_the_store_and_a_retry_pulls(hub_process, tmp_path):
    origin = LocalStore(tmp_path / "origin")
    make_run(origin, "big-run", extra_files={"out/weights.bin": os.urandom(PAYLOAD_BYTES)})
    hub_process.start()
    published = run_cli("publish", "big-run", "--repo", REPO, env=hub_env(hub_process, origin.root), cwd=tmp_path)
    assert published.returncode == 0, published.stderr[-3000:]
    fresh = tmp_path / "fresh"
    env = hub_env(hub_process, fresh)
    hub_process.kill()
    hub_process.start(THROTTLE)

    cut = cut_when(
        ["pull", REPO],
        env,
        tmp_path,
        lambda: largest_file(fresh, "*.incomplete") >= CUT_AFTER,
        hub_process.kill,
    )
    assert_one_line_error(cut, "connection failed", "try again")
    assert list(LocalStore(fresh).records()) == [] and not list(fresh.glob(".pull-*"))
    listed = run_cli("ls", "--json", env=env, cwd=tmp_path)
    assert listed.returncode == 0 and json.loads(listed.stdout) == []

    hub_process.start()
    again = run_cli("pull", REPO, env=env, cwd=tmp_path)
    assert again.returncode == 0, again.stderr[-3000:]
    assert LocalStore(fresh).verify("big-run") == []


@pytest.mark.docker
@pytest.mark.slow  # the engine retries a cut layer upload for about 50 s before it gives up
def test_registry_push_cut_mid_layer_leaves_no_tag_and_a_retry_pushes(noop_image, registry, tmp_path):
    env = {"HARNESS_HOME": str(tmp_path / "store")}
    command = ["push", "manifests/noop.yaml", "--registry", f"{registry.address}/lab"]

    def kill() -> None:
        registry.process.send_signal(signal.SIGKILL)
        registry.process.wait(timeout=WAIT_S)
        registry.process = None

    cut = cut_when(command, env, ROOT, lambda: largest_file(registry.root / "storage", "data") >= CUT_AFTER, kill)
    # each layer's status once as it changes, not every progress tick nor every second of a countdown
    assert_one_line_error(cut, f"registry {registry.address} is unreachable", lines_before=20)
    registry.start()
    try:  # nothing half-visible: no tag names a partial image (404: the repository is not there at all)
        with urllib.request.urlopen(f"http://{registry.address}/v2/lab/harness/noop/tags/list", timeout=10) as answer:
            assert not json.loads(answer.read()).get("tags")
    except urllib.error.HTTPError as exc:
        assert exc.code == 404, exc

    again = run_cli(*command, "--quiet", env=env)
    assert again.returncode == 0, again.stderr[-3000:]
    assert again.stdout.strip().startswith(f"{registry.address}/lab/harness/noop@sha256:")
