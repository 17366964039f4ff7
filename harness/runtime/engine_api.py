"""The engine's HTTP API over its unix socket, with the standard library.

The run path (a warm image check, create, start, wait, logs, kill, remove, inspect, stats) needs a
handful of calls; importing the docker SDK and requests for them costs more CPU than a no-op run's
container start (about 0.25 s), so this client speaks the documented API directly. Builds, the base
bootstrap and other engine addresses (``tcp://`` with TLS) keep the SDK (``docker_client``).
"""

from __future__ import annotations

import http.client
import json
import os
import re
import socket
import struct
from collections.abc import Iterator
from typing import Any
from urllib.parse import quote, urlencode

from harness.errors import EngineError

API_VERSION = "v1.41"  # Docker 20.10 and Podman 4 both serve it
DEFAULT_HOST = "unix:///var/run/docker.sock"
# how long a short call (inspect, kill, remove, create) may wait for an answer; a hung engine is
# told apart from a slow one by this bound
TIMEOUT_ENV = "HARNESS_ENGINE_TIMEOUT"
DEFAULT_TIMEOUT_S = 60.0
# what a lost or hung engine raises from a call: a refused, reset or cut connection, a read deadline,
# or an answer cut short (http.client's IncompleteRead is no OSError)
ENGINE_FAULTS: tuple[type[BaseException], ...] = (OSError, http.client.HTTPException)
_SERVER_VERSION = re.compile(r"Docker/([0-9A-Za-z][0-9A-Za-z.+~_-]{0,63})(?: |$)")
ENGINE_HINT = "start it with `dockerd --bridge=none --iptables=false --ip-masq=false &` or see README (Prerequisites)"


def engine_socket() -> str | None:
    """The engine's unix socket path, or None when ``DOCKER_HOST`` names another kind of address."""
    host = os.environ.get("DOCKER_HOST") or DEFAULT_HOST
    return host[len("unix://") :] if host.startswith("unix://") else None


def call_timeout() -> float:
    """The bound of one short engine call: ``HARNESS_ENGINE_TIMEOUT`` seconds, else 60."""
    try:
        value = float(os.environ.get(TIMEOUT_ENV) or DEFAULT_TIMEOUT_S)
    except ValueError:
        return DEFAULT_TIMEOUT_S
    return value if value > 0 else DEFAULT_TIMEOUT_S


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float | None):
        super().__init__("localhost", timeout=timeout)
        self.path = path

    def connect(self) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(self.timeout)
        self.sock.connect(self.path)


class EngineAPIError(EngineError):
    """The engine answered a request with an error status."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


class EngineAPI:
    """A client of the engine listening on the unix socket ``path``."""

    def __init__(self, path: str, timeout: float | None = None):
        self.path = path
        self.timeout = call_timeout() if timeout is None else timeout

    def _open(
        self,
        method: str,
        url: str,
        body: Any = None,
        timeout: float | None = None,
        query: dict[str, Any] | None = None,
        connection: http.client.HTTPConnection | None = None,
    ) -> tuple[http.client.HTTPConnection, http.client.HTTPResponse]:
        if connection is None:
            connection = _UnixConnection(self.path, self.timeout if timeout is None else timeout)
        target = f"/{API_VERSION}{url}" + (f"?{urlencode(query)}" if query else "")
        headers = {"Content-Type": "application/json"} if body is not None else {}
        try:
            connection.request(method, target, body=json.dumps(body) if body is not None else None, headers=headers)
            return connection, connection.getresponse()
        except (FileNotFoundError, ConnectionRefusedError) as exc:
            connection.close()
            raise EngineError(f"Docker engine unreachable at unix://{self.path}: {ENGINE_HINT}") from exc
        except BaseException:
            connection.close()
            raise

    def call(
        self, method: str, url: str, body: Any = None, timeout: float | None = None, query: dict[str, Any] | None = None
    ) -> Any:
        """One request; the decoded JSON answer (None for an empty one). EngineAPIError for a status
        of 400 or more; ``TimeoutError`` when the engine does not answer within ``timeout``."""
        connection, response = self._open(method, url, body, timeout, query)
        try:
            data = response.read()
        finally:
            connection.close()
        if response.status >= 400:
            try:
                message = json.loads(data).get("message", "")
            except ValueError:
                message = data[:300].decode(errors="replace")
            raise EngineAPIError(response.status, f"{method} {url}: {message or response.reason}")
        return json.loads(data) if data.strip() else None

    def stream_logs(self, container_id: str, stderr: bool = True, deadline: float | None = None) -> FollowedStream:
        """A container's stdout (and stderr) as they come, until the engine ends the stream (the
        container stopped, or the engine went away). A followed stream has no read deadline unless
        ``deadline`` gives one: a workload may be quiet for hours, and Podman sends the answer's
        headers only with the first output. ``close()`` ends it early from another thread."""
        return FollowedStream(
            self, f"/containers/{container_id}/logs", {"follow": 1, "stdout": 1, "stderr": int(stderr)}, deadline
        )

    def version(self) -> dict[str, Any]:
        """The engine's version answer."""
        answer: dict[str, Any] = self.call("GET", "/version")
        return answer

    def ping(self) -> str | None:
        """Check that the engine answers (``/_ping``); the version its ``Server`` header names
        (``Docker/20.10.24 (linux)``), or None when the header names none.

        ``/version`` asks containerd, runc and docker-init for theirs: on a busy 2-core host about
        25 ms of every run's start, where ``/_ping`` takes one."""
        connection, response = self._open("GET", "/_ping")
        try:
            data = response.read(64)
        finally:
            connection.close()
        if response.status >= 400:
            raise EngineAPIError(
                response.status, f"GET /_ping: {data[:300].decode(errors='replace') or response.reason}"
            )
        found = _SERVER_VERSION.match(response.getheader("Server") or "")
        return found.group(1) if found else None

    def image_id(self, name: str) -> str | None:
        """The id of image ``name``, or None when the engine has none."""
        try:
            return str(self.call("GET", f"/images/{quote(name, safe='')}/json")["Id"])
        except EngineAPIError as exc:
            if exc.status == 404:
                return None
            raise


