"""Reading what a workload or a Hub repo left behind, as hostile input.

A run's ``out/`` folder is written by untrusted code, and a pulled run by whoever controls the
repo; the harness reading them runs on the host, often as root. Everything here therefore:

* opens with ``O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC`` relative to a directory descriptor, one
  path component at a time, and checks the *open descriptor* with ``fstat`` (a FIFO, a device, a
  socket or a directory is refused; a symlink is never followed, so it cannot point the harness
  at a host file);
* reads in bounded blocks and stops at a per-file total;
* walks trees iteratively, with a depth and an entry-count limit;
* refuses names that are not valid UTF-8, or that hold a backslash or a control character;
* reports each thing it left out as a ``Skipped(path, reason)``, which goes into the record.
"""

from __future__ import annotations

import errno
import hashlib
import itertools
import os
import stat
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

READ_BLOCK = 1 << 20  # the most one read() asks for
MAX_DEPTH = 64  # folders below the walked root
MAX_ENTRIES = 100_000  # directory entries looked at in one walk
MAX_CHECKSUM_BYTES = 16 << 30  # a file larger than this is left out of a record's checksums
MAX_RECORD_BYTES = 32 << 20  # record.json and other JSON documents the harness reads back
MAX_NAME_BYTES = 255
MAX_REPORTED_SKIPS = 200  # skips kept in a record; the rest are only counted
MAX_LINK_TEXT = 200

_OPEN_FILE = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC | getattr(os, "O_NOCTTY", 0)
_OPEN_DIR = os.O_RDONLY | os.O_NOFOLLOW | os.O_DIRECTORY | os.O_CLOEXEC | os.O_NONBLOCK


class UnsafeFile(Exception):
    """A path the harness will not read; ``reason`` says why in a few words."""

    def __init__(self, path: str, reason: str):
        super().__init__(f"{path}: {reason}")
        self.path = path
        self.reason = reason


@dataclass(frozen=True)
class Skipped:
    """One thing a walk or a reader left out, and why."""

    path: str
    reason: str

    def as_dict(self) -> dict[str, str]:
        """JSON-ready form, for ``record["skipped_files"]``."""
        return {"path": self.path, "reason": self.reason}


@dataclass(frozen=True)
class Entry:
    """A regular file found by ``walk``: its posix path relative to the root, and its size."""

    relative: str
    size: int


def printable(text: str, limit: int = MAX_LINK_TEXT) -> str:
    """``text`` safe to show in a log or a record: escapes for anything unprintable, bounded."""
    shown = "".join(
        c if c.isprintable() and not 0xD800 <= ord(c) <= 0xDFFF else f"\\u{ord(c):04x}" for c in text[: limit + 1]
    )
    return shown if len(shown) <= limit else shown[:limit] + "..."


def terminal_safe(text: str, limit: int = 4000) -> str:
    """A workload's output line for a terminal or CI log: control characters (escape sequences
    that could rewrite the screen or forge lines) shown escaped, tabs kept, length bounded."""
    shown = "".join(
        c if c == "\t" or (c.isprintable() and not 0xD800 <= ord(c) <= 0xDFFF) else f"\\x{ord(c):02x}"
        for c in text[: limit + 1]
    )
    return shown if len(shown) <= limit else shown[:limit] + "..."


def name_problem(name: str) -> str | None:
    """Why a single file name cannot be taken as it is (None: it can)."""
    try:
        encoded = name.encode("utf-8")
    except UnicodeEncodeError:
        return "name is not valid UTF-8"
    if len(encoded) > MAX_NAME_BYTES:
        return "name is too long"
    if "\\" in name:
        return "name holds a backslash"
    if any(ord(c) < 32 or ord(c) == 127 for c in name):
        return "name holds a control character"
    if name in ("", ".", ".."):
        return "empty, '.' or '..' name"
    return None


def relative_path_problem(path: str) -> str | None:
    """Why a repo or record path cannot be used (None: a plain relative posix path below its root).

    The one rule for publish and pull: what one refuses, the other refuses too."""
    if not isinstance(path, str) or not path:
        return "empty path"
    if PurePosixPath(path).is_absolute():
        return "absolute path"
    for part in path.split("/"):
        if part == "..":
            return "path outside its folder"
        problem = name_problem(part)
        if problem:
            return problem
    return None


