"""Host-side sampler of one run's system metrics: its container's cgroup (or process tree) and GPUs.

Every sample is appended to ``system.jsonl`` as ``{"time", "name", "value"}`` lines with one
``os.write`` on an ``O_APPEND`` descriptor, so a ``kill -9`` of the harness loses at most the
sample being taken. The metric names are listed in docs/metrics.md.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from pathlib import Path
from typing import Any, Protocol

import psutil

from harness.capture import gpu
from harness.errors import HarnessError

logger = logging.getLogger(__name__)

MIN_INTERVAL_S = 0.1
MAX_INTERVAL_S = 60.0
CGROUP_ROOT = Path("/sys/fs/cgroup")
# cgroup v1 reports "no limit" as a huge page-aligned number; anything above this is unlimited.
_UNLIMITED_V1 = 1 << 60


Samples = list[tuple[str, float]]
NO_GPU_STATUS = {
    "available": False,
    "reason": "no GPU assigned to the run",
    "driver": None,
    "devices": [],
}


class SampleSource(Protocol):
    """Where a run's CPU, memory, IO, network and PID figures come from."""

    def read(self) -> tuple[float | None, Samples]:
        """Cumulative CPU seconds (None if unknown) and the other metrics, now."""
        ...

    def pids(self) -> set[int]:
        """Host pids of the run's processes (for per-process GPU memory)."""
        ...


def _read_text(path: Path) -> str:
    with open(path) as handle:
        return handle.read()


def _read_int(path: Path) -> int:
    return int(_read_text(path).strip())


def _key_values(path: Path) -> dict[str, int]:
    """A cgroup ``key value`` file (cpu.stat, memory.stat) as a dict."""
    values = {}
    for line in _read_text(path).splitlines():
        key, _, value = line.partition(" ")
        if value.strip().lstrip("-").isdigit():
            values[key] = int(value)
    return values


def _network_bytes(pid: int) -> Samples:
    """rx/tx bytes of every interface but loopback in the network namespace of ``pid``."""
    rx = tx = 0
    for line in _read_text(Path(f"/proc/{pid}/net/dev")).splitlines()[2:]:
        interface, _, counters = line.partition(":")
        if interface.strip() == "lo":
            continue
        fields = counters.split()
        rx += int(fields[0])
        tx += int(fields[8])
    return [("net/rx_bytes", float(rx)), ("net/tx_bytes", float(tx))]


def _host_memory_bytes() -> int:
    return int(psutil.virtual_memory().total)


