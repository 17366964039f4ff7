"""Lockfiles: pip-compile with hashes, and the checks a build relies on."""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from harness.errors import LockfileError
from harness.lockfile import PackageIndex, lockfile_problems, parse_index_option
from harness.util.fsutil import write_text_atomic

INPUT_HASH_PREFIX = "# harness: requirements.in sha256="
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


def requirements_indexes(requirements_in: Path) -> list[PackageIndex]:
    """The package indexes an image's requirements.in names, in order (LockfileError if one is not public)."""
    indexes: list[PackageIndex] = []
    for number, line in enumerate(requirements_in.read_text(encoding="utf-8").splitlines(), 1):
        if not line.startswith("-"):
            continue
        try:
            index = parse_index_option(line)
        except ValueError as exc:
            raise LockfileError(f"{requirements_in}:{number}: {exc}") from None
        if index is not None and index not in indexes:
            indexes.append(index)
    return indexes


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


def compile_lockfile(image_dir: Path, output: Path | None = None, upgrade: bool = False) -> Path:
    """Run pip-compile --generate-hashes on ``image_dir/requirements.in`` and write the lockfile.

    The pins of an existing lockfile are kept where requirements.in still allows them (as
    pip-compile does with its own output); ``upgrade`` resolves everything afresh. Package indexes
    named in requirements.in (``--extra-index-url https://…``) are used by pip-compile and written
    into the lockfile, so that a build can fetch a pinned wheel that PyPI lacks; the machine's own
    pip configuration (mirrors, wheelhouses) is used but never written."""
    requirements_in = image_dir / "requirements.in"
    if not requirements_in.is_file():
        raise LockfileError(f"{requirements_in}: missing; list the image's direct dependencies there")
    indexes = requirements_indexes(requirements_in)
    output = output or lockfile_for(image_dir)
    output.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        compiled = Path(tmp) / "lock.txt"
        if output.is_file() and not upgrade:
            shutil.copyfile(output, compiled)
        # run inside the image folder so that "# via -r requirements.in" names no machine path
        cmd = [sys.executable, "-m", "piptools", "compile", *COMPILE_FLAGS, "-o", str(compiled), "requirements.in"]
        result = subprocess.run(
            cmd,
            capture_output=True,
            text=True,
            cwd=image_dir,
            env={**os.environ, "CUSTOM_COMPILE_COMMAND": "harness lock"},
        )
        if result.returncode != 0:
            tail = (result.stderr.strip().splitlines() or ["(no output)"])[-1]
            raise LockfileError(f"{requirements_in}: pip-compile failed: {tail}")
        header = (
            f"# Locked by `harness lock {image_dir.name}` (pip-compile --generate-hashes); do not edit.\n"
            f"{INPUT_HASH_PREFIX}{requirements_hash(requirements_in)}\n" + "".join(f"{index}\n" for index in indexes)
        )
        body = compiled.read_text(encoding="utf-8")
        write_text_atomic(output, header + body)
    problems = lockfile_problems(output)
    if problems:
        raise LockfileError(f"{output}: {problems[0]}")
    return output


@dataclass(frozen=True)
class StaleLockfile:
    """A lockfile that a build cannot use as it is: where (file and line) and how to fix it."""

    image: str
    file: Path
    line: int
    problem: str

    def __str__(self) -> str:
        return f"{self.image}: {self.problem}"


def stale_lockfiles(root: Path) -> list[StaleLockfile]:
    """Each image under ``root/images`` whose lockfile is missing, unusable or older than its requirements.in."""
    found: list[StaleLockfile] = []
    for requirements_in in sorted((root / "images").glob("*/requirements.in")):
        image_dir = requirements_in.parent
        lockfile = lockfile_for(image_dir)
        relative = lockfile.relative_to(root.resolve())
        fix = f"run `harness lock images/{image_dir.name}` and commit {relative}"
        if not lockfile.is_file():
            found.append(
                StaleLockfile(image_dir.name, requirements_in.relative_to(root), 1, f"no lockfile {relative} ({fix})")
            )
            continue
        problems = lockfile_problems(lockfile)
        if problems:
            at = re.match(r"line (\d+): ", problems[0])
            found.append(
                StaleLockfile(
                    image_dir.name, relative, int(at.group(1)) if at else 1, f"{relative} {problems[0]} ({fix})"
                )
            )
        elif recorded_input_hash(lockfile) != requirements_hash(requirements_in):
            lines = lockfile.read_text(encoding="utf-8").splitlines()
            number = next((n for n, line in enumerate(lines, 1) if line.startswith(INPUT_HASH_PREFIX)), 1)
            found.append(
                StaleLockfile(
                    image_dir.name, relative, number, f"requirements.in changed since {relative} was made ({fix})"
                )
            )
    return found
