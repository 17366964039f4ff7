"""HTTP front of the test Hub: the routes huggingface_hub's HfApi, hf_hub_download and HfFileSystem use.

Built to the protocol in the installed client (hf_api.py, _commit_api.py, lfs.py, file_download.py,
utils/_http.py). Errors carry the Hub's ``X-Error-Code`` / ``X-Error-Message`` headers and a JSON
``{"error": ...}`` body, which the client turns into its typed exceptions.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import re
import secrets
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import yaml

from tests.hubserver.storage import HubStorage, HubStorageError, RepoRef

LFS_SIZE_THRESHOLD = 10 * 1024 * 1024
TRANSFER_CHUNK = 256 * 1024  # bytes of a file body written or read at a time
# The Hub's default .gitattributes stores these with LFS whatever their size.
LFS_SUFFIXES = (".parquet", ".arrow", ".bin", ".pt", ".safetensors", ".zip", ".gz", ".png")
USER = "tester"
PREFIXES = {"datasets": "dataset", "spaces": "space", "models": "model"}
INVALID_TOKEN = "Invalid credentials in Authorization header"


@dataclass
class Faults:
    """Failures the server injects, for fault tests: cut the connection during the next N commits;
    move file bodies (uploads and downloads) at most ``throttle`` bytes a second (0: at full speed),
    so that a test can cut a large transfer while it is under way."""

    drop_commits: int = 0
    throttle: int = 0


class HubHandler(BaseHTTPRequestHandler):
    """One request: routes by method and path to the handlers below."""

    protocol_version = "HTTP/1.1"
    server: HubHTTPServer

    # -- plumbing ---------------------------------------------------------------------------------

    def log_message(self, format: str, *args: Any) -> None:
        if self.server.verbose:
            super().log_message(format, *args)

    def _send(
        self, status: int, body: bytes = b"", headers: dict[str, str] | None = None, ctype: str = "application/json"
    ) -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command == "HEAD":
            return
        view = memoryview(body)
        for start in range(0, len(body), TRANSFER_CHUNK):
            self._pace(TRANSFER_CHUNK)
            self.wfile.write(view[start : start + TRANSFER_CHUNK])

    def _pace(self, size: int) -> None:
        """Wait as long as ``size`` bytes take at the throttled rate."""
        if self.server.faults.throttle > 0:
            time.sleep(size / self.server.faults.throttle)

    def _json(self, status: int, data: Any, headers: dict[str, str] | None = None) -> None:
        self._send(status, json.dumps(data).encode(), headers)

    def _error(self, status: int, message: str, code: str | None = None, headers: dict[str, str] | None = None) -> None:
        extra = {"X-Error-Message": message, **(headers or {})}
        if code:
            extra["X-Error-Code"] = code
        self._json(status, {"error": message}, extra)

    def _body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            chunks = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip(), 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    return b"".join(chunks)
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def _token(self) -> str | None:
        auth = self.headers.get("Authorization", "")
        return auth[7:].strip() if auth.lower().startswith("bearer ") else None

    def _check_token(self, write: bool) -> bool:
        """False (after answering 401) when a token is required or given and it is not the server's."""
        token = self._token()
        expected = self.server.token
        if expected is None:
            if write and not token:
                self._error(401, "You must be authenticated to write")
                return False
            return True
        if token is None and not write:
            return True
        if token is None or not hmac.compare_digest(token, expected):
            self._error(401, INVALID_TOKEN)
            return False
        return True

    def _can_read(self, repo: RepoRef) -> bool:
        meta = self.server.storage.meta(repo)
        return not meta["private"] or (self._token() is not None)

    # -- dispatch ---------------------------------------------------------------------------------

    def do_GET(self) -> None:
        self._dispatch()

    def do_HEAD(self) -> None:
        self._dispatch()

    def do_POST(self) -> None:
        self._dispatch()

    def do_PUT(self) -> None:
        self._dispatch()

    ROUTES: list[tuple[str, re.Pattern[str], str]] = [
        ("GET", re.compile(r"^/api/whoami-v2$"), "whoami"),
        ("POST", re.compile(r"^/api/repos/create$"), "create_repo"),
        ("POST", re.compile(r"^/api/validate-yaml$"), "validate_yaml"),
        (
            "GET",
            re.compile(
                r"^/api/(?P<kind>datasets|models|spaces)/(?P<ns>[^/]+)/(?P<name>[^/]+)(?:/revision/(?P<rev>[^/]+))?$"
            ),
            "repo_info",
        ),
        (
            "GET",
            re.compile(
                r"^/api/(?P<kind>datasets|models|spaces)/(?P<ns>[^/]+)/(?P<name>[^/]+)/tree/(?P<rev>[^/]+)(?:/(?P<path>.*))?$"
            ),
            "tree",
        ),
        (
            "POST",
            re.compile(
                r"^/api/(?P<kind>datasets|models|spaces)/(?P<ns>[^/]+)/(?P<name>[^/]+)/paths-info/(?P<rev>[^/]+)$"
            ),
            "paths_info",
        ),
        (
            "GET",
            re.compile(r"^/api/(?P<kind>datasets|models|spaces)/(?P<ns>[^/]+)/(?P<name>[^/]+)/commits/(?P<rev>[^/]+)$"),
            "commits",
        ),
        (
            "POST",
            re.compile(
                r"^/api/(?P<kind>datasets|models|spaces)/(?P<ns>[^/]+)/(?P<name>[^/]+)/preupload/(?P<rev>[^/]+)$"
            ),
            "preupload",
        ),
        (
            "POST",
            re.compile(r"^/api/(?P<kind>datasets|models|spaces)/(?P<ns>[^/]+)/(?P<name>[^/]+)/commit/(?P<rev>[^/]+)$"),
            "commit",
        ),
        (
            "POST",
            re.compile(r"^/(?:(?P<kind>datasets|spaces)/)?(?P<ns>[^/]+)/(?P<name>[^/]+)\.git/info/lfs/objects/batch$"),
            "lfs_batch",
        ),
        ("PUT", re.compile(r"^/lfs-upload/(?P<oid>[0-9a-f]{64})/(?P<size>\d+)/(?P<sig>[0-9a-f]{64})$"), "lfs_upload"),
        (
            "GET",
            re.compile(
                r"^/(?:(?P<kind>datasets|spaces)/)?(?P<ns>[^/]+)/(?P<name>[^/]+)/resolve/(?P<rev>[^/]+)/(?P<path>.+)$"
            ),
            "resolve",
        ),
        (
            "HEAD",
            re.compile(
                r"^/(?:(?P<kind>datasets|spaces)/)?(?P<ns>[^/]+)/(?P<name>[^/]+)/resolve/(?P<rev>[^/]+)/(?P<path>.+)$"
            ),
            "resolve",
        ),
    ]

    def _dispatch(self) -> None:
        url = urlsplit(self.path)
        self.query = {k: v[-1] for k, v in parse_qs(url.query).items()}
        for method, pattern, name in self.ROUTES:
            match = pattern.match(url.path) if method == self.command else None
            if match:
                params = {k: unquote(v) for k, v in match.groupdict().items() if v is not None}
                try:
                    getattr(self, f"handle_{name}")(**params)
                except HubStorageError as exc:
                    self._error(exc.status, str(exc), exc.code)
                except (ValueError, KeyError) as exc:
                    self._error(400, f"bad request: {exc}")
                return
        self._error(404, f"no route for {self.command} {url.path}")

    @staticmethod
    def _repo(kind: str | None, ns: str, name: str) -> RepoRef:
        return RepoRef(PREFIXES.get(kind or "models", "model"), f"{ns}/{name}")

    def _base(self) -> str:
        return self.server.url

    # -- routes -----------------------------------------------------------------------------------

    def handle_whoami(self) -> None:
        if self._token() is None:
            self._error(401, "You must be authenticated to call whoami")
        elif self._check_token(write=True):
            self._json(
                200,
                {
                    "type": "user",
                    "name": USER,
                    "fullname": "Test User",
                    "orgs": [],
                    "auth": {"type": "access_token", "accessToken": {"displayName": "test", "role": "write"}},
                },
            )

    def handle_create_repo(self) -> None:
        payload = json.loads(self._body() or b"{}")
        if not self._check_token(write=True):
            return
        repo = RepoRef(payload.get("type") or "model", f"{payload.get('organization') or USER}/{payload['name']}")
        prefix = "" if repo.repo_type == "model" else f"{repo.repo_type}s/"
        url = f"{self._base()}/{prefix}{repo.repo_id}"
        if not self.server.storage.create_repo(repo, private=payload.get("visibility") == "private"):
            self._json(
                409,
                {"error": "You already created this repo", "url": url},
                {"X-Error-Message": "You already created this repo"},
            )
            return
        self._json(200, {"url": url, "name": repo.repo_id})

    def handle_validate_yaml(self) -> None:
        payload = json.loads(self._body() or b"{}")
        content = payload.get("content", "")
        if content.startswith("---"):
            try:
                yaml.safe_load(content.split("---", 2)[1])
            except (yaml.YAMLError, IndexError) as exc:
                self._json(400, {"errors": [{"message": f"invalid YAML: {exc}"}], "warnings": []})
                return
        self._json(200, {"errors": [], "warnings": []})

    def handle_repo_info(self, kind: str, ns: str, name: str, rev: str = "main") -> None:
        repo = self._repo(kind, ns, name)
        if not self._check_token(write=False):
            return
        storage = self.server.storage
        meta = storage.meta(repo)
        if not self._can_read(repo):
            raise HubStorageError(404, f"Repository {repo.repo_id} not found", "RepoNotFound")
        commit_id = storage.resolve(repo, rev)
        commit = storage.commit(repo, commit_id)
        tree = commit["tree"]
        blobs = self.query.get("blobs") in ("True", "true", "1")
        siblings = []
        for path, entry in sorted(tree.items()):
            sibling: dict[str, Any] = {"rfilename": path}
            if blobs:
                sibling.update(size=entry["size"], blobId=entry["oid"])
                if entry["lfs"]:
                    sibling["lfs"] = {
                        "size": entry["size"],
                        "sha256": entry["sha256"],
                        "pointerSize": entry["pointer_size"],
                    }
            siblings.append(sibling)
        self._json(
            200,
            {
                "_id": hashlib.sha1(repo.repo_id.encode()).hexdigest()[:24],
                "id": repo.repo_id,
                "author": ns,
                "sha": commit_id,
                "private": meta["private"],
                "gated": False,
                "disabled": False,
                "createdAt": meta["created_at"],
                "lastModified": commit["date"],
                "downloads": 0,
                "likes": 0,
                "tags": [],
                "siblings": siblings,
                "cardData": self._card_data(tree),
            },
        )

    def _card_data(self, tree: dict[str, Any]) -> dict[str, Any] | None:
        entry = tree.get("README.md")
        if entry is None:
            return None
        text = self.server.storage.blob_path(entry["sha256"]).read_text(errors="replace")
        if not text.startswith("---"):
            return None
        try:
            data = yaml.safe_load(text.split("---", 2)[1])
        except (yaml.YAMLError, IndexError):
            return None
        return data if isinstance(data, dict) else None

    def _entries(self, repo: RepoRef, commit_id: str, path: str, recursive: bool, expand: bool) -> list[dict[str, Any]]:
        """Tree listing below ``path`` ("" for the root), files and folders, like the Hub's tree API."""
        commit = self.server.storage.commit(repo, commit_id)
        prefix = path.strip("/") + "/" if path.strip("/") else ""
        files: list[dict[str, Any]] = []
        folders: set[str] = set()
        for file_path, entry in commit["tree"].items():
            if not file_path.startswith(prefix):
                continue
            rest = file_path[len(prefix) :]
            parts = rest.split("/")
            for depth in range(1, len(parts)):
                if recursive or depth == 1:
                    folders.add(prefix + "/".join(parts[:depth]))
            if recursive or len(parts) == 1:
                files.append(self._file_entry(file_path, entry, commit if expand else None))
        if prefix and not files and not folders:
            raise HubStorageError(404, f"Entry {path} not found", "EntryNotFound")
        dirs = [
            {"type": "directory", "path": p, "oid": hashlib.sha1(f"{commit_id}:{p}".encode()).hexdigest(), "size": 0}
            for p in sorted(folders)
        ]
        return dirs + sorted(files, key=lambda e: e["path"])

    @staticmethod
    def _file_entry(path: str, entry: dict[str, Any], commit: dict[str, Any] | None) -> dict[str, Any]:
        item: dict[str, Any] = {"type": "file", "path": path, "oid": entry["oid"], "size": entry["size"]}
        if entry["lfs"]:
            item["lfs"] = {"oid": entry["sha256"], "size": entry["size"], "pointerSize": entry["pointer_size"]}
        if commit is not None:
            item["lastCommit"] = {"id": commit["id"], "title": commit["title"], "date": commit["date"]}
        return item

    def _readable(self, kind: str, ns: str, name: str, rev: str) -> tuple[RepoRef, str] | None:
        repo = self._repo(kind, ns, name)
        if not self._check_token(write=False):
            return None
        self.server.storage.meta(repo)
        if not self._can_read(repo):
            raise HubStorageError(404, f"Repository {repo.repo_id} not found", "RepoNotFound")
        return repo, self.server.storage.resolve(repo, rev)

    def handle_tree(self, kind: str, ns: str, name: str, rev: str, path: str = "") -> None:
        found = self._readable(kind, ns, name, rev)
        if found:
            recursive = self.query.get("recursive") in ("True", "true", "1")
            expand = self.query.get("expand") in ("True", "true", "1")
            self._json(200, self._entries(*found, path, recursive, expand))

    def handle_paths_info(self, kind: str, ns: str, name: str, rev: str) -> None:
        body = self._body()
        found = self._readable(kind, ns, name, rev)
        if not found:
            return
        form = parse_qs(body.decode())
        expand = form.get("expand", ["False"])[-1] in ("True", "true", "1")
        commit = self.server.storage.commit(*found)
        result = []
        for path in form.get("paths", []):
            path = path.strip("/")
            if path in commit["tree"]:
                result.append(self._file_entry(path, commit["tree"][path], commit if expand else None))
            elif any(p.startswith(path + "/") for p in commit["tree"]) or path == "":
                result.append(
                    {
                        "type": "directory",
                        "path": path,
                        "oid": hashlib.sha1(f"{found[1]}:{path}".encode()).hexdigest(),
                        "size": 0,
                    }
                )
        self._json(200, result)

    def handle_commits(self, kind: str, ns: str, name: str, rev: str) -> None:
        found = self._readable(kind, ns, name, rev)
        if found:
            history = self.server.storage.history(*found)
            self._json(
                200,
                [
                    {
                        "id": c["id"],
                        "authors": [{"user": c["author"]}],
                        "date": c["date"],
                        "title": c["title"],
                        "message": c["message"],
                    }
                    for c in history
                ],
            )

    def handle_preupload(self, kind: str, ns: str, name: str, rev: str) -> None:
        payload = json.loads(self._body())
        repo = self._repo(kind, ns, name)
        if not self._check_token(write=True):
            return
        storage = self.server.storage
        tree = storage.commit(repo, storage.resolve(repo, rev))["tree"]
        files = []
        for item in payload["files"]:
            sample = base64.b64decode(item["sample"])
            lfs = item["size"] >= LFS_SIZE_THRESHOLD or b"\0" in sample or item["path"].endswith(LFS_SUFFIXES)
            remote = tree.get(item["path"])
            oid = None
            if remote is not None:
                oid = remote["sha256"] if remote["lfs"] else remote["oid"]
            files.append(
                {"path": item["path"], "uploadMode": "lfs" if lfs else "regular", "shouldIgnore": False, "oid": oid}
            )
        self._json(200, {"files": files, "commitOid": storage.resolve(repo, rev)})

    def handle_lfs_batch(self, ns: str, name: str, kind: str | None = None) -> None:
        payload = json.loads(self._body())
        repo = self._repo(kind, ns, name)
        if not self._check_token(write=True):
            return
        self.server.storage.meta(repo)
        if payload.get("operation") != "upload":
            raise HubStorageError(400, "only the upload operation is supported")
        objects = []
        for obj in payload["objects"]:
            oid, size = obj["oid"], int(obj["size"])
            blob = self.server.storage.blob_path(oid)
            item: dict[str, Any] = {"oid": oid, "size": size, "authenticated": True}
            if not (blob.is_file() and blob.stat().st_size == size):
                signature = self.server.sign(f"{oid}/{size}")
                item["actions"] = {"upload": {"href": f"{self._base()}/lfs-upload/{oid}/{size}/{signature}"}}
            objects.append(item)
        self._send(
            200,
            json.dumps({"transfer": "basic", "objects": objects, "hash_algo": "sha256"}).encode(),
            ctype="application/vnd.git-lfs+json",
        )

    def handle_lfs_upload(self, oid: str, size: str, sig: str) -> None:
        # The upload URL is pre-signed (the client sends no token to it), like the Hub's storage URLs.
        if not hmac.compare_digest(sig, self.server.sign(f"{oid}/{size}")):
            self._body()
            self._error(403, "bad upload signature")
            return
        storage = self.server.storage
        tmp = storage.upload_tmp()
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            tmp.write_bytes(self._body())
        else:  # written as it arrives: a cut upload leaves a partial file under tmp/, never a blob
            left = int(self.headers.get("Content-Length") or 0)
            with open(tmp, "wb") as handle:
                while left > 0:
                    self._pace(TRANSFER_CHUNK)
                    block = self.rfile.read(min(TRANSFER_CHUNK, left))
                    if not block:
                        break
                    handle.write(block)
                    left -= len(block)
        storage.put_blob_file(tmp, oid, int(size))
        self._send(200, b"")

    def handle_commit(self, kind: str, ns: str, name: str, rev: str) -> None:
        repo = self._repo(kind, ns, name)
        if not self._check_token(write=True):
            self._body()
            return
        if self.server.take_fault():
            # Read half the body, then cut the connection without an answer: a network failure mid-commit.
            length = int(self.headers.get("Content-Length") or 0)
            self.rfile.read(length // 2)
            self.close_connection = True
            self.connection.shutdown(2)
            return
        lines = [json.loads(line) for line in self._body().splitlines() if line.strip()]
        header = next((line["value"] for line in lines if line["key"] == "header"), None)
        if header is None:
            raise HubStorageError(400, "commit without a header line")
        operations = []
        for line in lines:
            value = line["value"]
            if line["key"] == "file":
                operations.append({"key": "file", "path": value["path"], "data": base64.b64decode(value["content"])})
            elif line["key"] in ("lfsFile", "deletedFile", "deletedFolder"):
                operations.append({"key": line["key"], "path": value["path"], "oid": value.get("oid")})
        for op in operations:
            if op["path"].startswith("/") or ".." in op["path"].split("/"):
                raise HubStorageError(400, f"invalid path {op['path']!r}")
        commit_id = self.server.storage.apply_commit(
            repo, rev, operations, header["summary"], header.get("description", ""), header.get("parentCommit"), USER
        )
        prefix = "" if repo.repo_type == "model" else f"{repo.repo_type}s/"
        self._json(
            200,
            {
                "success": True,
                "commitOid": commit_id,
                "commitUrl": f"{self._base()}/{prefix}{repo.repo_id}/commit/{commit_id}",
            },
        )

    def handle_resolve(self, ns: str, name: str, rev: str, path: str, kind: str | None = None) -> None:
        found = self._readable(kind, ns, name, rev)
        if not found:
            return
        repo, commit_id = found
        entry = self.server.storage.commit(repo, commit_id)["tree"].get(path)
        if entry is None:
            raise_headers = {"X-Repo-Commit": commit_id}
            self._error(404, f"Entry {path} not found", "EntryNotFound", raise_headers)
            return
        data = self.server.storage.blob_path(entry["sha256"]).read_bytes()
        etag = entry["sha256"] if entry["lfs"] else entry["oid"]
        headers = {"X-Repo-Commit": commit_id, "ETag": f'"{etag}"', "Accept-Ranges": "bytes"}
        if entry["lfs"]:
            headers.update({"X-Linked-Etag": f'"{entry["sha256"]}"', "X-Linked-Size": str(entry["size"])})
        status, body = 200, data
        wanted = re.fullmatch(r"bytes=(\d*)-(\d*)", self.headers.get("Range", ""))
        if wanted and data:
            start, end = wanted.groups()
            if start == "":
                first, last = max(0, len(data) - int(end)), len(data) - 1
            else:
                first, last = int(start), min(int(end) if end else len(data) - 1, len(data) - 1)
            if first >= len(data):
                self._send(416, b"", {"Content-Range": f"bytes */{len(data)}"})
                return
            status, body = 206, data[first : last + 1]
            headers["Content-Range"] = f"bytes {first}-{last}/{len(data)}"
        self._send(status, body, headers, ctype="application/octet-stream")


class HubHTTPServer(ThreadingHTTPServer):
    """The threaded HTTP server with the shared storage, token and fault switches."""

    daemon_threads = True

    def __init__(self, root: Path, port: int = 0, token: str | None = None, verbose: bool = False):
        super().__init__(("127.0.0.1", port), HubHandler)
        self.storage = HubStorage(root)
        self.token = token
        self.verbose = verbose
        self.faults = Faults()
        self._fault_lock = threading.Lock()
        self._secret = secrets.token_bytes(32)
        self.url = f"http://127.0.0.1:{self.server_address[1]}"

    def sign(self, message: str) -> str:
        """HMAC of ``message`` with this server's secret, for pre-signed upload URLs."""
        return hmac.new(self._secret, message.encode(), hashlib.sha256).hexdigest()

    def take_fault(self) -> bool:
        """Whether this commit must fail (and count it)."""
        with self._fault_lock:
            if self.faults.drop_commits > 0:
                self.faults.drop_commits -= 1
                return True
            return False


class HubServer:
    """The test Hub running in a background thread: ``with HubServer(root) as hub: hub.url``."""

    def __init__(self, root: Path, port: int = 0, token: str | None = None, verbose: bool = False):
        self.httpd = HubHTTPServer(Path(root), port, token, verbose)
        self.url = self.httpd.url
        self.storage = self.httpd.storage
        self.faults = self.httpd.faults
        self._thread = threading.Thread(target=self.httpd.serve_forever, name="hubserver", daemon=True)

    def start(self) -> HubServer:
        """Start serving in the background."""
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving and close the socket."""
        self.httpd.shutdown()
        self.httpd.server_close()
        self._thread.join(timeout=5)

    def __enter__(self) -> HubServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
