"""Images by digest through a registry: push an image, pull it back by its registry digest, and
check that a registry answers (with the credentials it needs).

A registry is named ``host:port[/prefix]`` (``--registry`` or ``HARNESS_REGISTRY``); an image
pushed there is recorded as ``host:port/prefix/name@sha256:<digest>``, which a manifest can use
as ``image.ref`` and any engine (Docker, Podman) pulls to the same bits. Credentials come from the
environment (``HARNESS_REGISTRY_USER`` / ``HARNESS_REGISTRY_PASSWORD``) or the standard Docker
configuration (``$DOCKER_CONFIG/config.json``, else ``~/.docker/config.json``, ``auths``); they are
handed to the engine for one request and never written to a record, a log or the Hub.
"""

from __future__ import annotations

import base64
import json
import os
import re
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harness.errors import EngineError, HarnessError

REGISTRY_ENV = "HARNESS_REGISTRY"
USER_ENV = "HARNESS_REGISTRY_USER"
PASSWORD_ENV = "HARNESS_REGISTRY_PASSWORD"
HOST = re.compile(r"^(?:localhost|[A-Za-z0-9](?:[A-Za-z0-9.-]*[A-Za-z0-9])?)(?::\d{1,5})?$")
PATH_PART = re.compile(r"^[a-z0-9]+(?:[._-][a-z0-9]+)*$")
DIGEST = re.compile(r"@sha256:[0-9a-f]{64}$")
LOOPBACK = ("127.", "localhost", "[::1]")


class RegistryError(HarnessError):
    """A registry that is down, refuses the credentials, or lacks an image."""


@dataclass(frozen=True)
class Registry:
    """A registry address and the repository prefix under which the harness pushes."""

    host: str  # host[:port]
    prefix: str = ""

    def __str__(self) -> str:
        return f"{self.host}/{self.prefix}" if self.prefix else self.host

    @property
    def base_url(self) -> str:
        """The registry's HTTP API root; plain HTTP on loopback only, as the Docker engine allows."""
        scheme = "http" if self.host.startswith(LOOPBACK) else "https"
        return f"{scheme}://{self.host}/v2/"

    def repository(self, name: str) -> str:
        """The full repository name of image ``name`` (``harness/noop``) in this registry."""
        return f"{self}/{name}"


def parse_registry(text: str, source: str = "--registry") -> Registry:
    """``host:port[/prefix]`` -> Registry; RegistryError naming ``source`` when it is not one."""
    value = text.strip().rstrip("/")
    if "://" in value:
        value = value.split("://", 1)[1]
    host, _, prefix = value.partition("/")
    if not HOST.match(host) or ("." not in host and ":" not in host and host != "localhost"):
        raise RegistryError(f"{source} {text!r}: write host:port[/prefix], e.g. 127.0.0.1:5000/lab")
    if prefix and not all(PATH_PART.match(part) for part in prefix.split("/")):
        raise RegistryError(f"{source} {text!r}: the prefix may hold lower-case letters, digits and . _ - / only")
    return Registry(host, prefix)


def configured_registry(explicit: str | None) -> Registry:
    """The registry of ``--registry``, else ``HARNESS_REGISTRY``; RegistryError when neither is set."""
    if explicit:
        return parse_registry(explicit)
    value = os.environ.get(REGISTRY_ENV)
    if value:
        return parse_registry(value, source=REGISTRY_ENV)
    raise RegistryError(f"no registry: give --registry host:port[/prefix] or set {REGISTRY_ENV}")


def registry_host(ref: str) -> str | None:
    """The registry host of an image reference (``127.0.0.1:5000/x@sha256:…``), or None for a
    reference without one (a local id, or a Docker Hub short name)."""
    first, sep, _ = ref.partition("/")
    if not sep or first.startswith("sha256:"):
        return None
    return first if ("." in first or ":" in first or first == "localhost") else None


def is_registry_ref(ref: str | None) -> bool:
    """Whether ``ref`` names an image by digest in a registry."""
    return bool(ref) and registry_host(ref or "") is not None and DIGEST.search(ref or "") is not None