def _check_regular(fd: int, shown: str, limit: int | None) -> os.stat_result:
    info = os.fstat(fd)
    if stat.S_ISDIR(info.st_mode):
        raise UnsafeFile(shown, "a directory")
    if not stat.S_ISREG(info.st_mode):
        raise UnsafeFile(shown, f"not a regular file ({_kind(info.st_mode)})")
    if limit is not None and info.st_size > limit:
        raise UnsafeFile(shown, f"larger than {limit} bytes ({info.st_size})")
    return info


def _kind(mode: int) -> str:
    for test, name in (
        (stat.S_ISFIFO, "fifo"),
        (stat.S_ISSOCK, "socket"),
        (stat.S_ISCHR, "character device"),
        (stat.S_ISBLK, "block device"),
        (stat.S_ISLNK, "symlink"),
        (stat.S_ISDIR, "directory"),
    ):
        if test(mode):
            return name
    return "special file"


def _open_error(exc: OSError, shown: str, dir_fd: int | None, name: str) -> UnsafeFile:
    if exc.errno in (errno.ELOOP, errno.EMLINK):
        return UnsafeFile(shown, f"symlink (-> {_link_text(dir_fd, name)}, not followed)")
    if exc.errno == errno.ENOTDIR:
        return UnsafeFile(shown, "a path component is not a folder")
    if exc.errno == errno.ENOENT:
        return UnsafeFile(shown, "missing")
    return UnsafeFile(shown, exc.strerror or type(exc).__name__)


def _link_text(dir_fd: int | None, name: str) -> str:
    try:
        return printable(os.readlink(name, dir_fd=dir_fd) if dir_fd is not None else os.readlink(name))
    except (OSError, ValueError):
        return "?"


def open_dir(path: Path | str) -> int:
    """A descriptor of the folder ``path`` (the last component must not be a symlink)."""
    try:
        return os.open(path, _OPEN_DIR)
    except OSError as exc:
        raise _open_error(exc, str(path), None, str(path)) from None


def _components(relative: str | PurePosixPath) -> list[str]:
    parts = [p for p in PurePosixPath(relative).parts if p not in ("", ".")]
    if PurePosixPath(relative).is_absolute() or ".." in parts:
        raise UnsafeFile(str(relative), "path leaves its folder")
    return parts


def open_beneath(root: Path | str, relative: str | PurePosixPath, directory: bool = False) -> int:
    """Open ``root/relative`` without following any symlink below ``root``; the descriptor.

    Each component is opened relative to the previous one with ``O_NOFOLLOW``, so a link planted
    anywhere on the way is refused rather than followed. A file must be regular (checked on the
    descriptor); ``directory=True`` opens a folder instead. UnsafeFile says why not."""
    parts = _components(relative)
    shown = str(relative)
    fd = open_dir(root)
    try:
        for index, part in enumerate(parts):
            last = index == len(parts) - 1
            flags = _OPEN_FILE if last and not directory else _OPEN_DIR
            try:
                child = os.open(part, flags, dir_fd=fd)
            except OSError as exc:
                raise _open_error(exc, shown, fd, part) from None
            os.close(fd)
            fd = child
        if not directory:
            if not parts:
                raise UnsafeFile(shown, "a directory")
            _check_regular(fd, shown, None)
        return fd
    except BaseException:
        os.close(fd)
        raise


def read_fd(fd: int, limit: int, shown: str = "file", offset: int = 0) -> bytes:
    """At most ``limit`` bytes of ``fd`` from ``offset``, in bounded reads; UnsafeFile when more."""
    chunks, total = [], 0
    while True:
        block = os.pread(fd, min(READ_BLOCK, limit + 1 - total), offset + total)
        if not block:
            break
        chunks.append(block)
        total += len(block)
        if total > limit:
            raise UnsafeFile(shown, f"larger than {limit} bytes")
    return b"".join(chunks)


def open_in(dir_fd: int, names: tuple[str, ...], limit: int | None = None) -> tuple[int, os.stat_result]:
    """Open the regular file ``names[0]/.../names[-1]`` below the open folder ``dir_fd``; the
    descriptor and its ``fstat``.

    The lean form of ``open_beneath`` for loops over thousands of files (a store's runs): no path
    objects, the parent folder opened once by the caller. Same guarantees: no symlink followed
    at any component, a file that is not regular or is larger than ``limit`` is UnsafeFile."""
    shown = "/".join(names)
    fd = dir_fd
    try:
        for index, name in enumerate(names):
            flags = _OPEN_FILE if index == len(names) - 1 else _OPEN_DIR
            try:
                child = os.open(name, flags, dir_fd=fd)
            except OSError as exc:
                raise _open_error(exc, shown, fd, name) from None
            if fd != dir_fd:
                os.close(fd)
            fd = child
        return fd, _check_regular(fd, shown, limit)
    except BaseException:
        if fd != dir_fd:
            os.close(fd)
        raise


