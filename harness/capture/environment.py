"""What a run's software and hardware were: captured inside the image, and on the host.

``ENVIRONMENT_SCRIPT`` is Python source (standard library only) that the runtime runs inside the
run's image with ``python -c``; it prints one JSON object. ``capture_host`` describes the host for
record.json. Environment variables are recorded from an allow-list only, and a name that looks
like a secret (``harness.util.secrets``) is dropped even when the allow-list would take it.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import socket
import subprocess
import sys
import sysconfig
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from harness.capture.gpu import gpu_inventory
from harness.util.fsutil import cache_root, write_json_atomic
from harness.util.secrets import NOT_SECRET, SECRET_NAME_PATTERN, SECRET_VALUE_PATTERN

if TYPE_CHECKING:
    from harness.images.build import ImageInfo

ENVIRONMENT_SCRIPT = (
    r"""
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
SECRET = re.compile(@SECRET_NAME_PATTERN@, re.I)
NOT_SECRET = @NOT_SECRET@
SECRET_VALUE = re.compile(@SECRET_VALUE_PATTERN@)

def packages():
    found = {}
    for dist in importlib.metadata.distributions():
        name = dist.metadata["Name"]
        if name:
            found[name.lower()] = f"{name}=={dist.version}"
    return [found[key] for key in sorted(found)]

def debian_packages():
    # dpkg's own database, so images not made by `harness image bootstrap` are listed too
    try:
        with open("/var/lib/dpkg/status", encoding="utf-8", errors="replace") as handle:
            text = handle.read(32 << 20)
    except OSError:
        return None
    found = []
    for stanza in text.split("\n\n"):
        fields = dict(line.split(": ", 1) for line in stanza.splitlines() if ": " in line and not line[:1].isspace())
        if fields.get("Package") and fields.get("Status", "").endswith(" installed"):
            found.append(f"{fields['Package']}={fields.get('Version', '')}")
    return sorted(found)

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
        if (name in ALLOWED_NAMES or name.startswith(ALLOWED_PREFIXES)) and (name.upper() in NOT_SECRET or not SECRET.search(name))
        and not SECRET_VALUE.search(value)
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
    "debian_packages": debian_packages(),
    "torch": torch_info,
    "cpu_model": cpu_model(),
    "cpu_count": os.cpu_count(),
    "gpus": gpus,
    "gpu_driver": (smi or {}).get("driver"),
    "env": environment_variables(),
}, sort_keys=True))
""".replace("@SECRET_NAME_PATTERN@", repr(SECRET_NAME_PATTERN))
    .replace("@NOT_SECRET@", repr(tuple(sorted(NOT_SECRET))))
    .replace("@SECRET_VALUE_PATTERN@", repr(SECRET_VALUE_PATTERN))
)


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


def _memory_bytes() -> int:
    """The host's physical memory (what psutil calls total), without importing psutil on the
    path to a container's start."""
    try:
        return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
    except (ValueError, OSError, AttributeError):
        import psutil

        return int(psutil.virtual_memory().total)


def capture_host() -> dict[str, Any]:
    """Facts about the machine running the harness, for record.json's ``host``."""
    inventory = gpu_inventory()
    return {
        "hostname": socket.gethostname(),
        "os": _os_name(),
        "kernel": platform.release(),
        "cpu_model": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "memory_bytes": _memory_bytes(),
        "gpus": inventory["gpus"],
        "gpu_driver": inventory["gpu_driver"],
    }


def _cached_environment(key: str, capture: Callable[[], tuple[dict[str, Any], bool]]) -> dict[str, Any]:
    """An environment capture, kept on disk under ``key`` (plus the capture script's hash).
    ``capture`` returns the environment and whether it may be kept: a failure that the same
    inputs would repeat (an image without Python) is kept too, so it costs one probe, not one a run."""
    script = hashlib.sha256(ENVIRONMENT_SCRIPT.encode()).hexdigest()[:12]
    cache = cache_root() / "environments" / f"{key}-{script}.json"
    if cache.is_file():
        try:
            return json.loads(cache.read_text())
        except ValueError:
            pass
    environment, keep = capture()
    if keep:
        write_json_atomic(cache, environment)
    return environment


# the image's python (or python3: base images made from Debian packages have only python3)
IN_IMAGE_PYTHON = ["sh", "-c", 'exec "$(command -v python || command -v python3 || echo python)" -c "$1"', "sh"]


def image_environment(client: Any, image: ImageInfo, engine_lost: str | None = None) -> dict[str, Any]:
    """What is inside the image (pip freeze, Python, torch/CUDA...), captured once per image id.
    ``engine_lost``: why the engine must not be asked (only a capture kept from before is used)."""
    from http.client import HTTPException

    from harness.errors import EngineError
    from harness.runtime.docker import run_in_image

    def capture() -> tuple[dict[str, Any], bool]:
        if engine_lost is not None:
            return {"error": f"environment not captured: {engine_lost}"}, False
        try:
            output = run_in_image(client, image.id, [*IN_IMAGE_PYTHON, ENVIRONMENT_SCRIPT])
        except (EngineError, OSError, HTTPException) as exc:  # the engine, not the image: try again next run
            return {"error": f"environment capture failed: {exc}"}, False
        try:
            return json.loads(output), True
        except ValueError:  # the image's own answer (no Python, a broken one): the same every time
            return {"error": f"environment capture failed: the image printed no environment ({output[-200:]!r})"}, True

    return _cached_environment(image.id.replace(":", "_"), capture)


def process_environment() -> dict[str, Any]:
    """The same capture for the process runtime, with the host's interpreter; cached until the
    interpreter's package folders change (installing or removing a package changes their mtime)."""

    def capture() -> tuple[dict[str, Any], bool]:
        result = subprocess.run([sys.executable, "-c", ENVIRONMENT_SCRIPT], capture_output=True, text=True, timeout=120)
        try:
            return json.loads(result.stdout), True
        except ValueError:
            return {"error": f"environment capture failed: {result.stderr.strip()[-300:]}"}, False

    folders = sorted({sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]})
    stamp = json.dumps([sys.executable] + [[f, os.stat(f).st_mtime_ns] for f in folders if os.path.isdir(f)])
    return _cached_environment(f"host-{hashlib.sha256(stamp.encode()).hexdigest()[:24]}", capture)