def _docker_config_file() -> Path:
    folder = os.environ.get("DOCKER_CONFIG")
    return Path(folder) / "config.json" if folder else Path.home() / ".docker" / "config.json"


def credentials(host: str) -> tuple[str, str] | None:
    """(user, password) for registry ``host``: the environment, else the Docker configuration's
    ``auths`` entry; None when neither has one. A credential helper (``credsStore``) is left to the
    engine, which consults it itself."""
    user, password = os.environ.get(USER_ENV), os.environ.get(PASSWORD_ENV)
    if user and password:
        return user, password
    path = _docker_config_file()
    try:
        config = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise RegistryError(f"{path}: not a readable Docker configuration ({type(exc).__name__})") from None
    auths = config.get("auths") if isinstance(config, dict) else None
    if not isinstance(auths, dict):
        return None
    for key in (host, f"http://{host}", f"https://{host}"):
        entry = auths.get(key)
        if not isinstance(entry, dict):
            continue
        if entry.get("username") and entry.get("password"):
            return str(entry["username"]), str(entry["password"])
        if entry.get("auth"):
            try:
                decoded = base64.b64decode(str(entry["auth"])).decode()
            except (ValueError, UnicodeDecodeError):
                raise RegistryError(f"{path}: auths.{key}.auth is not base64 of user:password") from None
            name, sep, secret = decoded.partition(":")
            if sep:
                return name, secret
    return None


def auth_config(host: str | None) -> dict[str, str] | None:
    """The engine's ``auth_config`` for ``host`` (None: anonymous)."""
    found = credentials(host) if host else None
    if found is None:
        return None
    return {"username": found[0], "password": found[1], "serveraddress": host or ""}


def registry_auth_header(host: str | None) -> str | None:
    """``X-Registry-Auth`` for the engine API (base64url JSON), or None when anonymous."""
    config = auth_config(host)
    if config is None:
        return None
    return base64.urlsafe_b64encode(json.dumps(config).encode()).decode()


@dataclass
class RegistryStatus:
    """What ``harness doctor`` says about a registry."""

    registry: Registry
    reachable: bool
    auth: str  # "none needed" | "ok (user …)" | "refused" | "needed, none configured" | ...
    detail: str = ""

    @property
    def ok(self) -> bool:
        return self.reachable and not self.auth.startswith(("refused", "needed"))


def check_registry(registry: Registry, timeout: float = 5) -> RegistryStatus:
    """Ask the registry's ``/v2/`` whether it answers and whether our credentials are accepted."""

    def ask(header: str | None) -> int:
        request = urllib.request.Request(registry.base_url)
        if header:
            request.add_header("Authorization", header)
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:
                return int(response.status)
        except urllib.error.HTTPError as exc:
            return int(exc.code)

    try:
        status = ask(None)
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        return RegistryStatus(registry, False, "unknown", f"{registry.base_url} unreachable ({reason})")
    if status == 200:
        return RegistryStatus(registry, True, "none needed")
    if status != 401:
        return RegistryStatus(registry, True, "unknown", f"{registry.base_url} answered {status}")
    found = credentials(registry.host)
    if found is None:
        return RegistryStatus(
            registry, True, f"needed, none configured (set {USER_ENV}/{PASSWORD_ENV} or `docker login`)"
        )
    basic = "Basic " + base64.b64encode(f"{found[0]}:{found[1]}".encode()).decode()
    try:
        status = ask(basic)
    except (urllib.error.URLError, OSError) as exc:
        return RegistryStatus(
            registry, False, "unknown", f"{registry.base_url} unreachable ({getattr(exc, 'reason', exc)})"
        )
    if status == 200:
        return RegistryStatus(registry, True, f"ok (user {found[0]})")
    return RegistryStatus(registry, True, f"refused for user {found[0]} ({status})")


def engine_message(exc: BaseException) -> str:
    """One line from an engine error, for a RegistryError."""
    text = str(getattr(exc, "explanation", None) or exc)
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1][:300] if lines else type(exc).__name__