def read_in(dir_fd: int, names: tuple[str, ...], limit: int = MAX_RECORD_BYTES) -> tuple[bytes, os.stat_result]:
    """The bytes of ``open_in(dir_fd, names, limit)``'s file, at most ``limit``, and its ``fstat``."""
    fd, info = open_in(dir_fd, names, limit)
    try:
        want = min(limit, info.st_size) + 1
        data = os.pread(fd, want, 0)  # one read for a file that does not grow meanwhile
        return (data if len(data) < want else read_fd(fd, limit, "/".join(names))), info
    finally:
        os.close(fd)


def read_bounded(path: Path | str, limit: int = MAX_RECORD_BYTES) -> bytes:
    """The bytes of the regular file ``path`` (not a symlink, FIFO or device), at most ``limit``."""
    path = Path(path)
    fd = open_beneath(path.parent, path.name)
    try:
        _check_regular(fd, str(path), limit)
        return read_fd(fd, limit, str(path))
    finally:
        os.close(fd)


def read_beneath(root: Path | str, relative: str, limit: int) -> bytes:
    """``read_bounded`` of ``root/relative``, with no symlink followed anywhere below ``root``."""
    fd = open_beneath(root, relative)
    try:
        _check_regular(fd, relative, limit)
        return read_fd(fd, limit, relative)
    finally:
        os.close(fd)


def load_json(path: Path | str, limit: int = MAX_RECORD_BYTES) -> Any:
    """A JSON document read with ``read_bounded``; ValueError for anything that is not JSON
    (too deep, bad UTF-8, ...), UnsafeFile for a file that is not safe to read."""
    import json

    data = read_bounded(path, limit)
    try:
        return json.loads(data)
    except (ValueError, RecursionError, UnicodeDecodeError) as exc:
        raise ValueError(f"{path}: not a JSON document ({type(exc).__name__})") from None


def sha256_fd(fd: int, limit: int = MAX_CHECKSUM_BYTES, shown: str = "file") -> str:
    """Hex sha256 of what ``fd`` holds, read in bounded blocks; UnsafeFile past ``limit`` bytes."""
    digest = hashlib.sha256()
    total = 0
    while True:
        block = os.pread(fd, READ_BLOCK, total)
        if not block:
            return digest.hexdigest()
        total += len(block)
        if total > limit:
            raise UnsafeFile(shown, f"larger than {limit} bytes")
        digest.update(block)


def sha256_beneath(root: Path | str, relative: str, limit: int = MAX_CHECKSUM_BYTES) -> str:
    """sha256 of the regular file ``root/relative`` (no symlink followed below ``root``)."""
    fd = open_beneath(root, relative)
    try:
        _check_regular(fd, relative, limit)
        return sha256_fd(fd, limit, relative)
    finally:
        os.close(fd)


def copy_beneath(root: Path | str, relative: str, target: Path, limit: int = MAX_CHECKSUM_BYTES) -> None:
    """Copy the regular file ``root/relative`` (no link followed below ``root``) to ``target``."""
    fd = open_beneath(root, relative)
    try:
        _check_regular(fd, relative, limit)
        target.parent.mkdir(parents=True, exist_ok=True)
        with open(target, "xb") as out:
            offset = 0
            while block := os.pread(fd, READ_BLOCK, offset):
                offset += len(block)
                if offset > limit:
                    raise UnsafeFile(relative, f"larger than {limit} bytes")
                out.write(block)
    finally:
        os.close(fd)


@dataclass
class WalkResult:
    """What ``walk`` found: regular files (sorted by path) and what it left out, with reasons."""

    files: list[Entry]
    skipped: list[Skipped]


