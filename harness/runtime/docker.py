"""Run one job in a sandboxed container through the docker SDK."""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

import harness
from harness.errors import EngineError
from harness.runtime.job import JobRequest, JobResult
from harness.safefs import terminal_safe

CONTAINER_OUT = "/harness/out"
CONTAINER_LIB = "/opt/harness"
RUN_LABEL = "org.harness.run-id"
SANDBOX_USER = "65534:65534"


def harness_package_dir() -> Path:
    """The folder of the harness package on the host, mounted read-only for ``from harness import track``."""
    return Path(harness.__file__).resolve().parent


def container_name(run_id: str) -> str:
    return f"harness-{run_id}"


def sandbox_options(request: JobRequest) -> dict[str, Any]:
    """The container settings of the sandbox: no network, read-only root, no capabilities, non-root."""
    options: dict[str, Any] = {
        "network_mode": "none",
        "read_only": True,
        "tmpfs": {"/tmp": "rw,nosuid,nodev,size=1g,mode=1777"},
        "cap_drop": ["ALL"],
        "security_opt": ["no-new-privileges"],
        "user": SANDBOX_USER,
        "mem_limit": request.memory_bytes,
        "memswap_limit": request.memory_bytes,
        "nano_cpus": int(request.cpus * 1e9),
        "pids_limit": 4096,
        "ipc_mode": "private",
        "volumes": {
            str(request.out_dir): {"bind": CONTAINER_OUT, "mode": "rw"},
            str(harness_package_dir()): {"bind": f"{CONTAINER_LIB}/harness", "mode": "ro"},
        },
        "labels": {RUN_LABEL: request.run_id},
    }
    if request.hub_cache is not None:
        from harness.pins import CONTAINER_CACHE

        options["volumes"][str(request.hub_cache)] = {"bind": CONTAINER_CACHE, "mode": "ro"}
    if request.gpus > 0:
        import docker

        options["device_requests"] = [docker.types.DeviceRequest(count=request.gpus, capabilities=[["gpu"]])]
    return options


def job_environment(request: JobRequest) -> dict[str, str]:
    """The container's environment: the job's variables plus where the harness helper lives."""
    pins = {}
    if request.hub_cache is not None:
        from harness.pins import pin_environment

        pins = pin_environment(container=True)
    return {
        **request.environment,
        **pins,
        "HARNESS_OUT": CONTAINER_OUT,
        "HARNESS_METRICS": f"{CONTAINER_OUT}/metrics.external.jsonl",
        "PYTHONPATH": CONTAINER_LIB,
        "HOME": "/tmp",
        "MPLCONFIGDIR": "/tmp/matplotlib",
        # the sandbox's only interface: torch.distributed's gloo would otherwise look up the
        # container's hostname, find no address and wait forever
        "GLOO_SOCKET_IFNAME": "lo",
    }


def _stream_logs(container: Any, log_path: Path, echo: Callable[[str], None] | None) -> None:
    copy_lines(container.logs(stream=True, follow=True), log_path, echo)


def copy_lines(chunks: Any, log_path: Path, echo: Callable[[str], None] | None) -> None:
    """Append a job's output to its log file (and the terminal); a full disk stops the file, not the job."""
    sink: IO[bytes] | None = open(log_path, "ab", buffering=0)
    for chunk in chunks:
        if sink is not None:
            try:
                sink.write(chunk)
            except OSError:
                sink = None  # the record's error says the disk filled up
        if echo is not None:
            for line in chunk.decode(errors="replace").rstrip("\n").split("\n"):
                echo(terminal_safe(line))
    if sink is not None:
        try:
            sink.close()
        except OSError:
            pass


