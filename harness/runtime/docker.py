"""Run one job in a sandboxed container, through the engine API (``harness.runtime.engine_api``)."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

import harness
from harness.errors import EngineError
from harness.runtime.engine_api import (
    ENGINE_FAULTS,
    VERSIONS,
    EngineAPI,
    EngineAPIError,
    EngineContainer,
    FollowedStream,
    engine_api,
)
from harness.runtime.job import JobRequest, JobResult
from harness.store.layout import EXTERNAL_JSONL
from harness.util.safefs import terminal_safe

PROBE_MEMORY_BYTES = 1 << 30
PROBE_MAX_OUTPUT = 16 << 20  # what a probe (the environment capture) may print
CONTAINER_OUT = "/harness/out"
CONTAINER_LIB = "/opt/harness"
RUN_LABEL = "org.harness.run-id"
SANDBOX_USER = "65534:65534"
# an engine call that failed because of the engine, not its answer (EngineAPIError): a refused
# connection (EngineError), a cut one, a read deadline, an answer cut short
LOST: tuple[type[BaseException], ...] = (EngineError, *ENGINE_FAULTS)


def harness_package_dir() -> Path:
    """The folder of the harness package on the host, mounted read-only for ``from harness import track``."""
    return Path(harness.__file__).resolve().parent


def container_name(run_id: str) -> str:
    """The container's name: the run id and a random suffix, since two stores on one engine may run
    the same configuration at once (the run is found again by its label, not its name)."""
    import secrets

    return f"harness-{run_id}-{secrets.token_hex(4)}"


def sandbox_options(request: JobRequest) -> dict[str, Any]:
    """The container's ``HostConfig`` for the engine API: no network, read-only root, no
    capabilities, no new privileges, CPU/memory/pids limits, the run's folders, GPUs."""
    binds = [f"{request.out_dir}:{CONTAINER_OUT}:rw", f"{harness_package_dir()}:{CONTAINER_LIB}/harness:ro"]
    if request.hub_cache is not None:
        from harness.store.pins import CONTAINER_CACHE

        binds.append(f"{request.hub_cache}:{CONTAINER_CACHE}:ro")
    host_config: dict[str, Any] = {
        "NetworkMode": "none",
        "ReadonlyRootfs": True,
        "Tmpfs": {"/tmp": "rw,nosuid,nodev,size=1g,mode=1777"},
        "CapDrop": ["ALL"],
        "SecurityOpt": ["no-new-privileges"],
        "Memory": request.memory_bytes,
        "MemorySwap": request.memory_bytes,
        "NanoCpus": int(request.cpus * 1e9),
        "PidsLimit": 4096,
        "IpcMode": "private",
        "Binds": binds,
    }
    if request.gpus > 0:
        host_config["DeviceRequests"] = [{"Driver": "", "Count": request.gpus, "Capabilities": [["gpu"]]}]
    return host_config


def container_workdir(request: JobRequest) -> str:
    """The job's working directory inside the container: under ``$HARNESS_OUT`` (writable and kept
    with the record) unless the manifest names a folder of the image."""
    if request.workdir.startswith("/"):
        return request.workdir
    request.host_workdir(sandboxed=True)
    relative = "/".join(part for part in request.workdir.split("/") if part not in ("", "."))
    return f"{CONTAINER_OUT}/{relative}" if relative else CONTAINER_OUT


def container_config(image_id: str, request: JobRequest) -> dict[str, Any]:
    """The whole create request of a run's container."""
    return {
        "Image": image_id,
        "Cmd": list(request.command),
        "WorkingDir": container_workdir(request),
        "Env": [f"{name}={value}" for name, value in job_environment(request).items()],
        "User": SANDBOX_USER,
        "Labels": {RUN_LABEL: request.run_id},
        "AttachStdin": False,
        "OpenStdin": False,
        "Tty": False,
        "HostConfig": sandbox_options(request),
    }


