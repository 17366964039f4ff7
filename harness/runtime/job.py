"""What every runtime takes and returns for one job."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path


@dataclass
class JobResult:
    """How a job ended."""

    status: str  # completed | failed | timeout | oom | interrupted
    exit_code: int | None
    detail: str = ""


@dataclass
class JobRequest:
    """Everything a runtime needs to start one job."""

    run_id: str
    command: list[str]
    environment: dict[str, str]
    out_dir: Path
    log_path: Path
    cpus: float
    memory_bytes: int
    gpus: int
    timeout_seconds: float
    echo: Callable[[str], None] | None = None
    workload_dir: Path | None = None  # the recipe's workload folder, for the process runtime
    hub_cache: Path | None = None  # pinned Hub repos fetched on the host (read-only for the job)
    workdir: str = "."  # the manifest's workdir: relative to out_dir, or an absolute path in the image

    def host_workdir(self, sandboxed: bool) -> Path | None:
        """The working folder under ``out_dir`` (made; writable by the sandbox user when
        ``sandboxed``), or None when the job starts in a folder of the image."""
        if self.workdir.startswith("/"):
            return None
        folder = self.out_dir / self.workdir
        folder.mkdir(parents=True, exist_ok=True)
        if sandboxed:
            for made in (folder.relative_to(self.out_dir), *folder.relative_to(self.out_dir).parents):
                (self.out_dir / made).chmod(0o777)  # the sandbox user is not the host's owner
        return folder
