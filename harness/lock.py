"""Lockfiles: pip-compile with hashes, and the checks a build relies on."""

from __future__ import annotations

import hashlib
import os
import re
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from harness.errors import LockfileError
from harness.fsutil import write_text_atomic

INPUT_HASH_PREFIX = "# harness: requirements.in sha256="
PINNED = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)(\[[^\]]*\])?==([^\s;\\]+)")
HASH = re.compile(r"--hash=sha256:[0-9a-f]{64}")
COMPILE_FLAGS = [
    "--generate-hashes",
    "--allow-unsafe",
    "--no-emit-index-url",
    "--no-emit-find-links",
    "--no-emit-trusted-host",
    "--strip-extras",
    "--no-header",
    "--quiet",
]


@dataclass(frozen=True)
class Requirement:
    """One locked requirement."""

    name: str
    version: str
    hashes: tuple[str, ...]


def _logical_lines(text: str) -> list[tuple[int, str]]:
    """Join backslash continuations; drop comments. Returns (first line number, text)."""
    joined: list[tuple[int, str]] = []
    buffer, start = "", 0
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.split(" #", 1)[0].rstrip() if not raw.lstrip().startswith("#") else ""
        if not buffer:
            start = number
        if line.endswith("\\"):
            buffer += line[:-1] + " "
            continue
        buffer += line
        if buffer.strip():
            joined.append((start, buffer.strip()))
        buffer = ""
    if buffer.strip():
        joined.append((start, buffer.strip()))
    return joined


def parse_lockfile(path: Path) -> tuple[list[Requirement], list[str]]:
    """Requirements of a lockfile and the problems that make it unusable for a hashed install."""
    requirements: list[Requirement] = []
    problems: list[str] = []
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        return [], [f"cannot read {path}: {exc.strerror}"]
    for number, line in _logical_lines(text):
        if line.startswith("-"):
            problems.append(f"line {number}: option {line.split()[0]!r} is not allowed (indexes are passed to the build separately)")
            continue
        match = PINNED.match(line)
        if not match:
            problems.append(f"line {number}: {line.split()[0]!r} is not pinned with == (run `harness lock`)")
            continue
        hashes = tuple(h.removeprefix("--hash=") for h in HASH.findall(line))
        if not hashes:
            problems.append(f"line {number}: {match.group(1)}=={match.group(3)} has no --hash (run `harness lock`)")
            continue
        requirements.append(Requirement(match.group(1).lower(), match.group(3), hashes))
    if not requirements and not problems:
        problems.append("no requirements in the lockfile")
    return requirements, problems


def lockfile_problems(path: Path) -> list[str]:
    """Problems that make ``path`` unusable for ``pip install --require-hashes`` (empty: fine)."""
    return parse_lockfile(path)[1]


def requirements_hash(requirements_in: Path) -> str:
    """sha256 of an image's requirements.in, recorded in its lockfile to detect staleness."""
    return hashlib.sha256(requirements_in.read_bytes()).hexdigest()


def recorded_input_hash(lockfile: Path) -> str | None:
    """The requirements.in hash a lockfile was made from, if it says."""
    for line in lockfile.read_text(encoding="utf-8").splitlines()[:10]:
        if line.startswith(INPUT_HASH_PREFIX):
            return line.removeprefix(INPUT_HASH_PREFIX).strip()
    return None


def lockfile_for(image_dir: Path) -> Path:
    """Where an image folder's lockfile lives: lockfiles/<name>.txt beside images/."""
    return image_dir.resolve().parent.parent / "lockfiles" / f"{image_dir.resolve().name}.txt"


def compile_lockfile(image_dir: Path, output: Path | None = None) -> Path:
    """Run pip-compile --generate-hashes on ``image_dir/requirements.in`` and write the lockfile."""
    requirements_in = image_dir / "requirements.in"
    if not requirements_in.is_file():
        raise LockfileError(f"{requirements_in}: missing; list the image's direct dependencies there")
    output = output or lockfile_for(image_dir)
    output.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        compiled = Path(tmp) / "lock.txt"
        # run inside the image folder so that "# via -r requirements.in" names no machine path
        cmd = [sys.executable, "-m", "piptools", "compile", *COMPILE_FLAGS, "-o", str(compiled), "requirements.in"]
        result = subprocess.run(cmd, capture_output=True, text=True, cwd=image_dir,
                                env={**os.environ, "CUSTOM_COMPILE_COMMAND": "harness lock"})
        if result.returncode != 0:
            tail = (result.stderr.strip().splitlines() or ["(no output)"])[-1]
            raise LockfileError(f"{requirements_in}: pip-compile failed: {tail}")
        header = (
            f"# Locked by `harness lock {image_dir.name}` (pip-compile --generate-hashes); do not edit.\n"
            f"{INPUT_HASH_PREFIX}{requirements_hash(requirements_in)}\n"
        )
        body = compiled.read_text(encoding="utf-8")
        write_text_atomic(output, header + body)
    problems = lockfile_problems(output)
    if problems:
        raise LockfileError(f"{output}: {problems[0]}")
    return output


def stale_lockfiles(root: Path) -> list[str]:
    """Each image under ``root/images`` whose lockfile is missing, unusable or older than its requirements.in."""
    found = []
    for requirements_in in sorted((root / "images").glob("*/requirements.in")):
        image_dir = requirements_in.parent
        lockfile = lockfile_for(image_dir)
        if not lockfile.is_file():
            found.append(f"{image_dir.name}: no lockfile {lockfile.relative_to(root)}")
            continue
        problems = lockfile_problems(lockfile)
        if problems:
            found.append(f"{image_dir.name}: {problems[0]}")
        elif recorded_input_hash(lockfile) != requirements_hash(requirements_in):
            found.append(f"{image_dir.name}: requirements.in changed since {lockfile.relative_to(root)} was made")
    return found
