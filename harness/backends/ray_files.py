"""A run folder carried home through Ray itself, for clusters whose nodes share no file system.

The node packs the files of its sealed record (and record.json) into a gzip'd tar, prints it in
base64 lines of the job's log, then removes its folder; the submitting side reads the lines back
through the Jobs API (:func:`archive_of`) and unpacks them (:func:`unpack_files`). Everything from
a node is hostile: the archive and every member are bounded, only regular files with plain
relative names are taken (no link, no ``../``, no device), nothing is unpacked that the record
does not list, and every file must have the sha256 the record gives it.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import io
import os
import tarfile
import zlib
from pathlib import Path
from typing import Any

from harness.errors import HarnessError
from harness.store.layout import RECORD
from harness.util.safefs import MAX_RECORD_BYTES, UnsafeFile, read_beneath, relative_path_problem

ARCHIVE_MARK = "harness-ray-archive "
ARCHIVE_LIMIT = 256 << 20  # unpacked bytes of one run's archive (tar headers included)
MAX_MEMBERS = 20_000
LINE_CHARS = 64 * 1024  # base64 characters per log line


def pack_files(run_dir: Path, files: dict[str, str], limit: int = ARCHIVE_LIMIT) -> bytes:
    """A gzip'd tar of ``record.json`` and every file ``files`` lists, read below ``run_dir``
    without following links; HarnessError when it would be larger than ``limit``."""
    buffer = io.BytesIO()
    total = 0
    with tarfile.open(fileobj=buffer, mode="w:gz", compresslevel=6) as archive:
        for relative in [RECORD, *sorted(files)]:
            try:
                data = read_beneath(run_dir, relative, limit)
            except UnsafeFile as exc:
                raise HarnessError(f"cannot pack {relative} of {run_dir.name}: {exc}") from None
            total += len(data) + 1024
            if total > limit:
                raise HarnessError(f"run {run_dir.name} is larger than {limit} bytes: too big to send through Ray")
            info = tarfile.TarInfo(relative)
            info.size, info.mode, info.mtime = len(data), 0o644, 0
            archive.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def archive_lines(archive: bytes) -> list[str]:
    """The log lines that carry ``archive``."""
    text = base64.b64encode(archive).decode("ascii")
    return [ARCHIVE_MARK + text[i : i + LINE_CHARS] for i in range(0, len(text), LINE_CHARS)] or [ARCHIVE_MARK]


def archive_of(log: str, digest: str, limit: int = ARCHIVE_LIMIT) -> bytes:
    """The archive that ``log``'s archive lines carry, which must have sha256 ``digest``."""
    chunks: list[str] = []
    size = 0
    for line in log.splitlines():
        if line.startswith(ARCHIVE_MARK):
            chunk = line[len(ARCHIVE_MARK) :].strip()
            size += len(chunk)
            if size > limit * 4 // 3 + 4:
                raise HarnessError(f"the archive in the job's log is larger than {limit} bytes")
            chunks.append(chunk)
    try:
        archive = base64.b64decode("".join(chunks), validate=True)
    except (binascii.Error, ValueError):
        raise HarnessError("the archive in the job's log is not base64") from None
    if hashlib.sha256(archive).hexdigest() != digest:
        raise HarnessError("the archive in the job's log has another sha256 than the job printed")
    return archive


def _gunzip(archive: bytes, limit: int) -> bytes:
    inflate = zlib.decompressobj(16 + zlib.MAX_WBITS)
    try:
        data = inflate.decompress(archive, limit + 1)
    except zlib.error:
        raise HarnessError("the archive from the node is not gzip data") from None
    if len(data) > limit or inflate.unconsumed_tail:
        raise HarnessError(f"the archive from the node unpacks to more than {limit} bytes")
    return data


def unpack_files(archive: bytes, files: dict[str, str], target: Path, limit: int = ARCHIVE_LIMIT) -> dict[str, Any]:
    """Unpack ``archive`` into the new folder ``target``: exactly the files ``files`` lists (each
    with its sha256) and record.json, which is returned, not written. HarnessError naming the first
    member that is not a plain regular file below ``target``, not listed, repeated, or altered."""
    import json

    try:
        members = tarfile.open(fileobj=io.BytesIO(_gunzip(archive, limit)), mode="r:")
    except tarfile.TarError as exc:
        raise HarnessError(f"the archive from the node is not a tar archive ({exc})") from None
    record: dict[str, Any] | None = None
    seen: set[str] = set()
    target.mkdir(parents=True)
    with members:
        for count, member in enumerate(members):
            name = member.name
            shown = repr(name[:80])
            if count >= MAX_MEMBERS:
                raise HarnessError(f"the archive from the node holds more than {MAX_MEMBERS} files")
            problem = relative_path_problem(name)
            if problem:
                raise HarnessError(f"refused {shown} from the node: {problem}")
            if not member.isreg():
                raise HarnessError(f"refused {shown} from the node: not a regular file")
            if name in seen:
                raise HarnessError(f"refused {shown} from the node: it comes twice")
            seen.add(name)
            if name != RECORD and name not in files:
                raise HarnessError(f"refused {shown} from the node: the record does not list it")
            source = members.extractfile(member)
            data = source.read(min(member.size, limit) + 1) if source is not None else b""
            if len(data) != member.size:
                raise HarnessError(f"refused {shown} from the node: not the size its header gives")
            if name == RECORD:
                if len(data) > MAX_RECORD_BYTES:
                    raise HarnessError("refused record.json from the node: too large")
                try:
                    loaded = json.loads(data)
                except ValueError:
                    raise HarnessError("refused record.json from the node: not JSON") from None
                record = loaded if isinstance(loaded, dict) else None
                continue
            if hashlib.sha256(data).hexdigest() != files[name]:
                raise HarnessError(f"{name[:80]} arrived with another sha256 than the node's")
            path = target / name
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644)
            except OSError as exc:
                raise HarnessError(f"refused {shown} from the node: {exc.strerror}") from None
            with os.fdopen(fd, "wb") as out:
                out.write(data)
    missing = sorted(set(files) - seen)
    if missing:
        raise HarnessError(f"{missing[0][:80]} is listed in the record but not in the archive from the node")
    if record is None:
        raise HarnessError("the archive from the node has no usable record.json")
    return record
