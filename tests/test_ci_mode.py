"""CI mode: with CI/GITHUB_ACTIONS set the CLI prints plain lines and never redraws, even at a
terminal, and huggingface_hub's progress bars are off. Run through the real CLI in a pseudo-terminal."""

from __future__ import annotations

import os
import pty
import re
import select
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import REPO

REDRAW = re.compile(r"\r(?!\n)|\x1b\[")  # a carriage return that is not a line end, or an escape sequence


def run_at_terminal(args: list[str], env: dict[str, str], cwd: Path, timeout: float = 600) -> tuple[int, str]:
    """Run ``python -m harness ARGS`` with a pseudo-terminal as stdin/stdout/stderr; its exit status and output."""
    master, slave = pty.openpty()
    proc = subprocess.Popen(
        [sys.executable, "-m", "harness", *args],
        stdin=slave,
        stdout=slave,
        stderr=slave,
        cwd=cwd,
        env=env,
        close_fds=True,
    )
    os.close(slave)
    chunks: list[bytes] = []
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], 1.0)
            if ready:
                try:
                    data = os.read(master, 65536)
                except OSError:  # EIO: the child closed the terminal
                    break
                if not data:
                    break
                chunks.append(data)
            elif proc.poll() is not None:
                break
    finally:
        os.close(master)
    status = proc.wait(timeout=30)
    return status, b"".join(chunks).decode(errors="replace")


def base_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("CI", "GITHUB_ACTIONS", "HF_HUB_DISABLE_PROGRESS_BARS")}
    return {**env, "TERM": "xterm", "COLUMNS": "120", **extra}


def test_ci_mode_follows_the_environment(monkeypatch):
    from harness.util import terminal

    monkeypatch.setattr(sys.stdout, "isatty", lambda: True)
    for name in ("CI", "GITHUB_ACTIONS"):
        monkeypatch.delenv(name, raising=False)
    assert not terminal.ci_mode()
    monkeypatch.setenv("CI", "false")
    assert not terminal.ci_mode()
    monkeypatch.setenv("GITHUB_ACTIONS", "true")
    assert terminal.ci_mode()
    monkeypatch.setattr(sys.stdout, "isatty", lambda: False)
    monkeypatch.delenv("GITHUB_ACTIONS")
    assert terminal.ci_mode(), "output that is not a terminal is a log"


@pytest.mark.docker
def test_a_build_in_ci_prints_plain_lines_even_at_a_terminal(base_image, tmp_path):
    for part in ("images/noop", "lockfiles/noop.txt", "manifests/noop.yaml"):
        source, target = REPO / part, tmp_path / part
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copytree(source, target) if source.is_dir() else shutil.copy(source, target)
    (tmp_path / "images/noop/workload/extra.txt").write_text("a recipe of its own: a tag of its own\n")
    args = ["build", "manifests/noop.yaml", "--force"]
    try:
        status, output = run_at_terminal(args, base_env(CI="true"), tmp_path)
        assert status == 0, output[-3000:]
        # the builder's own step lines (Docker's "Step 1/", buildah's "STEP 1/"), then the image
        assert re.search(r"(Step|STEP) 1/", output) and re.search(r"harness/noop:[0-9a-f]{16} sha256:", output)
        assert not REDRAW.search(output), repr(REDRAW.search(output))
        # the same build for a person at a terminal: a spinner that redraws (what CI must not get)
        status, output = run_at_terminal(args, base_env(), tmp_path)
        assert status == 0 and REDRAW.search(output)
    finally:
        tag = re.search(r"(harness/noop:[0-9a-f]{16})", output)
        if tag:
            subprocess.run(["docker", "rmi", "-f", tag.group(1)], capture_output=True)


PROBE = (
    "import sys\n"
    "{preimport}"
    "sys.argv = ['harness', 'doctor']\n"
    "from harness.cli import main\n"
    "try:\n"
    "    main()\n"
    "except SystemExit:\n"
    "    pass\n"
    "from huggingface_hub.utils import are_progress_bars_disabled\n"
    "print('hub progress bars disabled:', are_progress_bars_disabled())\n"
)


@pytest.mark.parametrize(
    "preimport", ["", "import huggingface_hub.utils\n"], ids=["hub-imported-later", "hub-imported-first"]
)
def test_hub_progress_bars_are_off_in_ci(tmp_path, preimport):
    """`harness doctor` (it imports huggingface_hub) run through the CLI's entry point, at a terminal."""
    probe = tmp_path / "probe.py"
    probe.write_text(PROBE.format(preimport=preimport))

    def bars_disabled(env: dict[str, str]) -> bool:
        master, slave = pty.openpty()
        done = subprocess.run(
            [sys.executable, str(probe)], stdin=slave, stdout=slave, stderr=slave, env=env, timeout=120
        )
        os.close(slave)
        output = b""
        while select.select([master], [], [], 0.5)[0]:
            try:
                output += os.read(master, 65536)
            except OSError:
                break
        os.close(master)
        found = re.search(rb"hub progress bars disabled: (True|False)", output)
        assert found, (done.returncode, output[-2000:])
        return found.group(1) == b"True"

    assert bars_disabled(base_env(CI="true"))
    assert bars_disabled(base_env(GITHUB_ACTIONS="true"))
    assert not bars_disabled(base_env()), "a person at a terminal keeps the client's progress bars"
