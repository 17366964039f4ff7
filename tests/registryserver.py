"""A real image registry for tests: Debian's ``docker-registry`` (distribution 2.8) on 127.0.0.1,
with its own storage folder and a free port, optionally behind htpasswd basic auth.

Fixtures ``registry`` and ``auth_registry`` (import them into a test module) yield a
:class:`RegistryServer`; the registry stops (by its PID) when the test ends.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import ssl
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import need

REGISTRY_USER = "lab-user"
REGISTRY_PASSWORD = "s3cret-Registry-Passw0rd-4f9a"


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port on ``host`` that nothing listens on now."""
    with socket.socket() as probe:
        probe.bind((host, 0))
        return int(probe.getsockname()[1])


class RegistryServer:
    """``docker-registry serve`` on 127.0.0.1:<free port>, storage under ``root``; on another
    ``host`` (an address of the project's own test network) it serves TLS with a certificate of
    its own, ``root/ca.crt``, which clients must be given."""

    def __init__(self, root: Path, user: str | None = None, password: str | None = None, host: str = "127.0.0.1"):
        self.root = root
        self.host = host
        self.port = free_port(host)
        self.user, self.password = user, password
        self.process: subprocess.Popen[bytes] | None = None
        self.tls = not host.startswith("127.")

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def ca_file(self) -> Path:
        """The certificate a TLS registry serves (self-signed: it is its own CA)."""
        return self.root / "ca.crt"

    def _make_certificate(self) -> list[str]:
        subprocess.run(
            ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2"]
            + ["-keyout", str(self.root / "key.pem"), "-out", str(self.ca_file)]
            + ["-subj", f"/CN={self.host}", "-addext", f"subjectAltName=IP:{self.host}"],
            check=True,
            capture_output=True,
        )
        return ["  tls:", f"    certificate: {self.ca_file}", f"    key: {self.root / 'key.pem'}"]

    def start(self) -> RegistryServer:
        self.root.mkdir(parents=True, exist_ok=True)
        config = [
            "version: 0.1",
            "log: {level: error}",
            "storage:",
            f"  filesystem: {{rootdirectory: {self.root / 'storage'}}}",
            "  delete: {enabled: true}",
            "http:",
            f"  addr: {self.address}",
        ]
        if self.tls:
            config += self._make_certificate()
        if self.user:
            htpasswd = self.root / "htpasswd"
            subprocess.run(
                ["htpasswd", "-B", "-b", "-c", str(htpasswd), self.user, self.password or ""],
                check=True,
                capture_output=True,
            )
            config += ["auth:", "  htpasswd:", "    realm: harness-test", f"    path: {htpasswd}"]
        (self.root / "config.yml").write_text("\n".join(config) + "\n")
        log = open(self.root / "registry.log", "wb")
        self.process = subprocess.Popen(
            ["docker-registry", "serve", str(self.root / "config.yml")],
            stdout=log,
            stderr=log,
            stdin=subprocess.DEVNULL,
        )
        log.close()
        deadline = time.monotonic() + 30
        context = ssl.create_default_context(cafile=str(self.ca_file)) if self.tls else None
        while time.monotonic() < deadline:
            try:
                urllib.request.urlopen(
                    f"{'https' if self.tls else 'http'}://{self.address}/v2/", timeout=2, context=context
                )
                return self
            except urllib.error.HTTPError:
                return self  # 401: up, and asking for credentials
            except OSError:
                if self.process.poll() is not None:
                    break
                time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"docker-registry did not start: {(self.root / 'registry.log').read_text()[-500:]}")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None

    def __enter__(self) -> RegistryServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _need_registry() -> None:
    if shutil.which("docker-registry") is None:
        need("image registry", "docker-registry is not installed (scripts/setup.sh --with-podman)")


@pytest.fixture
def registry(tmp_path: Path) -> Iterator[RegistryServer]:
    """An anonymous registry on loopback."""
    _need_registry()
    with RegistryServer(tmp_path / "registry") as server:
        yield server


@pytest.fixture
def auth_registry(tmp_path: Path) -> Iterator[RegistryServer]:
    """A registry behind htpasswd basic auth (:data:`REGISTRY_USER` / :data:`REGISTRY_PASSWORD`)."""
    _need_registry()
    if shutil.which("htpasswd") is None:
        need("image registry", "htpasswd is not installed (apache2-utils; scripts/setup.sh --with-podman)")
    with RegistryServer(tmp_path / "auth-registry", REGISTRY_USER, REGISTRY_PASSWORD) as server:
        yield server


def tiny_image(client, tag: str) -> str:  # type: ignore[no-untyped-def]
    """A one-file image of this test's own (``docker import`` of a tiny tarball); its id."""
    import io
    import tarfile

    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as archive:
        data = f"{tag} {os.getpid()} {time.time_ns()}\n".encode()
        info = tarfile.TarInfo("hello.txt")
        info.size = len(data)
        archive.addfile(info, io.BytesIO(data))
    repository, _, version = tag.partition(":")
    client.api.import_image_from_data(buffer.getvalue(), repository=repository, tag=version or "latest")
    return str(client.images.get(tag).id)
