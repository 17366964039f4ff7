"""Run one job as a plain process on the host (no container): for GPU and Slurm nodes without an
engine. Such a run is marked ``hermetic: false``: nothing isolates it from the host's packages."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

from harness.runtime.docker import copy_lines, harness_package_dir
from harness.runtime.job import JobRequest, JobResult
from harness.store.layout import EXTERNAL_JSONL
from harness.util.secrets import without_secrets

CONTAINER_WORKLOAD = "/workload/"


def host_command(request: JobRequest) -> list[str]:
    """The command with the image's ``/workload/`` paths pointed at the recipe's workload folder,
    and ``python`` at the interpreter running the harness."""
    command = list(request.command)
    if command and command[0] in {"python", "python3"}:
        command[0] = sys.executable
    if request.workload_dir is not None:
        prefix = str(request.workload_dir) + "/"
        command = [
            prefix + part[len(CONTAINER_WORKLOAD) :] if part.startswith(CONTAINER_WORKLOAD) else part
            for part in command
        ]
    return command


def host_environment(request: JobRequest) -> dict[str, str]:
    """The host's environment less secrets, plus the job's variables."""
    base = without_secrets(os.environ)
    library = str(harness_package_dir().parent)
    python_path = os.pathsep.join(p for p in (library, base.get("PYTHONPATH", "")) if p)
    pins = {}
    if request.hub_cache is not None:
        from harness.store.pins import pin_environment

        pins = pin_environment(container=False)
    return {
        **base,
        **request.environment,
        **pins,
        "HARNESS_OUT": str(request.out_dir),
        "HARNESS_METRICS": str(request.out_dir / EXTERNAL_JSONL),
        "PYTHONPATH": python_path,
        "MPLBACKEND": "Agg",
    }


class ProcessJob:
    """A job started as a host process group; the same interface as ``DockerJob``."""

    def __init__(self, request: JobRequest):
        self.request = request
        self.process: subprocess.Popen[bytes] | None = None
        self._stopped_by: str | None = None
        self._log_thread: threading.Thread | None = None

    def start(self) -> None:
        try:
            self.process = subprocess.Popen(
                host_command(self.request),
                env=host_environment(self.request),
                cwd=self.request.out_dir,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        except OSError as exc:
            self.process = None
            self._start_error = f"cannot start {self.request.command[0]!r}: {exc.strerror}"
            Path(self.request.log_path).write_text(self._start_error + "\n")
            return
        self._log_thread = threading.Thread(target=self._stream, daemon=True)
        self._log_thread.start()

    def _stream(self) -> None:
        assert self.process is not None and self.process.stdout is not None
        copy_lines(iter(self.process.stdout.readline, b""), self.request.log_path, self.request.echo)

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process else None

    def wait(self) -> JobResult:
        if self.process is None:
            return JobResult("failed", None, self._start_error)
        try:
            exit_code = self.process.wait(timeout=self.request.timeout_seconds)
        except subprocess.TimeoutExpired:
            self._stopped_by = self._stopped_by or "timeout"
            self._kill()
            exit_code = self.process.wait()
        if self._log_thread is not None:
            self._log_thread.join(timeout=10)
        if self._stopped_by:
            return JobResult(self._stopped_by, exit_code, f"stopped: {self._stopped_by}")
        if exit_code == 0:
            return JobResult("completed", 0)
        if exit_code == -signal.SIGKILL:
            return JobResult("failed", exit_code, "killed by SIGKILL (out of memory?)")
        return JobResult("failed", exit_code, f"exit status {exit_code}")

    def stop(self, reason: str = "interrupted") -> None:
        self._stopped_by = reason
        self._kill()

    def _kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            try:
                os.killpg(self.process.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass

    def remove(self) -> None:
        """Nothing to clean up for a process."""
