"""The engine's HTTP API over its unix socket, with the standard library.

The run path (a warm image check, create, start, wait, logs, kill, remove, inspect, stats) needs a
handful of calls; importing the docker SDK and requests for them costs more CPU than a no-op run's
container start (about 0.25 s), so this client speaks the documented API directly. Builds, the base
bootstrap and other engine addresses (``tcp://`` with TLS) keep the SDK (``docker_client``).
"""

from __future__ import annotations

import json
import os
import socket
import struct
from collections.abc import Iterator
from typing import Any
from urllib.parse import quote, urlencode

from harness.errors import EngineError

API_VERSION = "v1.41"  # Docker 20.10 and Podman 4 both serve it
DEFAULT_HOST = "unix:///var/run/docker.sock"
MAX_ANSWER_BYTES = 256 << 20  # an inspect or list answer is kilobytes; a bound, not a budget
ENGINE_HINT = "start it with `dockerd --bridge=none --iptables=false --ip-masq=false &` or see README (Prerequisites)"


def engine_socket() -> str | None:
    """The engine's unix socket path, or None when ``DOCKER_HOST`` names another kind of address."""
    host = os.environ.get("DOCKER_HOST", DEFAULT_HOST)
    return host[len("unix://") :] if host.startswith("unix://") else None


def _unchunk(data: bytes) -> bytes:
    """The body of a chunked transfer encoding."""
    out: list[bytes] = []
    position = 0
    while True:
        end = data.find(b"\r\n", position)
        if end < 0:
            return b"".join(out)
        size = int(data[position:end].split(b";")[0] or b"0", 16)
        if size == 0:
            return b"".join(out)
        out.append(data[end + 2 : end + 2 + size])
        position = end + 2 + size + 2


class EngineAPIError(EngineError):
    """The engine answered a request with an error status."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


class EngineAPI:
    """A client of the engine listening on the unix socket ``path``."""

    def __init__(self, path: str, timeout: float = 60):
        self.path = path
        self.timeout = timeout

    def _target(self, url: str, query: dict[str, Any] | None) -> str:
        return f"/{API_VERSION}{url}" + (f"?{urlencode(query)}" if query else "")

    def _exchange(
        self, method: str, url: str, body: Any, timeout: float | None, query: dict[str, Any] | None
    ) -> tuple[int, str, bytes]:
        """One HTTP/1.0 request (the engine answers without chunking and closes): status, reason,
        body. A plain socket, not http.client: its imports cost more than a warm build's lookup."""
        payload = json.dumps(body).encode() if body is not None else b""
        head = (
            f"{method} {self._target(url, query)} HTTP/1.0\r\nHost: localhost\r\n"
            f"Content-Length: {len(payload)}\r\n"
            + ("Content-Type: application/json\r\n" if body is not None else "")
            + "\r\n"
        )
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.settimeout(self.timeout if timeout is None else timeout)
            try:
                sock.connect(self.path)
            except (FileNotFoundError, ConnectionRefusedError) as exc:
                raise EngineError(f"Docker engine unreachable at unix://{self.path}: {ENGINE_HINT}") from exc
            sock.sendall(head.encode("latin-1") + payload)
            chunks, total = [], 0
            while chunk := sock.recv(1 << 16):
                chunks.append(chunk)
                total += len(chunk)
                if total > MAX_ANSWER_BYTES:
                    raise EngineError(f"{method} {url}: the engine's answer is larger than {MAX_ANSWER_BYTES} bytes")
        finally:
            sock.close()
        header, _, data = b"".join(chunks).partition(b"\r\n\r\n")
        lines = header.decode("latin-1").split("\r\n")
        status_line = lines[0].split(" ", 2)
        if len(status_line) < 2 or not status_line[1].isdigit():
            raise EngineError(f"{method} {url}: the engine's answer is not HTTP ({lines[0][:80]!r})")
        if any(line.lower().replace(" ", "") == "transfer-encoding:chunked" for line in lines[1:]):
            data = _unchunk(data)
        return int(status_line[1]), status_line[2] if len(status_line) > 2 else "", data

    def call(
        self, method: str, url: str, body: Any = None, timeout: float | None = None, query: dict[str, Any] | None = None
    ) -> Any:
        """One request; the decoded JSON answer (None for an empty one). EngineAPIError for a status
        of 400 or more; ``TimeoutError`` when the engine does not answer within ``timeout``."""
        status, reason, data = self._exchange(method, url, body, timeout, query)
        if status >= 400:
            try:
                message = json.loads(data).get("message", "")
            except (ValueError, AttributeError):
                message = data[:300].decode(errors="replace")
            raise EngineAPIError(status, f"{method} {url}: {message or reason}")
        return json.loads(data) if data.strip() else None

    def stream_logs(self, container_id: str, stderr: bool = True) -> Iterator[bytes]:
        """A container's stdout (and stderr) as they come, until it ends (the API's multiplexed
        frames: an 8-byte header, then the payload)."""
        from harness.runtime.unix_http import UnixConnection  # the log thread pays for http.client

        connection = UnixConnection(self.path, None)
        query = {"follow": 1, "stdout": 1, "stderr": int(stderr)}
        try:
            connection.request("GET", self._target(f"/containers/{container_id}/logs", query))
            response = connection.getresponse()
        except (FileNotFoundError, ConnectionRefusedError) as exc:
            connection.close()
            raise EngineError(f"Docker engine unreachable at unix://{self.path}: {ENGINE_HINT}") from exc
        except BaseException:
            connection.close()
            raise
        try:
            if response.status >= 400:
                return
            while True:
                header = response.read(8)
                if len(header) < 8:
                    return
                size = struct.unpack(">I", header[4:])[0]
                payload = response.read(size)
                if payload:
                    yield payload
        finally:
            connection.close()

    def version(self) -> dict[str, Any]:
        """The engine's version answer."""
        answer: dict[str, Any] = self.call("GET", "/version")
        return answer

    def image_id(self, name: str) -> str | None:
        """The id of image ``name``, or None when the engine has none."""
        try:
            return str(self.call("GET", f"/images/{quote(name, safe='')}/json")["Id"])
        except EngineAPIError as exc:
            if exc.status == 404:
                return None
            raise


