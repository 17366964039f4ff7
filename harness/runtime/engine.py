"""The container engine's client: one place that connects to it and says how to start it."""

from __future__ import annotations

import os
import threading
from typing import Any

from harness.errors import EngineError, HarnessError
from harness.runtime.engine_api import DEFAULT_HOST, ENGINE_HINT

_clients = threading.local()


def docker_client(timeout: int = 120) -> Any:
    """A docker SDK client whose engine answers; EngineError saying how to start it otherwise.

    The engine is the one ``DOCKER_HOST`` names (else the local socket). One client per thread,
    engine address and timeout, kept: a sweep's runs reuse its connection pool."""
    import docker
    from docker.errors import DockerException

    cached = getattr(_clients, "by_key", None)
    if cached is None:
        cached = _clients.by_key = {}
    host = os.environ.get("DOCKER_HOST") or DEFAULT_HOST
    if (host, timeout) in cached:
        return cached[host, timeout]
    try:
        client = docker.from_env(timeout=timeout)
        client.ping()
    except DockerException as exc:
        raise EngineError(f"Docker engine unreachable at {host}: {ENGINE_HINT}") from exc
    cached[host, timeout] = client
    return client


def engine_image_id(name: str) -> str | None:
    """The id of image ``name`` in the engine, or None when it has none.

    A warm build is only this lookup, so it goes through the standard-library client
    (``harness.runtime.engine_api``) where the engine is on a unix socket: importing the docker SDK
    (and requests) costs more than the whole cache check. Other engine addresses use the SDK.
    """
    from harness.runtime.engine_api import EngineAPI, engine_socket

    path = engine_socket()
    if path is None:
        from docker.errors import ImageNotFound

        try:
            return str(docker_client().images.get(name).id)
        except ImageNotFound:
            return None
    try:
        return EngineAPI(path, timeout=30).image_id(name)
    except OSError as exc:
        raise EngineError(f"Docker engine unreachable at unix://{path}: {ENGINE_HINT}") from exc


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