def walk(
    root: Path | str,
    max_depth: int = MAX_DEPTH,
    max_entries: int = MAX_ENTRIES,
    skip_names: frozenset[str] = frozenset(),
    below: str = "",
) -> WalkResult:
    """Every regular file under ``root`` (or under ``root/below``), found without following links.

    Iterative (no recursion limit to hit), with at most ``max_depth`` folder levels and
    ``max_entries`` entries looked at; symlinks, special files, bad names and whatever lies past a
    limit are reported in ``skipped``. A missing start folder is an empty result."""
    files: list[Entry] = []
    skipped: list[Skipped] = []
    try:
        start = open_beneath(root, below, directory=True) if below else open_dir(root)
    except UnsafeFile as exc:
        if exc.reason != "missing":
            skipped.append(Skipped(below or ".", exc.reason))
        return WalkResult(files, skipped)
    prefix = "/".join(_components(below)) if below else ""
    # each frame: (descriptor, relative path, remaining entries); at most max_depth + 1 open
    stack: list[tuple[int, str, Iterator[os.DirEntry[str]]]] = []
    seen = 0

    def push(fd: int, relative: str) -> None:
        try:
            with os.scandir(fd) as listing:
                # never more than the walk may still look at: a folder of a billion names stays cheap
                entries = sorted(itertools.islice(listing, max_entries - seen + 1), key=lambda e: e.name)
        except OSError as exc:
            os.close(fd)
            skipped.append(Skipped(relative or ".", f"unreadable folder ({exc.strerror})"))
            return
        stack.append((fd, relative, iter(entries)))

    push(start, prefix)
    try:
        while stack:
            fd, relative, entries = stack[-1]
            entry = next(entries, None)
            if entry is None:
                os.close(fd)
                stack.pop()
                continue
            path = f"{relative}/{entry.name}" if relative else entry.name
            seen += 1
            if seen > max_entries:
                skipped.append(Skipped(relative or ".", f"entry limit of {max_entries} reached; the rest is left out"))
                break
            problem = name_problem(entry.name)
            if problem:
                skipped.append(Skipped(printable(path), problem))
                continue
            if entry.name in skip_names and not relative:
                continue
            try:
                info = entry.stat(follow_symlinks=False)
            except OSError as exc:
                skipped.append(Skipped(path, f"unreadable ({exc.strerror})"))
                continue
            if stat.S_ISLNK(info.st_mode):
                skipped.append(Skipped(path, f"symlink (-> {_link_text(fd, entry.name)}, not followed)"))
            elif stat.S_ISDIR(info.st_mode):
                if len(stack) > max_depth:
                    skipped.append(Skipped(path, f"deeper than {max_depth} folders"))
                    continue
                try:
                    child = os.open(entry.name, _OPEN_DIR, dir_fd=fd)
                except OSError as exc:
                    skipped.append(Skipped(path, _open_error(exc, path, fd, entry.name).reason))
                    continue
                push(child, path)
            elif stat.S_ISREG(info.st_mode):
                files.append(Entry(path, info.st_size))
            else:
                skipped.append(Skipped(path, f"not a regular file ({_kind(info.st_mode)})"))
    finally:
        for fd, _, _ in stack:
            os.close(fd)
    files.sort(key=lambda e: e.relative)
    return WalkResult(files, skipped)


def checksum_files(
    root: Path | str, exclude: frozenset[str] = frozenset(), limit: int = MAX_CHECKSUM_BYTES
) -> tuple[dict[str, str], list[Skipped]]:
    """sha256 of every regular file under ``root`` (top-level names in ``exclude`` left out).

    Each file is opened again beneath ``root`` (no link followed) and checked on its descriptor,
    so a file swapped for a link or a FIFO between the walk and the read is skipped, not read."""
    found = walk(root, skip_names=exclude)
    sums: dict[str, str] = {}
    skipped = list(found.skipped)
    for entry in found.files:
        try:
            sums[entry.relative] = sha256_beneath(root, entry.relative, limit)
        except UnsafeFile as exc:
            skipped.append(Skipped(entry.relative, exc.reason))
        except OSError as exc:
            skipped.append(Skipped(entry.relative, f"unreadable ({exc.strerror})"))
    return sums, skipped


def skipped_for_record(skipped: list[Skipped]) -> list[dict[str, str]]:
    """The first ``MAX_REPORTED_SKIPS`` skips as JSON (a final entry counts the rest)."""
    shown = [s.as_dict() for s in skipped[:MAX_REPORTED_SKIPS]]
    if len(skipped) > MAX_REPORTED_SKIPS:
        shown.append({"path": "...", "reason": f"{len(skipped) - MAX_REPORTED_SKIPS} more left out"})
    return shown