# What an engine's message about a registry means, by the words engines (Docker, Podman) use.
FAILURE_WORDS: dict[str, tuple[str, ...]] = {
    "unreachable": ("connection refused", "no such host", "i/o timeout", "dial tcp"),
    "missing": ("manifest unknown", "not found"),
    "refused": ("unauthorized", "authentication required", "denied", "credentials"),
}


def failure_kinds(message: str) -> set[str]:
    """Which of ``unreachable``, ``missing`` and ``refused`` an engine's registry error message says."""
    lowered = message.lower()
    return {kind for kind, words in FAILURE_WORDS.items() if any(word in lowered for word in words)}


def explain_pull_failure(ref: str, message: str) -> str:
    """What a failed pull by digest means, in one line that says what to change."""
    host = registry_host(ref) or "the registry"
    kinds = failure_kinds(message)
    if "unreachable" in kinds:
        return f"image {ref}: registry {host} is unreachable ({message}); start it or check the address"
    if "missing" in kinds:
        return f"image {ref}: registry {host} does not have this digest (push it with `harness push`, or fix image.ref)"
    if "refused" in kinds:
        return (
            f"image {ref}: registry {host} refused the pull ({message}); set {USER_ENV}/{PASSWORD_ENV} "
            "or `docker login` with an account that can read it"
        )
    return f"image {ref} is not in the engine and could not be pulled: {message}"


def push_image(client: Any, image: str, registry: Registry, name: str, tag: str, log: Any = lambda line: None) -> str:
    """Push ``image`` (an id or tag in the Docker engine) to ``registry`` as ``name:tag`` and return
    its registry reference by digest, ``host/prefix/name@sha256:…``."""
    from docker.errors import APIError, ImageNotFound

    repository = registry.repository(name)
    try:
        client.images.get(image).tag(repository, tag=tag)
    except ImageNotFound:
        raise EngineError(f"image {image} is not in the Docker engine: build or pull it first") from None
    digest = None
    said: dict[str, str] = {}  # each layer's last status: progress repeats it many times a second
    try:
        for chunk in client.api.push(
            repository, tag=tag, stream=True, decode=True, auth_config=auth_config(registry.host)
        ):
            if "error" in chunk:
                raise RegistryError(_push_failure(registry, str(chunk["error"])))
            aux = chunk.get("aux") or {}
            if aux.get("Digest"):
                digest = str(aux["Digest"])
            status, layer = chunk.get("status"), chunk.get("id")
            if status and layer:
                # the engine counts down to each retry of a layer ("Retrying in 5 seconds", 4, ...)
                status = "upload cut, the engine retries it" if status.startswith("Retrying in ") else status
                if said.get(layer) != status:
                    said[layer] = status
                    log(f"{layer}: {status}")
    except APIError as exc:
        raise RegistryError(_push_failure(registry, engine_message(exc))) from None
    finally:
        try:
            client.images.remove(f"{repository}:{tag}", noprune=True)  # the engine keeps the image by id
        except Exception:
            pass
    if digest is None:
        raise RegistryError(f"registry {registry.host}: the push of {repository}:{tag} reported no digest")
    return f"{repository}@{digest}"


def _push_failure(registry: Registry, message: str) -> str:
    kinds = failure_kinds(message)
    if "unreachable" in kinds:
        return f"registry {registry.host} is unreachable ({message}); start it or check --registry"
    if "refused" in kinds:
        return (
            f"registry {registry.host} refused the push ({message}); set {USER_ENV}/{PASSWORD_ENV} "
            "or `docker login` with an account that can write to it"
        )
    return f"registry {registry.host}: push failed: {message}"


def repository_and_tag(image_name: str, fallback_tag: str) -> tuple[str, str]:
    """``harness/noop:abc`` -> (``harness/noop``, ``abc``); a registry host and a digest are dropped."""
    name = DIGEST.sub("", image_name)
    if registry_host(name) is not None:
        name = name.split("/", 1)[1]
    last = name.rsplit("/", 1)[-1]
    tag = fallback_tag
    if ":" in last:
        name, tag = name.rsplit(":", 1)
    return name.lower(), tag