def job_environment(request: JobRequest) -> dict[str, str]:
    """The container's environment: the job's variables plus where the harness helper lives."""
    pins = {}
    if request.hub_cache is not None:
        from harness.store.pins import pin_environment

        pins = pin_environment(container=True)
    return {
        **request.environment,
        **pins,
        "HARNESS_OUT": CONTAINER_OUT,
        "HARNESS_METRICS": f"{CONTAINER_OUT}/{EXTERNAL_JSONL}",
        "PYTHONPATH": CONTAINER_LIB,
        "HOME": "/tmp",
        "MPLCONFIGDIR": "/tmp/matplotlib",
        # the sandbox's only interface: torch.distributed's gloo would otherwise look up the
        # container's hostname, find no address and wait forever
        "GLOO_SOCKET_IFNAME": "lo",
    }


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
    """A started container; ``wait`` returns how it ended, ``stop`` ends it early.

    The engine may die or hang under a running job: every call to it is bounded, and once one
    fails the job calls it no more (``engine_lost`` says why) and ends as ``error`` with what it
    had; the container is then left for ``harness recover`` to remove once the engine answers."""

    LOG_DRAIN_S = 10.0  # how long the log copy may take to catch up once the container stopped

    def __init__(self, api: EngineAPI, image_id: str, request: JobRequest):
        self.request = request
        self.engine_lost: str | None = None
        request.out_dir.chmod(0o777)  # the sandbox user is not the host's owner of the folder
        try:
            self.container = EngineContainer.create(api, container_name(request.run_id), self.config(image_id, request))
        except EngineAPIError as exc:
            raise EngineError(f"could not create the container of {request.run_id}: {exc}") from None
        except LOST as exc:
            raise EngineError(
                f"could not create the container of {request.run_id}: {_engine_fault(api, exc)}"
            ) from None
        self._log_stream: FollowedStream | None = None
        self.log_thread = threading.Thread(target=self._copy_logs, daemon=True)
        self._stopped_by: str | None = None
        self._container_fate = ""

    def config(self, image_id: str, request: JobRequest) -> dict[str, Any]:
        """The container's create request (a Podman job leaves out the limits its host cannot apply)."""
        return container_config(image_id, request)

    @property
    def sample_by_pid(self) -> bool:
        """Whether the sampler follows the container's process tree instead of its cgroup."""
        return False

    def start(self) -> None:
        """Start the container and the copy of its output; EngineError when the engine fails."""
        try:
            self.container.start()
            self._log_stream = self.container.logs()  # opened by the log thread
        except EngineAPIError as exc:
            raise EngineError(f"could not start the container of {self.request.run_id}: {exc}") from None
        except LOST as exc:
            self.engine_lost = _engine_fault(self.container.api, exc)
            raise EngineError(f"could not start the container of {self.request.run_id}: {self.engine_lost}") from None
        self.log_thread.start()
        if self._stopped_by:
            # stop() came while the container was being created or started, when the engine
            # refuses to kill it ("not running"): it must not run to its end
            self._kill()

    def _copy_logs(self) -> None:
        if self._log_stream is not None:
            copy_lines(self._log_stream, self.request.log_path, self.request.echo)

    @property
    def pid(self) -> int | None:
        self.container.reload()
        return self.container.attrs.get("State", {}).get("Pid") or None

    def wait(self) -> JobResult:
        """Wait for the container, killing it at the timeout."""
        exit_code: int | None = None
        try:
            if self.engine_lost is None:
                outcome = self.container.wait(timeout=self.request.timeout_seconds)
                exit_code = int(outcome.get("StatusCode", -1))
        except TimeoutError:
            # the run's timeout; or an engine that stopped answering, which the kill then shows
            self._stopped_by = self._stopped_by or "timeout"
            self._kill()
            self._call(lambda: self.container.wait(timeout=self.container.api.timeout))
        except EngineAPIError:
            pass  # the container is gone; its state below says how it ended
        except LOST as exc:
            self.engine_lost = _engine_fault(self.container.api, exc)
        self._call(self.container.reload)
        if self.engine_lost is not None:
            self._container_fate = self._kill_without_engine()
        self._drain_logs()
        if self.engine_lost is not None:
            return self._lost_result()
        state = self.container.attrs.get("State", {})
        if self._stopped_by:
            return JobResult(self._stopped_by, state.get("ExitCode", exit_code), f"stopped: {self._stopped_by}")
        if state.get("OOMKilled"):
            return JobResult("oom", exit_code, "the container ran out of memory (OOM-killed)")
        if exit_code == 0:
            return JobResult("completed", 0)
        return JobResult("failed", exit_code, f"exit status {exit_code}")

    def _call(self, action: Callable[[], Any]) -> None:
        """One engine call whose error answer does not matter (the container may be gone already);
        a fault of the engine itself marks it lost, and no later call is made."""
        if self.engine_lost is not None:
            return
        try:
            action()
        except EngineAPIError:
            pass
        except LOST as exc:
            self.engine_lost = _engine_fault(self.container.api, exc)

    def _drain_logs(self) -> None:
        """Let the log copy take the last lines; a stream the engine does not end is closed."""
        if self.log_thread.is_alive():
            self.log_thread.join(timeout=1.0 if self.engine_lost else self.LOG_DRAIN_S)
        if self.log_thread.is_alive() and self._log_stream is not None:
            self._log_stream.close()
            self.log_thread.join(timeout=5)

    def _lost_result(self) -> JobResult:
        timeout = self.request.timeout_seconds
        why = (
            f"the run reached its timeout ({timeout:g}s) but {self.engine_lost}"
            if self._stopped_by == "timeout"
            else str(self.engine_lost)
        )
        detail = (
            f"{why}; {self._container_fate}; its output and metrics up to then are kept. "
            "`harness recover` removes the container once the engine answers, `harness run --rerun` runs it again"
        )
        return JobResult("interrupted" if self._stopped_by == "interrupted" else "error", None, detail)

    def _kill_without_engine(self) -> str:
        """Kill the container's processes without its engine (they would go on writing into the
        sealed run folder): its first process, found by the id the engine gave at start, and only
        while that process is still in the container's cgroup (a reused id is left alone)."""
        pid = (self.container.attrs.get("State") or {}).get("Pid") or 0  # as the sampler last saw it
        if not isinstance(pid, int) or pid <= 0:
            return "the container may still be running"
        try:
            in_container = self.container.id in Path(f"/proc/{pid}/cgroup").read_text()
        except OSError:
            return "its container had stopped"
        if not in_container:
            return "the container may still be running"
        try:
            os.kill(pid, signal.SIGKILL)  # the first process of a pid namespace: all of them go
        except ProcessLookupError:
            return "its container had stopped"
        except PermissionError:
            return "the container may still be running (the harness may not signal it)"
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and _alive(pid):
            time.sleep(0.05)
        return "the harness killed the container's processes"

    def stop(self, reason: str = "interrupted") -> None:
        """End the job early (Ctrl-C, cancellation); ``wait`` then reports ``reason``."""
        self._stopped_by = reason
        self._kill()

    def _kill(self) -> None:
        self._call(self.container.kill)

    def remove(self) -> None:
        """Remove the container (not when the engine was lost: ``harness recover`` does it later)."""
        self._call(lambda: self.container.remove(force=True))


