"""What a run's software and hardware were: captured inside the image, and on the host.

``ENVIRONMENT_SCRIPT`` is Python source (standard library only) that the runtime runs inside the
run's image with ``python -c``; it prints one JSON object. ``capture_host`` describes the host for
record.json. Environment variables are recorded from an allow-list only, and what the one secret
filter (``harness.secret_env.is_secret``) flags is dropped even when the allow-list would take it.
"""

from __future__ import annotations

import os
import platform
import socket
from pathlib import Path
from typing import Any

import psutil

from harness.capture.gpu import gpu_inventory
from harness.secret_env import filter_source

ENVIRONMENT_SCRIPT = r"""
import importlib.metadata, json, os, platform, re, shutil, subprocess, sys

ALLOWED_NAMES = {
    "PATH", "PYTHONPATH", "PYTHONHASHSEED", "PYTHONUNBUFFERED", "HOME", "USER", "LANG",
    "LC_ALL", "TZ", "CUDA_VISIBLE_DEVICES", "NVIDIA_VISIBLE_DEVICES",
    "NVIDIA_DRIVER_CAPABILITIES", "CUDA_VERSION", "CUBLAS_WORKSPACE_CONFIG",
    "CUDA_LAUNCH_BLOCKING", "OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS",
    "TORCH_DETERMINISTIC", "TF_DETERMINISTIC_OPS", "VIRTUAL_ENV", "MUJOCO_GL",
    "HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE",
}
ALLOWED_PREFIXES = ("HARNESS_",)
# SECRET FILTER (harness.secret_env.is_secret, embedded below)

def packages():
    found = {}
    for dist in importlib.metadata.distributions():
        name = dist.metadata["Name"]
        if name:
            found[name.lower()] = f"{name}=={dist.version}"
    return [found[key] for key in sorted(found)]

def cpu_model():
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                if line.lower().startswith(("model name", "hardware", "cpu model")):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or None

def nvidia_smi():
    if shutil.which("nvidia-smi") is None:
        return None
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=name,driver_version", "--format=csv,noheader"],
            capture_output=True, text=True, timeout=20, check=True,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    rows = [[part.strip() for part in line.split(",")] for line in out.splitlines() if line.strip()]
    driver = rows[0][1] if rows and len(rows[0]) > 1 else None
    return {"gpus": [row[0] for row in rows], "driver": driver}

def torch_facts():
    try:
        import torch
    except Exception as exc:
        return None if isinstance(exc, ImportError) else {"error": f"{type(exc).__name__}: {exc}"}
    facts = {"version": torch.__version__, "cuda": torch.version.cuda, "cudnn": None,
             "cuda_available": False, "gpus": []}
    try:
        facts["cudnn"] = torch.backends.cudnn.version()
        facts["cuda_available"] = bool(torch.cuda.is_available())
        if facts["cuda_available"]:
            count = torch.cuda.device_count()
            facts["gpus"] = [torch.cuda.get_device_name(i) for i in range(count)]
    except Exception as exc:
        facts["error"] = f"{type(exc).__name__}: {exc}"
    return facts

def environment_variables():
    return {
        name: value for name, value in sorted(os.environ.items())
        if (name in ALLOWED_NAMES or name.startswith(ALLOWED_PREFIXES)) and not is_secret(name, value)
    }

smi = nvidia_smi()
torch_info = torch_facts()
gpus = (smi or {}).get("gpus") or (torch_info or {}).get("gpus") or []
print(json.dumps({
    "python": {"version": platform.python_version(),
               "implementation": platform.python_implementation(),
               "executable": sys.executable},
    "platform": platform.platform(),
    "packages": packages(),
    "torch": torch_info,
    "cpu_model": cpu_model(),
    "cpu_count": os.cpu_count(),
    "gpus": gpus,
    "gpu_driver": (smi or {}).get("driver"),
    "env": environment_variables(),
}, sort_keys=True))
""".replace("# SECRET FILTER (harness.secret_env.is_secret, embedded below)\n", filter_source())


def _cpu_model() -> str | None:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith(("model name", "hardware", "cpu model")):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or None


def _os_name() -> str:
    try:
        for line in Path("/etc/os-release").read_text().splitlines():
            if line.startswith("PRETTY_NAME="):
                return line.split("=", 1)[1].strip().strip('"')
    except OSError:
        pass
    return platform.platform()


def capture_host() -> dict[str, Any]:
    """Facts about the machine running the harness, for record.json's ``host``."""
    inventory = gpu_inventory()
    return {
        "hostname": socket.gethostname(),
        "os": _os_name(),
        "kernel": platform.release(),
        "cpu_model": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "memory_bytes": int(psutil.virtual_memory().total),
        "gpus": inventory["gpus"],
        "gpu_driver": inventory["gpu_driver"],
    }