# what ends a followed stream early: an engine that went away, a closed or cut connection
STREAM_ENDS: tuple[type[BaseException], ...] = (EngineError, *ENGINE_FAULTS)


class FollowedStream:
    """A followed log stream (the API's multiplexed frames: an 8-byte header, then the payload),
    opened when it is first iterated."""

    def __init__(self, api: EngineAPI, url: str, query: dict[str, Any], deadline: float | None):
        self.api = api
        self.url = url
        self.query = query
        self.connection = _UnixConnection(api.path, deadline)

    def __iter__(self) -> Iterator[bytes]:
        try:
            _, response = self.api._open("GET", self.url, query=self.query, connection=self.connection)
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
        except STREAM_ENDS:
            return  # the engine went away (or the stream was closed): what came before is kept
        finally:
            self.connection.close()

    def close(self) -> None:
        """End the stream now, waking a reader blocked on it (a hung engine sends nothing more)."""
        sock = self.connection.sock
        if sock is not None:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


def engine_api(timeout: float | None = None) -> EngineAPI:
    """A client of the local engine; EngineError when ``DOCKER_HOST`` names no unix socket or the
    engine does not answer. A run mounts host folders, so its engine must be on this host."""
    path = engine_socket()
    if path is None:
        raise EngineError(
            f"DOCKER_HOST={os.environ.get('DOCKER_HOST')}: runs need the local engine's unix socket "
            "(unset DOCKER_HOST, or set it to unix:///path/to/docker.sock)"
        )
    api = EngineAPI(path, timeout)
    if (path, api.timeout) not in _answered:  # once per process: a sweep's runs need not ask again
        try:
            version = api.ping()
            if version is not None:
                VERSIONS[path] = {"Version": version}
        except TimeoutError as exc:
            raise EngineError(
                f"Docker engine at unix://{path} did not answer within {api.timeout:g}s: is it hung? "
                "(restart it, or point DOCKER_HOST at another engine)"
            ) from exc
        except ENGINE_FAULTS as exc:
            raise EngineError(f"Docker engine unreachable at unix://{path}: {ENGINE_HINT}") from exc
        _answered.add((path, api.timeout))
    return api


_answered: set[tuple[str, float]] = set()
VERSIONS: dict[str, dict[str, Any]] = {}  # each engine's version answer, by socket path (for the record)


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

    def logs(self) -> FollowedStream:
        """Its output as it comes (stdout and stderr), until it ends."""
        return self.api.stream_logs(self.id)

    def stats(self, stream: bool = False, one_shot: bool = True) -> dict[str, Any]:  # noqa: ARG002 — the docker SDK's signature, which the sampler calls with stream=False
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