class DockerJob:
    """A started container; ``wait`` returns how it ended, ``stop`` ends it early."""

    def __init__(self, client: Any, image_id: str, request: JobRequest):
        self.client = client
        self.request = request
        request.out_dir.chmod(0o777)  # the sandbox user is not the host's owner of the folder
        try:
            self.container = client.containers.create(
                image_id, command=request.command, name=container_name(request.run_id), detach=True,
                environment=job_environment(request), stdin_open=False, **sandbox_options(request),
            )
        except Exception as exc:  # docker.errors.APIError
            explanation = getattr(exc, "explanation", None) or str(exc)
            raise EngineError(f"could not create the container of {request.run_id}: {explanation}") from None
        self.log_thread = threading.Thread(target=_stream_logs, args=(self.container, request.log_path, request.echo), daemon=True)
        self._stopped_by: str | None = None

    def start(self) -> None:
        self.container.start()
        self.log_thread.start()

    @property
    def pid(self) -> int | None:
        self.container.reload()
        return self.container.attrs.get("State", {}).get("Pid") or None

    def wait(self) -> JobResult:
        """Wait for the container, killing it at the timeout."""
        import requests

        try:
            outcome = self.container.wait(timeout=self.request.timeout_seconds)
            exit_code = int(outcome.get("StatusCode", -1))
        except (requests.exceptions.ReadTimeout, requests.exceptions.ConnectionError):
            self._kill()
            self.container.wait(timeout=60)
            self._stopped_by = self._stopped_by or "timeout"
            exit_code = None
        self.log_thread.join(timeout=10)
        self.container.reload()
        state = self.container.attrs.get("State", {})
        if self._stopped_by:
            return JobResult(self._stopped_by, state.get("ExitCode", exit_code), f"stopped: {self._stopped_by}")
        if state.get("OOMKilled"):
            return JobResult("oom", exit_code, "the container ran out of memory (OOM-killed)")
        if exit_code == 0:
            return JobResult("completed", 0)
        return JobResult("failed", exit_code, f"exit status {exit_code}")

    def stop(self, reason: str = "interrupted") -> None:
        """End the job early (Ctrl-C, cancellation); ``wait`` then reports ``reason``."""
        self._stopped_by = reason
        self._kill()

    def _kill(self) -> None:
        try:
            self.container.kill()
        except Exception:
            pass

    def remove(self) -> None:
        try:
            self.container.remove(force=True)
        except Exception:
            pass


def kill_orphan(run_id: str) -> bool:
    """Kill and remove the container of a run whose harness process died; True if one was found."""
    from harness.runtime.engine import docker_client

    try:
        client = docker_client(timeout=30)
    except EngineError:
        return False
    found = client.containers.list(all=True, filters={"label": f"{RUN_LABEL}={run_id}"})
    for container in found:
        try:
            container.remove(force=True)
        except Exception:
            pass
    return bool(found)


_engine_versions: dict[str, str] = {}


def engine_version(client: Any) -> str:
    """The engine's version string, for the record (asked once per engine and process)."""
    address = str(getattr(client.api, "base_url", ""))
    if address not in _engine_versions:
        try:
            _engine_versions[address] = str(client.version().get("Version", "unknown"))
        except Exception:
            return "unknown"
    return _engine_versions[address]


def run_in_image(client: Any, image_id: str, command: list[str], timeout: float = 120) -> str:
    """Run a short command in the image under the same sandbox and return its stdout."""
    container = client.containers.create(
        image_id, command=command, detach=True, network_mode="none", read_only=True, user=SANDBOX_USER,
        cap_drop=["ALL"], security_opt=["no-new-privileges"], tmpfs={"/tmp": "rw,size=64m"},
        environment={"HOME": "/tmp", "PYTHONPATH": CONTAINER_LIB},
        volumes={str(harness_package_dir()): {"bind": f"{CONTAINER_LIB}/harness", "mode": "ro"}},
    )
    try:
        container.start()
        container.wait(timeout=timeout)
        return container.logs(stdout=True, stderr=False).decode(errors="replace")
    finally:
        container.remove(force=True)


