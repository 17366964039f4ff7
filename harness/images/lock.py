"""Lockfiles: pip-compile with hashes, and the checks a build relies on."""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
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
    "--verbose",  # streamed as progress lines: what is being resolved and hashed
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


@dataclass
class CompileProgress:
    """Reads pip-compile's verbose output line by line: says what it is doing (through ``say``)
    and times its two phases, resolving (rounds of collecting candidates) and hashing (every file
    of every pinned version, downloaded when the index does not publish its hash)."""

    say: Callable[[str], None] = lambda line: None
    started: float = field(default_factory=time.monotonic)
    phase: str = "resolving"
    rounds: int = 0
    collected: int = 0
    hashing_started: float | None = None
    current: tuple[str, float] | None = None  # the package being hashed and since when
    hash_seconds: dict[str, float] = field(default_factory=dict)
    tail: list[str] = field(default_factory=list)  # the last lines, for an error message

    def feed(self, line: str) -> None:
        """One line of pip-compile's output."""
        text = line.strip()
        if text:
            self.tail = [*self.tail[-19:], text]
        now = time.monotonic()
        if text.startswith("ROUND "):
            self.rounds += 1
            self.say(f"[{now - self.started:.0f}s] resolving: round {self.rounds}")
        elif text.startswith("Collecting "):
            self.collected += 1
            self.say(f"[{now - self.started:.0f}s] resolving: {text[len('Collecting ') :].split(' (from')[0]}")
        elif text.startswith("Generating hashes"):
            self.phase, self.hashing_started = "hashing", now
            self.say(
                f"[{now - self.started:.0f}s] resolved in {now - self.started:.0f}s; hashing every file of each pin"
            )
        elif self.phase == "hashing" and line.startswith("  ") and not line.startswith("   ") and " " not in text:
            self._end_package(now)
            self.current = (text, now)
            self.say(f"[{now - self.started:.0f}s] hashing: {text}")

    def _end_package(self, now: float) -> None:
        if self.current is not None:
            name, since = self.current
            self.hash_seconds[name] = now - since
            self.current = None

    def summary(self) -> str:
        """Where the time went, in one line."""
        now = time.monotonic()
        self._end_package(now)
        total = now - self.started
        if self.hashing_started is None:
            return f"pip-compile took {total:.0f}s"
        resolving = self.hashing_started - self.started
        slowest = sorted(self.hash_seconds.items(), key=lambda item: -item[1])[:3]
        shown = ", ".join(f"{name} {seconds:.0f}s" for name, seconds in slowest if seconds >= 1)
        return (
            f"pip-compile took {total:.0f}s: resolving {resolving:.0f}s ({self.rounds} rounds), "
            f"hashing {now - self.hashing_started:.0f}s ({len(self.hash_seconds)} packages"
            + (f"; slowest {shown}" if shown else "")
            + ")"
        )


def lockfile_is_current(image_dir: Path, output: Path | None = None) -> bool:
    """Whether the image's lockfile was made from its requirements.in as it is now and is usable:
    a re-lock would keep every pin, so it can be skipped."""
    output = output or lockfile_for(image_dir)
    requirements_in = image_dir / "requirements.in"
    if not output.is_file() or not requirements_in.is_file():
        return False
    return recorded_input_hash(output) == requirements_hash(requirements_in) and not lockfile_problems(output)


def compile_lockfile(
    image_dir: Path,
    output: Path | None = None,
    upgrade: bool = False,
    progress: CompileProgress | None = None,
) -> Path:
    """Run pip-compile --generate-hashes on ``image_dir/requirements.in`` and write the lockfile.

    The pins of an existing lockfile are kept where requirements.in still allows them (as
    pip-compile does with its own output); ``upgrade`` resolves everything afresh. Package indexes
    named in requirements.in (``--extra-index-url https://…``) are used by pip-compile and written
    into the lockfile, so that a build can fetch a pinned wheel that PyPI lacks; the machine's own
    pip configuration (mirrors, wheelhouses) is used but never written. ``progress`` is fed
    pip-compile's output as it comes."""
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
        progress = progress or CompileProgress()
        with subprocess.Popen(
            cmd,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            text=True,
            errors="replace",
            cwd=image_dir,
            env={**os.environ, "CUSTOM_COMPILE_COMMAND": "harness lock"},
        ) as process:
            assert process.stdout is not None
            for line in process.stdout:
                progress.feed(line.rstrip("\n"))
        if process.returncode != 0:
            errors = [line for line in progress.tail if "error" in line.lower()] or progress.tail or ["(no output)"]
            raise LockfileError(f"{requirements_in}: pip-compile failed: {errors[-1]}")
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