def engine_api(timeout: float = 60) -> EngineAPI:
    """A client of the local engine; EngineError when ``DOCKER_HOST`` names no unix socket or the
    engine does not answer. A run mounts host folders, so its engine must be on this host."""
    path = engine_socket()
    if path is None:
        raise EngineError(
            f"DOCKER_HOST={os.environ.get('DOCKER_HOST')}: runs need the local engine's unix socket "
            "(unset DOCKER_HOST, or set it to unix:///path/to/docker.sock)"
        )
    api = EngineAPI(path, timeout)
    if path not in VERSIONS:  # once per process: a sweep's runs need not ask again
        try:
            VERSIONS[path] = api.version()
        except OSError as exc:
            raise EngineError(f"Docker engine unreachable at unix://{path}: {ENGINE_HINT}") from exc
    return api


VERSIONS: dict[str, dict[str, Any]] = {}  # the version answer of each engine asked, by socket path


class EngineContainer:
    """A container, with the few methods of the SDK's ``Container`` that the run path uses."""

    def __init__(self, api: EngineAPI, container_id: str):
        self.api = api
        self.id = container_id
        self.attrs: dict[str, Any] = {}

    @classmethod
    def create(cls, api: EngineAPI, name: str, config: dict[str, Any]) -> EngineContainer:
        """Create a container from an API ``config`` (Image, Cmd, Env, HostConfig, ...)."""
        answer = api.call("POST", "/containers/create", body=config, query={"name": name})
        return cls(api, answer["Id"])

    def start(self) -> None:
        self.api.call("POST", f"/containers/{self.id}/start")

    def reload(self) -> None:
        self.attrs = self.api.call("GET", f"/containers/{self.id}/json")

    def wait(self, timeout: float | None = None) -> dict[str, Any]:
        """Wait for the container to stop; ``TimeoutError`` after ``timeout`` seconds."""
        try:
            answer: dict[str, Any] = self.api.call("POST", f"/containers/{self.id}/wait", timeout=timeout)
        except TimeoutError as exc:
            raise TimeoutError(f"container {self.id[:12]} still running after {timeout}s") from exc
        return answer

    def logs(self) -> Iterator[bytes]:
        """Its output as it comes (stdout and stderr), until it ends."""
        return self.api.stream_logs(self.id)

    def stats(self, stream: bool = False, one_shot: bool = True) -> dict[str, Any]:
        """One sample of the engine's stats."""
        answer: dict[str, Any] = self.api.call(
            "GET",
            f"/containers/{self.id}/stats",
            query={"stream": "false", "one-shot": "true" if one_shot else "false"},
        )
        return answer

    def kill(self) -> None:
        self.api.call("POST", f"/containers/{self.id}/kill")

    def remove(self, force: bool = True) -> None:
        self.api.call("DELETE", f"/containers/{self.id}", query={"force": "true" if force else "false"})