class CgroupSource:
    """Reads a container's cgroup files directly (v1 or v2): cheap, no engine round trip."""

    def __init__(self, container_id: str, pid: int):
        self.pid = pid
        self.version, self.dirs = self._locate(container_id, pid)

    @staticmethod
    def _locate(container_id: str, pid: int) -> tuple[int, dict[str, Path]]:
        """cgroup version and folder per controller, from /proc/<pid>/cgroup or the usual paths."""
        v1: dict[str, Path] = {}
        v2: Path | None = None
        try:
            lines = _read_text(Path(f"/proc/{pid}/cgroup")).splitlines() if pid else []
        except OSError:
            lines = []
        for line in lines:
            _, controllers, relative = line.split(":", 2)
            relative = relative.lstrip("/")
            if not controllers:
                v2 = CGROUP_ROOT / relative
                continue
            for controller in controllers.split(","):
                for mount in (controllers, controller):
                    folder = CGROUP_ROOT / mount / relative
                    if folder.is_dir():
                        v1[controller] = folder
                        break
        if "memory" not in v1:  # the cgroupfs driver's layout when /proc says nothing useful
            for controller in ("cpu", "cpuacct", "memory", "blkio", "pids"):
                folder = CGROUP_ROOT / controller / "docker" / container_id
                if folder.is_dir():
                    v1[controller] = folder
        if {"cpuacct", "memory"} <= v1.keys():
            return 1, v1
        candidates = [v2] if v2 is not None else []
        candidates += [
            CGROUP_ROOT / "system.slice" / f"docker-{container_id}.scope",
            CGROUP_ROOT / "docker" / container_id,
        ]
        for folder in candidates:
            if folder is not None and (folder / "memory.current").is_file():
                return 2, {"unified": folder}
        raise FileNotFoundError(f"no cgroup folder found for container {container_id[:12]}")

    def pids(self) -> set[int]:
        folder = self.dirs.get("pids") or self.dirs.get("memory") or self.dirs.get("unified")
        assert folder is not None
        return {int(line) for line in _read_text(folder / "cgroup.procs").split()}

    def read(self) -> tuple[float | None, Samples]:
        if self.version == 1:
            cpu_seconds, samples = self._read_v1()
        else:
            cpu_seconds, samples = self._read_v2()
        try:
            samples += _network_bytes(self.pid)
        except (OSError, IndexError, ValueError):
            pass  # the container's init has exited: no namespace to read
        return cpu_seconds, samples

    def _read_v1(self) -> tuple[float, Samples]:
        d = self.dirs
        cpu_seconds = _read_int(d["cpuacct"] / "cpuacct.usage") / 1e9
        samples: Samples = []
        if "cpu" in d:
            stat = _key_values(d["cpu"] / "cpu.stat")
            samples.append(("cpu/throttled_periods", float(stat.get("nr_throttled", 0))))
            samples.append(("cpu/throttled_seconds", stat.get("throttled_time", 0) / 1e9))
        memory = d["memory"]
        stat = _key_values(memory / "memory.stat")
        usage = _read_int(memory / "memory.usage_in_bytes")
        limit = _read_int(memory / "memory.limit_in_bytes")
        samples.append(("memory/used_bytes", float(usage - stat.get("total_inactive_file", 0))))
        samples.append(("memory/limit_bytes", float(limit if limit < _UNLIMITED_V1 else _host_memory_bytes())))
        samples.append(("memory/peak_bytes", float(_read_int(memory / "memory.max_usage_in_bytes"))))
        if "blkio" in d:
            read = write = 0
            text = _read_text(d["blkio"] / "blkio.throttle.io_service_bytes_recursive")
            for line in text.splitlines():
                fields = line.split()
                if len(fields) == 3 and fields[1] == "Read":
                    read += int(fields[2])
                elif len(fields) == 3 and fields[1] == "Write":
                    write += int(fields[2])
            samples += [("io/read_bytes", float(read)), ("io/write_bytes", float(write))]
        if "pids" in d:
            samples.append(("pids/current", float(_read_int(d["pids"] / "pids.current"))))
        return cpu_seconds, samples

    def _read_v2(self) -> tuple[float, Samples]:
        folder = self.dirs["unified"]
        stat = _key_values(folder / "cpu.stat")
        cpu_seconds = stat.get("usage_usec", 0) / 1e6
        samples: Samples = [
            ("cpu/throttled_periods", float(stat.get("nr_throttled", 0))),
            ("cpu/throttled_seconds", stat.get("throttled_usec", 0) / 1e6),
        ]
        memory_stat = _key_values(folder / "memory.stat")
        usage = _read_int(folder / "memory.current")
        limit_text = _read_text(folder / "memory.max").strip()
        limit = _host_memory_bytes() if limit_text == "max" else int(limit_text)
        samples.append(("memory/used_bytes", float(usage - memory_stat.get("inactive_file", 0))))
        samples.append(("memory/limit_bytes", float(limit)))
        if (folder / "memory.peak").is_file():  # kernel 5.19+
            samples.append(("memory/peak_bytes", float(_read_int(folder / "memory.peak"))))
        read = write = 0
        if (folder / "io.stat").is_file():
            for line in _read_text(folder / "io.stat").splitlines():
                for field in line.split()[1:]:
                    key, _, value = field.partition("=")
                    if key == "rbytes":
                        read += int(value)
                    elif key == "wbytes":
                        write += int(value)
        samples += [("io/read_bytes", float(read)), ("io/write_bytes", float(write))]
        if (folder / "pids.current").is_file():
            samples.append(("pids/current", float(_read_int(folder / "pids.current"))))
        return cpu_seconds, samples


