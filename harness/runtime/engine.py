"""The container engine's client: one place that connects to it and says how to start it."""

from __future__ import annotations

import json
import os
import threading
from typing import Any

from harness.errors import EngineError, HarnessError

ENGINE_HINT = "start it with `dockerd --bridge=none --iptables=false --ip-masq=false &` or see README (Prerequisites)"

_clients = threading.local()


def docker_client(timeout: int = 120) -> Any:
    """A docker SDK client whose engine answers; EngineError saying how to start it otherwise.

    One client per thread and timeout, kept: a sweep's runs reuse its connection pool."""
    import docker
    from docker.errors import DockerException

    cached = getattr(_clients, "by_timeout", None)
    if cached is None:
        cached = _clients.by_timeout = {}
    if timeout in cached:
        return cached[timeout]
    try:
        client = docker.from_env(timeout=timeout)
        client.ping()
    except DockerException as exc:
        host = os.environ.get("DOCKER_HOST", "unix:///var/run/docker.sock")
        raise EngineError(f"Docker engine unreachable at {host}: {ENGINE_HINT}") from exc
    cached[timeout] = client
    return client


def engine_image_id(name: str) -> str | None:
    """The id of image ``name`` in the engine, or None when it has none.

    A warm build is only this lookup, so it speaks the engine's HTTP API over its unix socket
    with the standard library: importing the docker SDK (and requests) costs more than the whole
    cache check. Other engine addresses go through the SDK.
    """
    import http.client
    import socket
    from urllib.parse import quote

    host = os.environ.get("DOCKER_HOST", "unix:///var/run/docker.sock")
    if not host.startswith("unix://"):
        from docker.errors import ImageNotFound

        try:
            return docker_client().images.get(name).id
        except ImageNotFound:
            return None

    class UnixConnection(http.client.HTTPConnection):
        def connect(self) -> None:
            self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            self.sock.settimeout(30)
            self.sock.connect(host[len("unix://"):])

    connection = UnixConnection("localhost")
    try:
        connection.request("GET", f"/images/{quote(name, safe='')}/json")
        response = connection.getresponse()
        body = response.read()
    except OSError as exc:
        raise EngineError(f"Docker engine unreachable at {host}: {ENGINE_HINT}") from exc
    finally:
        connection.close()
    if response.status == 404:
        return None
    if response.status != 200:
        raise EngineError(f"the engine answered {response.status} for image {name}: {body[:200]!r}")
    return json.loads(body)["Id"]


def engine_available() -> bool:
    """Whether a Docker engine answers here."""
    try:
        docker_client(timeout=10)
        return True
    except HarnessError:
        return False


def resolve_runtime(runtime: str) -> str:
    """``auto`` becomes docker where an engine answers, else process."""
    if runtime != "auto":
        return runtime
    return "docker" if engine_available() else "process"