def _alive(pid: int) -> bool:
    """Whether process ``pid`` exists and is not a zombie waiting for its parent."""
    try:
        status = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return status.rpartition(")")[2].split()[:1] != ["Z"]


def _engine_fault(api: EngineAPI, exc: BaseException) -> str:
    """What a failed engine call says about the engine, in words."""
    if isinstance(exc, TimeoutError):
        return f"the Docker engine at unix://{api.path} stopped answering (no answer within {api.timeout:g}s)"
    if isinstance(exc, (EngineError, FileNotFoundError, ConnectionRefusedError)):
        return f"the Docker engine at unix://{api.path} went away"
    return f"the connection to the Docker engine at unix://{api.path} broke ({type(exc).__name__})"


def kill_orphan(run_id: str, api: EngineAPI | None = None) -> bool:
    """Kill and remove the container of a run whose harness process died; True if one was found.
    ``api``: the engine that ran it (default: the Docker engine)."""
    try:
        api = api or engine_api(timeout=30)
        found = api.call(
            "GET",
            "/containers/json",
            query={"all": "true", "filters": json.dumps({"label": [f"{RUN_LABEL}={run_id}"]})},
        )
    except (EngineError, OSError):
        return False
    for container in found:
        try:
            EngineContainer(api, container["Id"]).remove(force=True)
        except (EngineError, OSError):
            pass
    return bool(found)


def engine_version(api: EngineAPI) -> str:
    """The engine's version string, for the record (asked once per engine and process)."""
    if api.path not in VERSIONS:  # engine_api() asked it already when it checked the engine
        try:
            VERSIONS[api.path] = api.version()
        except (EngineError, OSError):
            return "unknown"
    return str(VERSIONS[api.path].get("Version", "unknown"))


def run_in_image(api: EngineAPI, image_id: str, command: list[str], timeout: float = 120) -> str:
    """Run a short command in the image under the same sandbox and return its stdout."""
    container = EngineContainer.create(
        api,
        f"harness-probe-{os.getpid()}-{threading.get_ident()}",
        {
            "Image": image_id,
            "Cmd": command,
            "User": SANDBOX_USER,
            "Tty": False,
            "Env": ["HOME=/tmp", f"PYTHONPATH={CONTAINER_LIB}"],
            "HostConfig": {
                "NetworkMode": "none",
                "ReadonlyRootfs": True,
                "CapDrop": ["ALL"],
                "SecurityOpt": ["no-new-privileges"],
                "Tmpfs": {"/tmp": "rw,size=64m"},
                "Binds": [f"{harness_package_dir()}:{CONTAINER_LIB}/harness:ro"],
                # the image may be a pulled one: the probe is as bounded as a run
                "Memory": PROBE_MEMORY_BYTES,
                "MemorySwap": PROBE_MEMORY_BYTES,
                "PidsLimit": 256,
            },
        },
    )
    try:
        container.start()
        container.wait(timeout=timeout)
        output = bytearray()
        for chunk in container.api.stream_logs(container.id, stderr=False, deadline=timeout):
            output += chunk
            if len(output) > PROBE_MAX_OUTPUT:
                raise EngineError(f"{command[0]} in image {image_id[:19]} printed more than {PROBE_MAX_OUTPUT} bytes")
        return output.decode(errors="replace")
    finally:
        container.remove(force=True)
