"""The host's GPU count as the local backend sees it, with NVML faked at the pynvml boundary (this
machine has no GPU): the count must come from NVML, and a GPU sweep must fit a GPU host."""

from __future__ import annotations

from typing import Any

import pynvml
import pytest

from harness.backends.local import host_resources, parallel_slots
from harness.capture import gpu
from harness.manifest import Hardware


class FakeNvml:
    """The pynvml calls ``open_nvml`` makes, answering for ``count`` H100s."""

    NVMLError = pynvml.NVMLError

    def __init__(self, count: int):
        self.count = count
        self.initialised = 0

    def nvmlInit(self) -> None:
        self.initialised += 1

    def nvmlShutdown(self) -> None:
        self.initialised -= 1

    def nvmlSystemGetDriverVersion(self) -> str:
        return "580.65.06"

    def nvmlDeviceGetCount(self) -> int:
        return self.count

    def nvmlDeviceGetHandleByIndex(self, index: int) -> Any:
        return ("handle", index)

    def nvmlDeviceGetName(self, handle: Any) -> str:
        return "NVIDIA H100 80GB HBM3"

    def nvmlDeviceGetUUID(self, handle: Any) -> str:
        return f"GPU-{handle[1]}"

    def nvmlDeviceGetMemoryInfo(self, handle: Any) -> Any:
        return type("Memory", (), {"total": 80 * 2**30, "used": 0})()


@pytest.fixture
def two_gpus(monkeypatch: pytest.MonkeyPatch) -> FakeNvml:
    fake = FakeNvml(2)
    monkeypatch.setattr(gpu, "_pynvml", fake)
    return fake


def test_host_resources_count_the_gpus_nvml_sees(two_gpus: FakeNvml) -> None:
    assert gpu.host_gpu_count() == 2
    assert host_resources()["gpus"] == 2
    assert two_gpus.initialised == 0  # every open was closed


def test_a_gpu_sweep_fits_a_gpu_host(two_gpus: FakeNvml) -> None:
    one_gpu_each = Hardware(accelerator="cuda", gpus=1, cpus=1, memory="1GiB", timeout="1m")
    assert parallel_slots(one_gpu_each, host={"cpus": 8, "memory_bytes": 64 * 2**30, "gpus": gpu.host_gpu_count()}) == 2


def test_no_nvml_counts_no_gpus(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(gpu, "_pynvml", None)
    assert gpu.host_gpu_count() == 0
    assert host_resources()["gpus"] == 0


def test_a_host_without_the_driver_library_never_imports_pynvml() -> None:
    """This CPU host has no libnvidia-ml.so.1: NVML is absent with pynvml's own reason, and the
    run's host capture never pays for importing pynvml."""
    import ctypes
    import subprocess
    import sys

    try:
        ctypes.CDLL(gpu.NVML_LIBRARY)
        pytest.skip("this host has the NVIDIA driver's NVML library")
    except OSError:
        pass
    probe = (
        "import sys; from harness.capture.environment import capture_host; from harness.capture.gpu import open_nvml; "
        "host = capture_host(); print(host['gpus'], host['gpu_driver'], open_nvml().reason, 'pynvml' in sys.modules)"
    )
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[] None NVML unavailable: NVML Shared Library Not Found False"
