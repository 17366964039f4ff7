"""Images into Podman: a pull by digest through Podman's API, or a copy of the Docker engine's
image (``docker save`` -> ``podman load`` through the two APIs), so both runtimes run the same
image id."""

from __future__ import annotations

import http.client
import json
from collections.abc import Callable
from typing import Any
from urllib.parse import quote, urlencode

from harness.errors import EngineError
from harness.images.build import ImageInfo
from harness.images.registry import RegistryError, explain_pull_failure, registry_auth_header, registry_host
from harness.runtime.engine_api import API_VERSION, EngineAPI, EngineAPIError, _UnixConnection, engine_socket


def podman_resolve_ref(api: EngineAPI, ref: str, log: Callable[[str], None] = lambda line: None) -> ImageInfo:
    """An image by digest in Podman: the local copy, or a pull by digest (credentials as for Docker)."""
    host = registry_host(ref)
    found = api.image_id(ref)
    source = "local"
    if found is None:
        if host is None:
            raise EngineError(f"image {ref} is not in Podman and could not be pulled: it names no registry")
        log(f"pulling {ref} into Podman")
        query = {"reference": ref, "quiet": "true", "policy": "always"}
        if host.startswith(("127.", "localhost", "[::1]")):
            query["tlsVerify"] = "false"  # loopback registries are plain HTTP, as the Docker engine allows
        header = registry_auth_header(host)
        try:
            answer = _call(
                api, "POST", "/libpod/images/pull", query, {"X-Registry-Auth": header} if header else {}, timeout=3600
            )
        except EngineAPIError as exc:
            raise RegistryError(explain_pull_failure(ref, str(exc).split(": ", 1)[-1])) from None
        if isinstance(answer, dict) and answer.get("error"):
            raise RegistryError(explain_pull_failure(ref, str(answer["error"])))
        found = api.image_id(ref)
        if found is None:
            raise RegistryError(f"image {ref}: Podman's pull ended without the image")
        source = "registry"
    image_id = found if found.startswith("sha256:") else f"sha256:{found}"
    return ImageInfo(ref=ref, id=image_id, tag=ref, cached=True, registry_ref=ref if host else None, source=source)


def _call(api: EngineAPI, method: str, url: str, query: dict[str, Any], headers: dict[str, str], timeout: float) -> Any:
    """One request with extra headers; the last JSON object of a streamed answer."""
    connection = _UnixConnection(api.path, timeout)
    try:
        connection.request(method, f"/{API_VERSION}{url}?{urlencode(query)}", headers=headers)
        response = connection.getresponse()
        data = response.read()
    finally:
        connection.close()
    text = data.decode(errors="replace").strip()
    if response.status >= 400:
        try:
            message = json.loads(text).get("message", "")
        except ValueError:
            message = text[:300]
        raise EngineAPIError(response.status, f"{method} {url}: {message or response.reason}")
    last = text.splitlines()[-1] if text else ""
    try:
        return json.loads(last) if last else None
    except ValueError:
        return None


def transfer_from_docker(api: EngineAPI, image: str) -> None:
    """Copy an image from the Docker engine into Podman: the engine's ``save`` stream is the body of
    Podman's ``load`` (the same image id, nothing written to disk on the way)."""
    docker_path = engine_socket()
    if docker_path is None:
        raise EngineError("copying an image into Podman needs the Docker engine on a unix socket (DOCKER_HOST)")
    source = _UnixConnection(docker_path, 3600)
    target = _UnixConnection(api.path, 3600)
    try:
        source.request("GET", f"/{API_VERSION}/images/{quote(image, safe='')}/get")
        saved = source.getresponse()
        if saved.status >= 400:
            raise EngineError(f"docker save {image} failed: {saved.read()[:300].decode(errors='replace')}")
        target.request(
            "POST",
            f"/{API_VERSION}/images/load?quiet=1",
            body=_chunks(saved),
            headers={"Content-Type": "application/x-tar", "Transfer-Encoding": "chunked"},
            encode_chunked=True,
        )
        loaded = target.getresponse()
        answer = loaded.read()
        if loaded.status >= 400:
            raise EngineError(f"podman load of {image} failed: {answer[:300].decode(errors='replace')}")
    finally:
        source.close()
        target.close()


def _chunks(response: http.client.HTTPResponse, size: int = 1 << 20) -> Any:
    while True:
        block = response.read(size)
        if not block:
            return
        yield block