class DockerStatsSource:
    """The engine's stats API (one-shot), for hosts whose cgroup files the harness cannot read."""

    def __init__(self, container: Any, pid: int):
        self.container = container
        self.pid = pid

    def pids(self) -> set[int]:
        return _process_tree_pids(self.pid)

    def read(self) -> tuple[float | None, Samples]:
        stats = self.container.stats(stream=False, one_shot=True)
        cpu = stats.get("cpu_stats") or {}
        total = (cpu.get("cpu_usage") or {}).get("total_usage")
        cpu_seconds = total / 1e9 if total else None
        samples: Samples = []
        throttling = cpu.get("throttling_data") or {}
        if throttling:
            samples.append(("cpu/throttled_periods", float(throttling.get("throttled_periods", 0))))
            samples.append(("cpu/throttled_seconds", throttling.get("throttled_time", 0) / 1e9))
        memory = stats.get("memory_stats") or {}
        if "usage" in memory:
            inner = memory.get("stats") or {}
            inactive = inner.get("total_inactive_file", inner.get("inactive_file", 0))
            samples.append(("memory/used_bytes", float(memory["usage"] - inactive)))
            samples.append(("memory/limit_bytes", float(memory.get("limit", 0))))
            if "max_usage" in memory:
                samples.append(("memory/peak_bytes", float(memory["max_usage"])))
        blkio = (stats.get("blkio_stats") or {}).get("io_service_bytes_recursive") or []
        read = sum(entry["value"] for entry in blkio if entry.get("op", "").lower() == "read")
        write = sum(entry["value"] for entry in blkio if entry.get("op", "").lower() == "write")
        samples += [("io/read_bytes", float(read)), ("io/write_bytes", float(write))]
        networks = (stats.get("networks") or {}).values()
        samples.append(("net/rx_bytes", float(sum(n.get("rx_bytes", 0) for n in networks))))
        samples.append(("net/tx_bytes", float(sum(n.get("tx_bytes", 0) for n in networks))))
        current = (stats.get("pids_stats") or {}).get("current")
        if current is not None:
            samples.append(("pids/current", float(current)))
        return cpu_seconds, samples


def _process_tree_pids(pid: int) -> set[int]:
    try:
        root = psutil.Process(pid)
        return {pid} | {child.pid for child in root.children(recursive=True)}
    except psutil.Error:
        return set()


class ProcessTreeSource:
    """A process and all its descendants, through psutil (the process runtime)."""

    def __init__(self, pid: int):
        self.root = psutil.Process(pid)
        # CPU time of processes seen before, so a child that exits does not make the sum drop
        self._cpu_of: dict[int, float] = {}
        self._cpu_of_exited = 0.0
        self._host_memory = _host_memory_bytes()

    def _tree(self) -> list[psutil.Process]:
        try:
            return [self.root, *self.root.children(recursive=True)]
        except psutil.NoSuchProcess:
            return []

    def pids(self) -> set[int]:
        return {process.pid for process in self._tree()}

    def read(self) -> tuple[float | None, Samples]:
        processes = self._tree()
        if not processes:
            return None, []
        rss = read = write = tasks = 0
        cpu_now: dict[int, float] = {}
        for process in processes:
            try:
                with process.oneshot():
                    times = process.cpu_times()
                    cpu_now[process.pid] = times.user + times.system
                    rss += process.memory_info().rss
                    tasks += process.num_threads()
                    io = process.io_counters()
                    read += io.read_bytes
                    write += io.write_bytes
            except (psutil.NoSuchProcess, psutil.AccessDenied, AttributeError):
                continue
        for pid, seconds in self._cpu_of.items():
            if pid not in cpu_now:
                self._cpu_of_exited += seconds
        self._cpu_of = cpu_now
        cpu_seconds = self._cpu_of_exited + sum(cpu_now.values())
        samples: Samples = [
            ("memory/used_bytes", float(rss)),
            ("memory/limit_bytes", float(self._host_memory)),
            ("io/read_bytes", float(read)),
            ("io/write_bytes", float(write)),
            ("pids/current", float(tasks)),
        ]
        return cpu_seconds, samples


