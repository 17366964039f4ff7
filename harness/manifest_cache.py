"""Validated manifests cached by content, so that a warm ``harness run`` or ``harness build``
loads its manifest without pydantic or YAML (about a third of its start-up).

An entry is the model's plain dump as JSON under ``<cache>/manifests/<key>.json``; the key is the
sha256 of the manifest's text and of the code that validates it. The files a manifest points to
(recipe, lockfile) are checked afresh on every load, cached or not. The cache folder is treated as
hostile like any other file read back: an entry is read with the bounded, link-refusing reader,
and one that is not exactly what this module writes (a link, a huge file, bad JSON, the wrong
shape or types, another key) is ignored, the manifest validated in full, and the entry rewritten.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
from pathlib import Path
from typing import Any

import harness
from harness.errors import ManifestError
from harness.loaded_manifest import (
    MAX_MANIFEST_BYTES,
    LoadedManifest,
    file_problems,
    manifest_text,
    project_root_for,
    view_of,
)
from harness.util.fsutil import cache_root

FORMAT = "harness-manifest-cache/1"
MAX_ENTRIES = 256
MAX_ENTRY_BYTES = 4 * MAX_MANIFEST_BYTES
# the modules whose code decides what a manifest validates to: a change to either is a new key
VALIDATING_SOURCES = ("manifest.py", "loaded_manifest.py")
LINE_KEYS = (("image", "build"), ("image", "lockfile"))


def cache_dir() -> Path:
    """Where validated manifests are kept: ``<harness cache>/manifests``."""
    return cache_root() / "manifests"


@functools.cache  # the validating code does not change while the process runs
def _code_fingerprint() -> bytes:
    digest = hashlib.sha256(f"{FORMAT}\0{harness.__version__}\0".encode())
    package = Path(harness.__file__).parent
    for name in VALIDATING_SOURCES:
        digest.update((package / name).read_bytes())
    return digest.digest()


def cache_key(text: str) -> str:
    """The key of a manifest's text under the code validating it now."""
    return hashlib.sha256(_code_fingerprint() + text.encode("utf-8")).hexdigest()


def load_manifest(path: str | Path) -> LoadedManifest:
    """``harness.manifest.load_manifest``, from the cache when this text was validated before.

    Errors are those of a full validation: a manifest that does not validate is never cached."""
    path = Path(path)
    text = _read_text(path)
    key = cache_key(text) if text is not None else None
    cached = _read_entry(key) if key is not None else None
    if cached is not None and text is not None:
        dump, lines = cached
        try:
            view = view_of(dump)
        except (ValueError, TypeError, KeyError, AttributeError):
            view = None
        if view is not None:
            root = project_root_for(path)
            problems = file_problems(path, view.image, root, lines)
            if problems:
                raise ManifestError(problems)
            return LoadedManifest(path, view, root, text, make_model=_model_of)
    from harness.manifest import load_with_lines

    loaded, all_lines = load_with_lines(path)
    if key is not None and loaded.text == text:
        _write_entry(key, loaded.view.dump, {k: all_lines[k] for k in LINE_KEYS if k in all_lines})
    return loaded


def _model_of(dump: dict[str, Any]) -> Any:
    from harness.manifest import Manifest

    return Manifest.model_validate(dump)


def _read_text(path: Path) -> str | None:
    """The manifest's text, or None where it cannot be cached (the full load then says why)."""
    try:
        with open(path, "rb") as handle:
            data = handle.read(MAX_MANIFEST_BYTES + 1)
        if len(data) > MAX_MANIFEST_BYTES:
            return None
        return manifest_text(data)
    except (OSError, UnicodeDecodeError):
        return None


def _read_entry(key: str) -> tuple[dict[str, Any], dict[tuple, int]] | None:
    """The dump and lines of the entry for ``key``; None for a missing or unusable one."""
    from harness.util.safefs import UnsafeFile, read_bounded

    try:
        entry = json.loads(read_bounded(cache_dir() / f"{key}.json", MAX_ENTRY_BYTES))
    except (OSError, UnsafeFile, ValueError, RecursionError):
        return None
    if not isinstance(entry, dict) or entry.get("format") != FORMAT or entry.get("key") != key:
        return None
    try:  # its age is its last use: the least recently used entries are pruned first
        os.utime(cache_dir() / f"{key}.json", follow_symlinks=False)
    except OSError:
        pass
    dump, lines = entry.get("manifest"), entry.get("lines")
    if not isinstance(dump, dict) or not isinstance(lines, dict):
        return None
    found: dict[tuple, int] = {}
    for name, line in lines.items():
        parts = tuple(name.split("."))
        if parts not in LINE_KEYS or not isinstance(line, int) or isinstance(line, bool) or line < 1:
            return None
        found[parts] = line
    return dump, found


def _write_entry(key: str, dump: dict[str, Any], lines: dict[tuple, int]) -> None:
    """Keep the entry (atomically), and at most MAX_ENTRIES entries, the oldest dropped first. A
    cache that cannot be written is no error: the next load validates again."""
    from harness.util.fsutil import write_text_atomic

    entry = {"format": FORMAT, "key": key, "manifest": dump, "lines": {".".join(k): v for k, v in lines.items()}}
    folder = cache_dir()
    try:
        # key order kept: a sweep grid runs in the order its manifest lists the params
        write_text_atomic(folder / f"{key}.json", json.dumps(entry))
        _prune(folder)
    except (OSError, TypeError, ValueError):
        pass


def _prune(folder: Path) -> None:
    entries: list[tuple[float, str]] = []
    with os.scandir(folder) as listing:
        for item in listing:
            if item.name.endswith(".json") and item.is_file(follow_symlinks=False):
                entries.append((item.stat(follow_symlinks=False).st_mtime, item.name))
    for _, name in sorted(entries)[: max(len(entries) - MAX_ENTRIES, 0)]:
        try:
            os.unlink(folder / name)
        except OSError:
            pass
