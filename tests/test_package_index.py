"""The public package index a pinned wheel needs travels in the lockfile, not in pip's configuration.

PyPI has no CPU-only torch build (and refuses local versions like +cpu): the lockfile names
PyTorch's index, `harness lock` writes it from requirements.in, and the build's host-side wheel
download adds it to whatever pip's configuration says. That index is not reachable from the
test machines; the local configuration serves the wheels here.
"""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest

from harness.errors import LockfileError
from harness.images.build import wheel_download_commands
from harness.images.lock import compile_lockfile, requirements_indexes, stale_lockfiles
from harness.lockfile import lockfile_indexes, parse_lockfile
from tests.conftest import REPO

TORCH_CPU = "https://download.pytorch.org/whl/cpu"
SIX_LOCK = (REPO / "lockfiles" / "noop.txt").read_text().split("\n", 2)[2]  # the pin, without the header


def image(tmp_path: Path, requirements: str, name: str = "tiny") -> Path:
    image_dir = tmp_path / "images" / name
    image_dir.mkdir(parents=True)
    (image_dir / "requirements.in").write_text(requirements)
    return image_dir


def test_shipped_torch_lockfiles_name_the_pytorch_cpu_index():
    for name in ("rl", "lm"):
        lockfile = REPO / "lockfiles" / f"{name}.txt"
        assert [str(i) for i in lockfile_indexes(lockfile)] == [f"--extra-index-url {TORCH_CPU}"]
        assert any(r.name == "torch" and r.version.endswith("+cpu") for r in parse_lockfile(lockfile)[0])
        assert requirements_indexes(REPO / "images" / name / "requirements.in") == lockfile_indexes(lockfile)
    assert lockfile_indexes(REPO / "lockfiles" / "noop.txt") == []


def test_lock_writes_the_index_that_requirements_in_names(tmp_path):
    image_dir = image(tmp_path, f"# a comment\n--extra-index-url {TORCH_CPU}\nsix==1.16.0\n")
    lockfile = compile_lockfile(image_dir)
    text = lockfile.read_text()
    assert f"--extra-index-url {TORCH_CPU}\n" in text and "six==1.16.0" in text
    # the machine's own pip configuration (a file:// index, a wheelhouse) never reaches the file
    assert "file://" not in text and "find-links" not in text and "/opt/" not in text and str(tmp_path) not in text
    assert stale_lockfiles(tmp_path) == []


def test_lock_keeps_the_pins_of_the_existing_lockfile(tmp_path):
    image_dir = image(tmp_path, "six\n")
    lockfile = tmp_path / "lockfiles" / "tiny.txt"
    lockfile.parent.mkdir()
    lockfile.write_text(SIX_LOCK)
    compile_lockfile(image_dir)
    assert [(r.name, r.version) for r in parse_lockfile(lockfile)[0]] == [("six", "1.16.0")]


@pytest.mark.parametrize(
    "line",
    [
        "--extra-index-url file:///srv/mirror/simple",
        "--index-url http://mirror.example/simple",
        "--extra-index-url https://user:secret@mirror.example/simple",
    ],
)
def test_a_machine_path_or_credential_in_requirements_in_is_refused(tmp_path, cli, line):
    image(tmp_path, f"six==1.16.0\n{line}\n")
    with pytest.raises(LockfileError, match=r"requirements.in:2: "):
        compile_lockfile(tmp_path / "images" / "tiny")
    result = cli("lock", "images/tiny", cwd=tmp_path)
    assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1
    assert "requirements.in:2" in result.stderr and "secret" not in result.stderr


def test_wheel_download_without_pip_configuration_asks_pypi_and_the_lockfile_index_only(tmp_path):
    lockfile = tmp_path / "lock.txt"
    lockfile.write_text(f"# harness: requirements.in sha256={'0' * 64}\n--extra-index-url {TORCH_CPU}\n{SIX_LOCK}")
    plain = tmp_path / "requirements.txt"
    plain.write_text(
        " ".join(line.strip().rstrip("\\") for line in SIX_LOCK.splitlines() if not line.strip().startswith("#")) + "\n"
    )
    first, second = wheel_download_commands(plain, tmp_path / "wheels", lockfile_indexes(lockfile))
    # pip's own configuration alone first, then the same with the lockfile's index added
    assert second == first + ["--extra-index-url", TORCH_CPU]
    for option in ("--index-url", "-i", "--find-links", "-f", "--no-index", "--trusted-host"):
        assert option not in second
    # run it with no pip configuration at all (no file, no PIP_* variable): pip says what it asks
    env = {"PATH": os.environ["PATH"], "HOME": str(tmp_path), "PIP_CONFIG_FILE": os.devnull}
    argv = [arg for arg in second if arg != "--quiet"] + ["--verbose", "--retries", "0", "--timeout", "5", "--no-color"]
    result = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=120)
    output = result.stdout + result.stderr
    asked = re.findall(r"^Looking in indexes: (.*)$", output, re.MULTILINE)
    assert asked == [f"https://pypi.org/simple, {TORCH_CPU}"], output[-2000:]
    assert "Looking in links" not in output