class SystemSampler:
    """Samples one run (a container or a process tree) and its GPUs on a daemon thread."""

    def __init__(
        self,
        run_id: str,
        jsonl_path: Path,
        interval: float = 1.0,
        container: Any = None,
        pid: int | None = None,
        gpu_indices: list[int] | None = None,
        *,
        prefer_cgroup: bool = True,
    ):
        """Sample ``container`` (a docker SDK Container) or the process tree of ``pid``.

        ``gpu_indices``: the host (NVML) indices of the GPUs given to the run; None or an empty
        list: no GPU, nothing sampled. ``prefer_cgroup=False`` forces the engine's stats API.
        """
        if not MIN_INTERVAL_S <= interval <= MAX_INTERVAL_S:
            raise HarnessError(
                f"system sampling interval must be {MIN_INTERVAL_S} to {MAX_INTERVAL_S} s, got {interval}"
            )
        if (container is None) == (pid is None):
            raise HarnessError("SystemSampler needs exactly one of a container or a pid")
        self.run_id = run_id
        self.jsonl_path = Path(jsonl_path)
        self.interval = float(interval)
        self.container = container
        self.pid = pid
        self.gpu_indices = gpu_indices
        self.prefer_cgroup = prefer_cgroup
        self.peak_memory_bytes = 0
        self.samples_taken = 0
        self._source: SampleSource | None = None
        self._nvml: gpu.NvmlSession | None = None
        self._gpu_status: dict[str, Any] | None = None
        self._last_cpu: tuple[float, float] | None = None  # (monotonic time, cpu seconds)
        self._fd: int | None = None
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._warned = False

    # -- lifecycle -------------------------------------------------------------------------
    def start(self) -> None:
        """Open the output and NVML, then sample every ``interval`` s until :meth:`stop`."""
        if self._thread is not None:
            return
        self.jsonl_path.parent.mkdir(parents=True, exist_ok=True)
        self._fd = os.open(self.jsonl_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        if self.gpu_indices:
            self._nvml = gpu.open_nvml(self.gpu_indices)
            self._gpu_status = self._nvml.status()
        else:
            self._gpu_status = NO_GPU_STATUS
        self._thread = threading.Thread(target=self._loop, name="harness-sampler", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop sampling (waits for the sample in progress) and release the output and NVML."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        if self._nvml is not None:
            self._nvml.close()
            self._nvml = None
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    @property
    def source(self) -> SampleSource | None:
        """Where the samples come from (CgroupSource, DockerStatsSource, ProcessTreeSource)."""
        return self._source

    def gpu_status(self) -> dict[str, Any]:
        """``{"available", "reason", "driver", "devices"}`` of the GPUs sampled, for record.json."""
        if self._gpu_status is None:
            if not self.gpu_indices:
                return NO_GPU_STATUS
            session = gpu.open_nvml(self.gpu_indices)
            status = session.status()
            session.close()
            return status
        return self._gpu_status

    # -- sampling --------------------------------------------------------------------------
    def _loop(self) -> None:
        next_due = time.monotonic()
        while True:
            self.sample_once()
            next_due += self.interval
            delay = next_due - time.monotonic()
            if delay < 0:  # a slow sample: skip ahead instead of bursting to catch up
                next_due, delay = time.monotonic(), 0.0
            if self._stop.wait(delay):
                return

    def _resolve_source(self) -> SampleSource | None:
        if self._source is not None:
            return self._source
        if self.pid is not None:
            self._source = ProcessTreeSource(self.pid)
            return self._source
        container_pid = (self.container.attrs.get("State") or {}).get("Pid") or 0
        if not container_pid:
            self.container.reload()
            container_pid = self.container.attrs["State"].get("Pid") or 0
            if not container_pid:
                return None  # created, not started yet
        if self.prefer_cgroup:
            try:
                self._source = CgroupSource(self.container.id, container_pid)
                return self._source
            except FileNotFoundError as exc:
                if not psutil.pid_exists(container_pid):
                    raise ProcessLookupError(f"container {self.container.id[:12]} exited") from exc
                logger.info("%s; using the engine's stats API", exc)
        self._source = DockerStatsSource(self.container, container_pid)
        return self._source

    def sample_once(self) -> Samples:
        """Take one sample now, append it to the JSONL file and return it."""
        now = time.time()
        samples: Samples = []
        try:
            source = self._resolve_source()
            if source is not None:
                cpu_seconds, samples = source.read()
                samples = self._with_cpu_percent(cpu_seconds, samples)
            if self._nvml is not None and self._nvml.handles:
                pids = source.pids() if source is not None else None
                samples += self._nvml.sample(pids)
        except (FileNotFoundError, ProcessLookupError, psutil.NoSuchProcess) as exc:
            logger.debug("run %s has no process left to sample: %s", self.run_id, exc)
        except Exception as exc:  # noqa: BLE001 — telemetry must never take a run down: note it and go on
            if not self._warned:
                logger.warning("system sample of run %s failed: %s", self.run_id, exc)
                self._warned = True
        self._track_peak(samples)
        if samples and self._fd is not None:
            lines = "".join(json.dumps({"time": now, "name": name, "value": value}) + "\n" for name, value in samples)
            try:
                os.write(self._fd, lines.encode())
            except OSError as exc:  # e.g. disk full: the runner reports it; keep the run alive
                if not self._warned:
                    logger.warning("cannot write system samples of run %s: %s", self.run_id, exc)
                    self._warned = True
                return samples
            self.samples_taken += 1
        return samples

    def _with_cpu_percent(self, cpu_seconds: float | None, samples: Samples) -> Samples:
        if cpu_seconds is None:
            return samples
        now = time.monotonic()
        previous, self._last_cpu = self._last_cpu, (now, cpu_seconds)
        if previous is None or now <= previous[0]:
            return samples
        percent = max(0.0, (cpu_seconds - previous[1]) / (now - previous[0]) * 100.0)
        return [("cpu/percent", percent), *samples]

    def _track_peak(self, samples: Samples) -> None:
        for name, value in samples:
            if name in ("memory/used_bytes", "memory/peak_bytes"):
                self.peak_memory_bytes = max(self.peak_memory_bytes, int(value))
        # the process runtime has no kernel peak: report the highest sample seen
        if self.pid is not None and samples:
            samples.append(("memory/peak_bytes", float(self.peak_memory_bytes)))


def read_system_jsonl(jsonl_path: Path) -> tuple[list[float], list[str], list[float]]:
    """Times, names and values of a system.jsonl; a half-written or garbled line is skipped."""
    times: list[float] = []
    names: list[str] = []
    values: list[float] = []
    try:
        handle = open(jsonl_path, "rb")
    except FileNotFoundError:
        return times, names, values
    with handle:
        for line in handle:
            if not line.endswith(b"\n"):
                break  # the writer was killed mid-line
            try:
                row = json.loads(line)
                time_, name, value = float(row["time"]), str(row["name"]), float(row["value"])
            except (ValueError, KeyError, TypeError):
                continue
            times.append(time_)
            names.append(name)
            values.append(value)
    return times, names, values


def system_jsonl_to_parquet(run_id: str, jsonl_path: Path, parquet_path: Path) -> None:
    """Write ``system.parquet`` (run_id, time, name, value) from ``system.jsonl``, atomically."""
    from harness.util.fsutil import atomic_path, write_table_atomic
    from harness.util.small_parquet import SMALL_TABLE_ROWS, Column, encode_table

    times, names, values = read_system_jsonl(Path(jsonl_path))
    if len(times) <= SMALL_TABLE_ROWS:  # a short run's table: no pyarrow to load
        columns: list[Column] = [
            ("run_id", "string", [run_id] * len(times)),
            ("time", "double", times),
            ("name", "string", names),
            ("value", "double", values),
        ]
        with atomic_path(Path(parquet_path)) as tmp:  # as pyarrow's table below: renamed, not synced
            tmp.write_bytes(encode_table(columns))
        return
    # pyarrow only here: the sampler needs psutil alone (scripts/gpu_check.py on a bare GPU host)
    from harness.util.arrow import constant_string_column, float64_column, string_column, table

    arrow_columns = {
        "run_id": constant_string_column(run_id, len(times)),
        "time": float64_column(times),
        "name": string_column(names),
        "value": float64_column(values),
    }
    write_table_atomic(table(arrow_columns), Path(parquet_path))
