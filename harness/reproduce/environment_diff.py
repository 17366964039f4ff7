"""What differs between the environments of two runs, and whether that rules out bit-identity.

After a reproduction rebuilds its image the image id always differs, so the id says nothing. What
a record holds does: the Debian packages and Python distributions captured inside the image
(``record["environment"]``), the locked requirements with their hashes (the run's
``lockfile.txt``), the recipe's content hash (``record["image"]``), and the hardware, driver,
CUDA and torch versions (``record["host"]``, ``record["gpu"]``, ``record["environment"]["torch"]``).
A fact one record lacks (an older record, an image without dpkg) is listed as unknown, not as a
difference.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

Record = Mapping[str, Any]
MAX_RECORD_BYTES = 64 << 20
REQUIREMENT = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)(?:\[[^\]]*\])?==(\S+)")
HASH = re.compile(r"--hash=(sha256:[0-9a-f]{64})")
HARDWARE = ("hardware", "gpu")


@dataclass(frozen=True)
class EnvDifference:
    """One fact that differs: ``category`` is debian, python, python-hash, python-runtime, image,
    hardware, gpu, cuda or torch; None on a side means absent there."""

    category: str
    name: str
    original: Any
    reproduction: Any

    def describe(self) -> str:
        """``category name: original -> reproduction``."""

        def show(value: Any) -> str:
            return (
                "(absent)"
                if value is None
                else (", ".join(map(str, value)) if isinstance(value, (list, tuple)) else str(value))
            )

        return f"{self.category} {self.name}: {show(self.original)} -> {show(self.reproduction)}"


@dataclass
class EnvironmentComparison:
    """The differences between two runs' environments; ``identical`` when there are none."""

    differences: list[EnvDifference] = field(default_factory=list)
    unknown: list[str] = field(default_factory=list)  # facts one of the records does not hold

    @property
    def identical(self) -> bool:
        """No difference in anything both records hold."""
        return not self.differences

    @property
    def software_identical(self) -> bool:
        """No difference in packages, Python, the image recipe, CUDA or torch."""
        return all(d.category in HARDWARE for d in self.differences)

    @property
    def hardware_identical(self) -> bool:
        """No difference in CPU model, GPUs or driver."""
        return not any(d.category in HARDWARE for d in self.differences)

    def lines(self, limit: int = 40) -> list[str]:
        """``environment identical``, or one line per difference (at most ``limit``, then a count)."""
        if self.identical:
            head = ["environment identical"]
        else:
            head = [d.describe() for d in self.differences[:limit]]
            if len(self.differences) > limit:
                head.append(f"... and {len(self.differences) - limit} more differences")
        if self.unknown:
            head.append(f"not compared (missing from a record): {', '.join(self.unknown)}")
        return head

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form, for the reproduction's record."""
        return {
            "identical": self.identical,
            "software_identical": self.software_identical,
            "hardware_identical": self.hardware_identical,
            "differences": [asdict(d) for d in self.differences],
            "unknown": list(self.unknown),
        }


def _get(record: Record, *path: str) -> Any:
    value: Any = record
    for key in path:
        if not isinstance(value, Mapping):
            return None
        value = value.get(key)
    return value


def _pairs(items: Any, separator: str) -> dict[str, str] | None:
    """``name<sep>version`` strings -> {lower-case name: version}; None when not recorded. Python
    names are compared as PEP 503 spells them (pip lists ``typing_extensions``, a lock
    ``typing-extensions``)."""
    if not isinstance(items, list):
        return None
    found: dict[str, str] = {}
    for item in items:
        if isinstance(item, str) and separator in item:
            name, version = item.split(separator, 1)
            name = name.strip().lower()
            found[re.sub(r"[-_.]+", "-", name) if separator == "==" else name] = version.strip()
    return found


def lockfile_hashes(text: str | None) -> dict[str, tuple[str, ...]] | None:
    """{name: sorted sha256 hashes} of a ``pip-compile --generate-hashes`` lockfile's text."""
    if text is None:
        return None
    found: dict[str, tuple[str, ...]] = {}
    logical = re.sub(r"\\\s*\n", " ", text)
    for raw in logical.splitlines():
        line = raw.split("#", 1)[0].strip()
        match = REQUIREMENT.match(line)
        if match:
            found[match.group(1).lower().replace("_", "-")] = tuple(sorted(HASH.findall(line)))
    return found


def _compare_maps(
    category: str, original: dict[str, Any] | None, reproduction: dict[str, Any] | None, label: str, unknown: list[str]
) -> list[EnvDifference]:
    if original is None or reproduction is None:
        if original is not None or reproduction is not None:
            unknown.append(label)
        return []
    return [
        EnvDifference(category, name, original.get(name), reproduction.get(name))
        for name in sorted(set(original) | set(reproduction))
        if original.get(name) != reproduction.get(name)
    ]


def gpu_names(record: Record) -> list[str]:
    """The GPUs the run used: NVML's devices, else what the image saw, when the run asked for GPUs."""
    devices = _get(record, "gpu", "devices")
    if _get(record, "gpu", "available") and isinstance(devices, list) and devices:
        return [str(d.get("name") if isinstance(d, Mapping) else d) for d in devices]
    asked = (_get(record, "hardware", "gpus") or 0) > 0 or _get(record, "hardware", "accelerator") == "cuda"
    seen = _get(record, "environment", "gpus") or _get(record, "environment", "torch", "gpus")
    if asked and isinstance(seen, list):
        return [str(g) for g in seen]
    return []


