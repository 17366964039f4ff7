"""On-disk storage of the test Hub: content-addressed blobs, one JSON file per commit, branch refs.

Layout under the root folder::

    blobs/<sha256>                              file contents, shared by every repo
    repos/<type>s/<namespace>/<name>/repo.json  {"private": bool, "created_at": iso}
    repos/<type>s/<namespace>/<name>/commits/<commit id>.json
    repos/<type>s/<namespace>/<name>/refs/<branch>   the branch head's commit id

A commit file holds the whole tree (path -> blob sha256, size, git oid, lfs flag), so a commit is
made visible by one atomic rename of the branch ref after its commit file is on disk.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import tempfile
import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

COMMIT_ID = re.compile(r"^[0-9a-f]{40}$")
NAME_PART = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,95}$")
REPO_TYPES = ("model", "dataset", "space")


class HubStorageError(Exception):
    """A request the storage refuses; ``code`` is the Hub's X-Error-Code, ``status`` the HTTP status."""

    def __init__(self, status: int, message: str, code: str | None = None):
        super().__init__(message)
        self.status = status
        self.code = code


@dataclass(frozen=True)
class RepoRef:
    """One repository: its type ("dataset", ...) and id ("namespace/name")."""

    repo_type: str
    repo_id: str


def git_blob_oid(data: bytes) -> str:
    """The git object id of a blob with these bytes (what the Hub reports for regular files)."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def lfs_pointer(sha256: str, size: int) -> bytes:
    """The git-lfs pointer file that git would store for an LFS object."""
    return f"version https://git-lfs.github.com/spec/v1\noid sha256:{sha256}\nsize {size}\n".encode()


def _atomic_write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


class HubStorage:
    """Repositories, commits and blobs of the test Hub under one root folder."""

    def __init__(self, root: Path):
        self.root = Path(root)
        self.blobs = self.root / "blobs"
        self.blobs.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()

    # -- repositories --------------------------------------------------------------------------

    def repo_dir(self, repo: RepoRef) -> Path:
        """Folder of a repository, after checking the id cannot leave the root."""
        parts = repo.repo_id.split("/")
        if repo.repo_type not in REPO_TYPES or len(parts) != 2 or not all(NAME_PART.match(p) for p in parts):
            raise HubStorageError(400, f"invalid repo id {repo.repo_id!r}")
        return self.root / "repos" / f"{repo.repo_type}s" / parts[0] / parts[1]

    def exists(self, repo: RepoRef) -> bool:
        """Whether the repository was created."""
        return (self.repo_dir(repo) / "repo.json").is_file()

    def meta(self, repo: RepoRef) -> dict[str, Any]:
        """The repository's settings; RepoNotFound when it does not exist."""
        path = self.repo_dir(repo) / "repo.json"
        if not path.is_file():
            raise HubStorageError(404, f"Repository {repo.repo_id} not found", "RepoNotFound")
        return json.loads(path.read_text())

    def create_repo(self, repo: RepoRef, private: bool) -> bool:
        """Create a repository with an empty initial commit; False when it already exists."""
        with self._lock:
            if self.exists(repo):
                return False
            folder = self.repo_dir(repo)
            created = _now()
            commit = self._write_commit(repo, parent=None, tree={}, title="initial commit", message="", author="system")
            _atomic_write(folder / "refs" / "main", commit.encode())
            _atomic_write(folder / "repo.json", json.dumps({"private": private, "created_at": created}).encode())
            return True

    # -- revisions and commits -----------------------------------------------------------------

    def resolve(self, repo: RepoRef, revision: str) -> str:
        """The commit id a branch name or commit id names; RevisionNotFound otherwise."""
        self.meta(repo)
        folder = self.repo_dir(repo)
        if COMMIT_ID.match(revision) and (folder / "commits" / f"{revision}.json").is_file():
            return revision
        if NAME_PART.match(revision) and (folder / "refs" / revision).is_file():
            return (folder / "refs" / revision).read_text().strip()
        raise HubStorageError(404, f"Revision {revision!r} not found in {repo.repo_id}", "RevisionNotFound")

    def commit(self, repo: RepoRef, commit_id: str) -> dict[str, Any]:
        """The stored commit: id, parent, title, message, author, date, tree."""
        return json.loads((self.repo_dir(repo) / "commits" / f"{commit_id}.json").read_text())

    def history(self, repo: RepoRef, commit_id: str) -> list[dict[str, Any]]:
        """Commits from ``commit_id`` back to the first one, newest first."""
        found = []
        current: str | None = commit_id
        while current:
            commit = self.commit(repo, current)
            found.append(commit)
            current = commit["parent"]
        return found

    def _write_commit(
        self, repo: RepoRef, parent: str | None, tree: dict[str, Any], title: str, message: str, author: str
    ) -> str:
        body = {"parent": parent, "tree": tree, "title": title, "message": message, "author": author, "date": _now()}
        commit_id = hashlib.sha1(json.dumps(body, sort_keys=True).encode() + os.urandom(8)).hexdigest()
        body["id"] = commit_id
        _atomic_write(self.repo_dir(repo) / "commits" / f"{commit_id}.json", json.dumps(body, indent=1).encode())
        return commit_id

    def apply_commit(
        self,
        repo: RepoRef,
        branch: str,
        operations: list[dict[str, Any]],
        title: str,
        message: str,
        parent_commit: str | None,
        author: str,
    ) -> str:
        """Apply NDJSON commit operations on top of the branch head and move the branch; returns the commit id.

        ``operations`` are the client's lines after the header: ``file`` (base64 content already decoded
        into ``data``), ``lfsFile``, ``deletedFile``, ``deletedFolder``.
        """
        with self._lock:
            head = self.resolve(repo, branch)
            if parent_commit is not None and parent_commit != head:
                raise HubStorageError(412, f"parent commit {parent_commit} is not the head of {branch} ({head})")
            tree = dict(self.commit(repo, head)["tree"])
            for op in operations:
                path = op["path"]
                if op["key"] == "file":
                    tree[path] = self._entry_for_bytes(op["data"], lfs=False)
                elif op["key"] == "lfsFile":
                    tree[path] = self._entry_for_lfs(op["oid"])
                elif op["key"] == "deletedFile":
                    if tree.pop(path, None) is None:
                        raise HubStorageError(404, f"A file with this name doesn't exist: {path}", "EntryNotFound")
                elif op["key"] == "deletedFolder":
                    prefix = path.rstrip("/") + "/"
                    for existing in [p for p in tree if p.startswith(prefix)]:
                        del tree[existing]
            commit_id = self._write_commit(repo, head, tree, title, message, author)
            _atomic_write(self.repo_dir(repo) / "refs" / branch, commit_id.encode())
            return commit_id

    def _entry_for_bytes(self, data: bytes, lfs: bool) -> dict[str, Any]:
        sha256 = self.put_blob(data)
        return self._entry(sha256, len(data), lfs=lfs, data=data)

    def _entry_for_lfs(self, sha256: str) -> dict[str, Any]:
        blob = self.blob_path(sha256)
        if not blob.is_file():
            raise HubStorageError(422, f"LFS object {sha256} was not uploaded")
        return self._entry(sha256, blob.stat().st_size, lfs=True)

    @staticmethod
    def _entry(sha256: str, size: int, lfs: bool, data: bytes | None = None) -> dict[str, Any]:
        if lfs:
            pointer = lfs_pointer(sha256, size)
            return {
                "sha256": sha256,
                "size": size,
                "lfs": True,
                "oid": git_blob_oid(pointer),
                "pointer_size": len(pointer),
            }
        assert data is not None
        return {"sha256": sha256, "size": size, "lfs": False, "oid": git_blob_oid(data)}

    # -- blobs -----------------------------------------------------------------------------------

    def blob_path(self, sha256: str) -> Path:
        """Where the blob with this sha256 lives (it may not exist)."""
        if not re.fullmatch(r"[0-9a-f]{64}", sha256):
            raise HubStorageError(400, f"invalid sha256 {sha256!r}")
        return self.blobs / sha256

    def put_blob(self, data: bytes) -> str:
        """Store bytes under their sha256 and return it."""
        sha256 = hashlib.sha256(data).hexdigest()
        path = self.blob_path(sha256)
        if not path.is_file():
            _atomic_write(path, data)
        return sha256

    def put_blob_file(self, tmp_path: Path, expected_sha256: str, expected_size: int) -> None:
        """Move an uploaded temporary file into the blob store after checking its hash and size."""
        digest = hashlib.sha256()
        with open(tmp_path, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
        if digest.hexdigest() != expected_sha256 or tmp_path.stat().st_size != expected_size:
            tmp_path.unlink(missing_ok=True)
            raise HubStorageError(400, f"uploaded content does not match oid {expected_sha256} / size {expected_size}")
        os.replace(tmp_path, self.blob_path(expected_sha256))

    def upload_tmp(self) -> Path:
        """A fresh temporary file inside the store (same file system, so the final move is a rename)."""
        folder = self.root / "tmp"
        folder.mkdir(exist_ok=True)
        fd, name = tempfile.mkstemp(dir=folder, prefix=f"upload-{time.monotonic_ns()}-")
        os.close(fd)
        return Path(name)

    # -- test helpers: craft repositories the client could never make ----------------------------

    def force_commit(self, repo: RepoRef, files: dict[str, bytes], title: str = "crafted commit") -> str:
        """Commit ``files`` exactly as given (no path checks) on main; for tests of hostile repos."""
        with self._lock:
            head = self.resolve(repo, "main")
            tree = dict(self.commit(repo, head)["tree"])
            for path, data in files.items():
                tree[path] = self._entry_for_bytes(data, lfs=False)
            commit_id = self._write_commit(repo, head, tree, title, "", "attacker")
            _atomic_write(self.repo_dir(repo) / "refs" / "main", commit_id.encode())
            return commit_id

    def tamper(self, repo: RepoRef, path: str, data: bytes) -> None:
        """Overwrite the stored bytes of ``path`` at main's head in place, as a compromised server would."""
        entry = self.commit(repo, self.resolve(repo, "main"))["tree"][path]
        self.blob_path(entry["sha256"]).write_bytes(data)
