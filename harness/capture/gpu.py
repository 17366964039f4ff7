"""GPU facts and samples through NVML (nvidia-ml-py).

No library, no driver or no device is a normal state ("absent", with the reason), never an
error; and each NVML query is wrapped on its own so that one unsupported query (power on some
boards, per-process memory under MIG, ...) drops that value only.
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from harness.errors import HarnessError

logger = logging.getLogger(__name__)

_NOT_LOADED: Any = object()
_pynvml: Any = _NOT_LOADED


def _library() -> Any:
    """The pynvml module, imported on first use (a CPU run never needs it); None when absent."""
    global _pynvml
    if _pynvml is _NOT_LOADED:
        try:
            _pynvml = importlib.import_module("pynvml")
        except ImportError:  # nvidia-ml-py is a dependency, but a broken install must not stop a run
            _pynvml = None
    return _pynvml


# metric suffix (after gpu/<i>/) -> query on one device handle
DeviceQuery = Callable[[Any], float]


def _utilization(handle: Any) -> float:
    return float(_library().nvmlDeviceGetUtilizationRates(handle).gpu)


def _memory_used(handle: Any) -> float:
    return float(_library().nvmlDeviceGetMemoryInfo(handle).used)


def _memory_total(handle: Any) -> float:
    return float(_library().nvmlDeviceGetMemoryInfo(handle).total)


def _power(handle: Any) -> float:
    return _library().nvmlDeviceGetPowerUsage(handle) / 1000.0  # milliwatts


def _power_limit(handle: Any) -> float:
    return _library().nvmlDeviceGetEnforcedPowerLimit(handle) / 1000.0


def _temperature(handle: Any) -> float:
    return float(_library().nvmlDeviceGetTemperature(handle, _library().NVML_TEMPERATURE_GPU))


def _sm_clock(handle: Any) -> float:
    return float(_library().nvmlDeviceGetClockInfo(handle, _library().NVML_CLOCK_SM))


DEVICE_QUERIES: dict[str, DeviceQuery] = {
    "utilization_percent": _utilization,
    "memory_used_bytes": _memory_used,
    "memory_total_bytes": _memory_total,
    "power_watts": _power,
    "power_limit_watts": _power_limit,
    "temperature_c": _temperature,
    "sm_clock_mhz": _sm_clock,
}


def nvml_errors() -> tuple[type[BaseException], ...]:
    """The exception types an NVML query may raise (none when the library is missing)."""
    nvml = _library()
    return (nvml.NVMLError,) if nvml is not None else ()


def query_or_none(query: Callable[..., Any], *args: Any) -> Any:
    """Run one NVML query; an NVML error gives None (that value is dropped) instead of raising."""
    try:
        return query(*args)
    except nvml_errors() as exc:
        logger.debug("NVML query %s failed: %s", getattr(query, "__name__", query), exc)
        return None


def sample_device(index: int, handle: Any, queries: dict[str, DeviceQuery] = DEVICE_QUERIES) -> list[tuple[str, float]]:
    """``(gpu/<index>/<metric>, value)`` for every query of ``queries`` that answered."""
    samples = []
    for suffix, query in queries.items():
        value = query_or_none(query, handle)
        if value is not None:
            samples.append((f"gpu/{index}/{suffix}", float(value)))
    return samples


def process_memory(handle: Any, pids: set[int]) -> float | None:
    """GPU memory used on one device by the processes ``pids``; None when NVML cannot say."""
    nvml = _library()
    if nvml is None:
        return None
    queries = (nvml.nvmlDeviceGetComputeRunningProcesses, nvml.nvmlDeviceGetGraphicsRunningProcesses)
    answers = [query_or_none(query, handle) for query in queries]
    if all(answer is None for answer in answers):
        return None
    total = 0
    seen: set[int] = set()  # a process may be listed as compute and graphics both
    for process in (process for answer in answers if answer for process in answer):
        used = getattr(process, "usedGpuMemory", None)
        if process.pid in pids and process.pid not in seen and used is not None:
            total += used
            seen.add(process.pid)
    return float(total)


@dataclass
class NvmlSession:
    """An initialised NVML and the handles of the devices to sample."""

    available: bool
    reason: str
    handles: dict[int, Any] = field(default_factory=dict)
    devices: list[dict[str, Any]] = field(default_factory=list)
    driver: str | None = None

    def status(self) -> dict[str, Any]:
        """``{"available", "reason", "driver", "devices"}`` for record.json."""
        return {
            "available": self.available,
            "reason": self.reason,
            "driver": self.driver,
            "devices": list(self.devices),
        }

    def sample(self, pids: set[int] | None) -> list[tuple[str, float]]:
        """One sample of every device; per-process memory when ``pids`` is given."""
        samples: list[tuple[str, float]] = []
        for index, handle in self.handles.items():
            samples.extend(sample_device(index, handle))
            if pids is not None:
                used = process_memory(handle, pids)
                if used is not None:
                    samples.append((f"gpu/{index}/process_memory_bytes", used))
        return samples

    def close(self) -> None:
        """Release NVML (it counts initialisations, so each open needs one close)."""
        if self.available:
            query_or_none(_library().nvmlShutdown)
            self.available = False


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


NVML_LIBRARY = "libnvidia-ml.so.1"  # the driver's library, the first thing pynvml's nvmlInit loads on Linux


def _driver_library_loads() -> bool:
    """Whether the NVIDIA driver's NVML library loads: without it, NVML is absent whatever pynvml
    says, and a CPU host skips importing pynvml (about 45 ms of every run's start)."""
    import ctypes

    try:
        ctypes.CDLL(NVML_LIBRARY)
    except OSError:
        return False
    return True


def open_nvml(indices: list[int] | None = None) -> NvmlSession:
    """Initialise NVML for the devices ``indices`` (None: every device the host has).

    Never raises for a missing library, driver or device: the session says why it is absent.
    """
    if _pynvml is _NOT_LOADED and not _driver_library_loads():
        return NvmlSession(False, "NVML unavailable: NVML Shared Library Not Found")  # pynvml's own words
    nvml = _library()
    if nvml is None:
        return NvmlSession(False, "nvidia-ml-py (pynvml) is not installed")
    try:
        nvml.nvmlInit()
    except nvml.NVMLError as exc:
        return NvmlSession(False, f"NVML unavailable: {exc}")
    session = NvmlSession(True, "")
    driver = query_or_none(nvml.nvmlSystemGetDriverVersion)
    session.driver = _text(driver) if driver is not None else None
    count = query_or_none(nvml.nvmlDeviceGetCount) or 0
    wanted = list(range(count)) if indices is None else list(indices)
    for index in wanted:
        if not 0 <= index < count:
            logger.warning("GPU %d requested but NVML sees %d device(s)", index, count)
            continue
        handle = query_or_none(nvml.nvmlDeviceGetHandleByIndex, index)
        if handle is None:
            continue
        session.handles[index] = handle
        name = query_or_none(nvml.nvmlDeviceGetName, handle)
        uuid = query_or_none(nvml.nvmlDeviceGetUUID, handle)
        memory = query_or_none(_memory_total, handle)
        session.devices.append(
            {
                "index": index,
                "name": _text(name) if name is not None else None,
                "uuid": _text(uuid) if uuid is not None else None,
                "memory_total_bytes": int(memory) if memory is not None else None,
            }
        )
    if not session.handles:
        session.reason = "no GPU device" if count == 0 else "none of the requested GPUs found"
        session.close()
        session.available = False
    return session


def gpu_inventory() -> dict[str, Any]:
    """The host's GPUs for record.json: ``{"gpus": [names], "gpu_driver": str | None}``."""
    session = open_nvml(None)
    try:
        return {
            "gpus": [device["name"] for device in session.devices],
            "gpu_driver": session.driver,
        }
    finally:
        session.close()


def host_gpu_status() -> dict[str, Any]:
    """What NVML sees on this host (``available``, ``reason``, ``devices``); never raises."""
    session = open_nvml(None)
    try:
        return session.status()
    finally:
        session.close()


def check_gpus(requested: int) -> None:
    """Refuse a GPU run on a host whose NVML sees fewer GPUs than requested."""
    if requested <= 0:
        return
    status = host_gpu_status()
    count = len(status.get("devices", []))
    if count < requested:
        reason = status.get("reason") or f"{count} GPU(s) seen"
        raise HarnessError(
            f"the manifest asks for {requested} GPU(s) but this host has {count} ({reason}); "
            "use a GPU host or set hardware.gpus: 0"
        )


def host_gpu_count() -> int:
    """GPUs NVML sees on this host (0 without a driver or without NVML)."""
    return len(host_gpu_status().get("devices", []))
