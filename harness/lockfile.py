"""Lockfiles as a build reads them: hashed pins and the public package indexes they name, and the
problems that make a lockfile unusable for ``pip install --require-hashes``.

A manifest's lockfile is checked when the manifest is loaded, so this reader sits beside the
manifest; making lockfiles (pip-compile) is ``harness.images.lock``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

# The only options a lockfile may carry: public package indexes that a pinned wheel needs (the
# CPU build of torch comes from PyTorch's own index, PyPI refuses local versions like +cpu).
INDEX_OPTIONS = ("--index-url", "--extra-index-url")
PINNED = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)(\[[^\]]*\])?==([^\s;\\]+)")
HASH = re.compile(r"--hash=sha256:[0-9a-f]{64}")


@dataclass(frozen=True)
class PackageIndex:
    """A public package index named by a requirements.in or a lockfile: ``--extra-index-url URL``."""

    option: str
    url: str

    def as_args(self) -> list[str]:
        """The pip arguments that add this index."""
        return [self.option, self.url]

    def __str__(self) -> str:
        return f"{self.option} {self.url}"


def parse_index_option(line: str) -> PackageIndex | None:
    """The index a requirements line names (``--extra-index-url URL`` or ``=URL``), else None.

    Raises ValueError with what to change when the index is not a public https URL: a lockfile is
    committed and shared, so it carries no machine paths and no credentials."""
    text = line.split(" #", 1)[0].strip()
    option, _, rest = text.partition(" ")
    if "=" in option:
        option, _, rest = text.partition("=")
    option = {"-i": "--index-url"}.get(option, option)
    if option not in INDEX_OPTIONS:
        return None
    url = rest.strip()
    parts = urlsplit(url)
    if parts.scheme != "https" or not parts.hostname or " " in url:
        raise ValueError(
            f"{option} {url!r}: only a public https:// index may be named (put local mirrors in pip's configuration)"
        )
    if "@" in parts.netloc:
        raise ValueError(
            f"{option}: the URL carries credentials; put them in pip's configuration or keyring, not in a committed file"
        )
    return PackageIndex(option, url)


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
    requirements, _indexes, problems = read_lockfile(path)
    return requirements, problems


def lockfile_indexes(path: Path) -> list[PackageIndex]:
    """The public package indexes a lockfile names for its pinned wheels (``--extra-index-url`` lines)."""
    return read_lockfile(path)[1]


def read_lockfile(path: Path) -> tuple[list[Requirement], list[PackageIndex], list[str]]:
    """Requirements, package indexes and problems of a lockfile (problems make it unusable)."""
    requirements: list[Requirement] = []
    indexes: list[PackageIndex] = []
    problems: list[str] = []
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        return [], [], [f"cannot read {path}: {exc.strerror}"]
    for number, line in _logical_lines(text):
        if line.startswith("-"):
            try:
                index = parse_index_option(line)
            except ValueError as exc:
                problems.append(f"line {number}: {exc}")
                continue
            if index is None:
                problems.append(
                    f"line {number}: option {line.split()[0]!r} is not allowed "
                    "(only --index-url/--extra-index-url with a public https URL)"
                )
            elif index not in indexes:
                indexes.append(index)
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
    return requirements, indexes, problems


TARGET_PYTHON = re.compile(r"^# harness: python (3\.\d{1,2})\s*$", re.MULTILINE)


def lockfile_python(path: Path) -> str | None:
    """The Python a lockfile's wheels are for, when it is not the host's (``# harness: python 3.9``,
    written by ``harness import`` for an image on another Python); None: the host's."""
    try:
        match = TARGET_PYTHON.search(path.read_text(encoding="utf-8", errors="replace")[:4096])
    except OSError:
        return None
    return match.group(1) if match else None


def lockfile_problems(path: Path) -> list[str]:
    """Problems that make ``path`` unusable for ``pip install --require-hashes`` (empty: fine)."""
    return parse_lockfile(path)[1]