def _hardware(record: Record) -> dict[str, Any]:
    return {
        "cpu_model": _get(record, "host", "cpu_model") or _get(record, "environment", "cpu_model"),
        "gpus": gpu_names(record) or None,
        "gpu_driver": (_get(record, "gpu", "driver") or _get(record, "environment", "gpu_driver"))
        if gpu_names(record)
        else None,
    }


def compare_environments(
    original: Record,
    reproduction: Record,
    original_lockfile: str | None = None,
    reproduction_lockfile: str | None = None,
) -> EnvironmentComparison:
    """Every difference between two run records' environments (see the module docstring).

    The lockfile texts, when given, add the hashes of each locked requirement.
    """
    unknown: list[str] = []
    differences: list[EnvDifference] = []
    differences += _compare_maps(
        "debian",
        _pairs(_get(original, "environment", "debian_packages"), "="),
        _pairs(_get(reproduction, "environment", "debian_packages"), "="),
        "Debian packages",
        unknown,
    )
    differences += _compare_maps(
        "python",
        _pairs(_get(original, "environment", "packages"), "=="),
        _pairs(_get(reproduction, "environment", "packages"), "=="),
        "Python packages",
        unknown,
    )
    differences += _compare_maps(
        "python-hash",
        lockfile_hashes(original_lockfile),
        lockfile_hashes(reproduction_lockfile),
        "lockfile hashes",
        unknown,
    )
    scalars = [
        (
            "python-runtime",
            "python",
            _get(original, "environment", "python", "version"),
            _get(reproduction, "environment", "python", "version"),
        ),
        (
            "image",
            "recipe content hash",
            _get(original, "image", "content_hash"),
            _get(reproduction, "image", "content_hash"),
        ),
        (
            "torch",
            "torch",
            _get(original, "environment", "torch", "version"),
            _get(reproduction, "environment", "torch", "version"),
        ),
        (
            "cuda",
            "CUDA",
            _get(original, "environment", "torch", "cuda"),
            _get(reproduction, "environment", "torch", "cuda"),
        ),
        (
            "cuda",
            "cuDNN",
            _get(original, "environment", "torch", "cudnn"),
            _get(reproduction, "environment", "torch", "cudnn"),
        ),
    ]
    hardware_a, hardware_b = _hardware(original), _hardware(reproduction)
    scalars += [
        ("hardware", "CPU model", hardware_a["cpu_model"], hardware_b["cpu_model"]),
        ("gpu", "GPUs", hardware_a["gpus"], hardware_b["gpus"]),
        ("gpu", "driver", hardware_a["gpu_driver"], hardware_b["gpu_driver"]),
    ]
    torch_recorded = [_get(r, "environment", "torch") is not None for r in (original, reproduction)]
    for category, name, a, b in scalars:
        if category in ("torch", "cuda") and not all(torch_recorded):
            if any(torch_recorded) and name == "torch":
                unknown.append("torch (not importable in one image)")
            continue
        if a != b:
            differences.append(EnvDifference(category, name, a, b))
    return EnvironmentComparison(differences, unknown)


def bit_identity_ruled_out(original: Record, reproduction: Record) -> list[str]:
    """Why the reproduction cannot be bit-identical to the original (empty: it may be).

    GPU kernels differ across GPU models, drivers, CUDA, cuDNN and torch versions, and a GPU run
    repeated on a CPU runs other code altogether. A different CPU model alone does not rule it out
    (a single-threaded CPU run usually repeats across CPUs), so it is not a reason here; it is
    listed among the environment's differences.
    """
    reasons: list[str] = []
    gpus_a, gpus_b = gpu_names(original), gpu_names(reproduction)
    if gpus_a and not gpus_b:
        reasons.append(f"the original ran on GPU ({', '.join(gpus_a)}), the reproduction on CPU")
    elif gpus_b and not gpus_a:
        reasons.append(f"the original ran on CPU, the reproduction on GPU ({', '.join(gpus_b)})")
    elif gpus_a and gpus_b:
        if gpus_a != gpus_b:
            reasons.append(f"other GPUs: {', '.join(gpus_a)} -> {', '.join(gpus_b)}")
        driver_a, driver_b = _hardware(original)["gpu_driver"], _hardware(reproduction)["gpu_driver"]
        if driver_a != driver_b:
            reasons.append(f"other GPU driver: {driver_a} -> {driver_b}")
        for name, key in (("CUDA", "cuda"), ("cuDNN", "cudnn")):
            a, b = _get(original, "environment", "torch", key), _get(reproduction, "environment", "torch", key)
            if a != b:
                reasons.append(f"other {name}: {a} -> {b}")
    torch_a, torch_b = (
        _get(original, "environment", "torch", "version"),
        _get(reproduction, "environment", "torch", "version"),
    )
    if torch_a and torch_b and torch_a != torch_b:
        reasons.append(f"other torch: {torch_a} -> {torch_b}")
    return reasons


def read_run(run_dir: Path) -> tuple[dict[str, Any], str | None]:
    """A run folder's record.json and lockfile.txt text (None when it has none); bounded reads."""
    from harness.util.safefs import UnsafeFile, read_bounded

    def read(path: Path) -> str | None:
        try:  # no link followed, regular files only (a FIFO cannot hang it), size-capped
            return read_bounded(path, MAX_RECORD_BYTES).decode("utf-8", errors="replace")
        except (UnsafeFile, OSError):
            return None

    text = read(Path(run_dir) / "record.json")
    try:
        record = json.loads(text) if text else {}
    except (ValueError, RecursionError):
        record = {}
    return record if isinstance(record, dict) else {}, read(Path(run_dir) / "lockfile.txt")
