"""A validated manifest as the run path reads it: plain, typed, read-only, and free of pydantic.

``harness.manifest`` (pydantic) stays the one place that validates a manifest. What it accepted
is turned into a :class:`ManifestView` here, either from the model's dump just after validation or
from a cache entry of that dump (``harness.manifest_cache``), so a warm ``harness run`` never
imports pydantic or YAML. Also here, because they need neither: sizes and durations, the project
folder of a manifest, and the checks of the files a manifest points to.
"""

from __future__ import annotations

import copy
import hashlib
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

MAX_MANIFEST_BYTES = 1 << 20
SEED_LIMIT = 2**32

Scalar = bool | int | float | str

SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGT]i?B?|B)?\s*$", re.IGNORECASE)
DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(s|m|h|d)?\s*$")
SIZE_FACTORS = {
    "b": 1,
    "k": 10**3,
    "kb": 10**3,
    "m": 10**6,
    "mb": 10**6,
    "g": 10**9,
    "gb": 10**9,
    "t": 10**12,
    "tb": 10**12,
    "ki": 2**10,
    "kib": 2**10,
    "mi": 2**20,
    "mib": 2**20,
    "gi": 2**30,
    "gib": 2**30,
    "ti": 2**40,
    "tib": 2**40,
}
DURATION_FACTORS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_size(text: str | int) -> int:
    """Bytes from ``2GiB``, ``512MB``, ``1024`` (plain numbers are bytes)."""
    if isinstance(text, int) and not isinstance(text, bool):
        return text
    match = SIZE.match(str(text))
    if not match:
        raise ValueError(f"cannot read size {text!r}: write a number with a unit, e.g. 2GiB or 512MiB")
    unit = (match.group(2) or "b").lower()
    return int(float(match.group(1)) * SIZE_FACTORS[unit])


def parse_duration(text: str | int) -> float:
    """Seconds from ``20m``, ``1h``, ``90s`` or ``90`` (plain numbers are seconds)."""
    if isinstance(text, (int, float)) and not isinstance(text, bool):
        return float(text)
    match = DURATION.match(str(text))
    if not match:
        raise ValueError(f"cannot read duration {text!r}: write e.g. 90s, 20m or 2h")
    return float(match.group(1)) * DURATION_FACTORS[match.group(2) or "s"]


def _get(data: Any, key: str, *types: type) -> Any:
    """``data[key]`` when it is one of ``types`` (a bool is never taken for a number); else ValueError."""
    value = data.get(key) if isinstance(data, Mapping) else None
    if isinstance(value, bool) and bool not in types:
        raise ValueError(f"{key}: {type(value).__name__}")
    if not isinstance(value, types):
        raise ValueError(f"{key}: {type(value).__name__}")
    return value


def _scalars(data: Any, what: str) -> dict[str, Scalar]:
    if not isinstance(data, dict) or not all(
        isinstance(k, str) and isinstance(v, (bool, int, float, str)) for k, v in data.items()
    ):
        raise ValueError(f"{what}: not a mapping of names to scalars")
    return dict(data)


def _strings(data: Any, what: str) -> tuple[str, ...]:
    if not isinstance(data, list) or not all(isinstance(item, str) for item in data):
        raise ValueError(f"{what}: not a list of strings")
    return tuple(data)


NONE = type(None)


@dataclass(frozen=True)
class ImageView:
    """Where the image comes from (``image:``)."""

    build: str | None
    ref: str | None
    lockfile: str | None
    network: bool
    reproducible: bool | None


@dataclass(frozen=True)
class HardwareView:
    """The hardware target of one run (``hardware:``)."""

    accelerator: str
    gpus: int
    cpus: int | float
    memory: str | int
    timeout: str | int

    @property
    def memory_bytes(self) -> int:
        """The memory limit in bytes."""
        return parse_size(self.memory)

    @property
    def timeout_seconds(self) -> float:
        """The time limit in seconds."""
        return parse_duration(self.timeout)

    def as_dict(self) -> dict[str, Any]:
        """The fields as the manifest model dumps them (for the record)."""
        return {
            "accelerator": self.accelerator,
            "gpus": self.gpus,
            "cpus": self.cpus,
            "memory": self.memory,
            "timeout": self.timeout,
        }


@dataclass(frozen=True)
class MetricsView:
    """Where the workload's metrics come from (``metrics:``)."""

    tensorboard: str | None
    primary: str | None
    summary_last_n: int
    system_interval: int | float


@dataclass(frozen=True)
class PinView:
    """A Hub repo pinned at a commit (``model:`` or an item of ``data:``)."""

    repo: str
    revision: str
    repo_type: str


@dataclass(frozen=True)
class ManifestView:
    """What the run path reads of a validated manifest. ``dump`` is the model's plain dump it was
    made from (for the record, and to rebuild the pydantic model where a caller needs it)."""

    name: str
    description: str
    image: ImageView
    command: tuple[str, ...]
    workdir: str
    params: dict[str, Scalar]
    seeds: tuple[int, ...]
    sweep: dict[str, list[Scalar]] | list[dict[str, Scalar]] | None
    hardware: HardwareView
    metrics: MetricsView
    data: tuple[PinView, ...]
    model: PinView | None
    smoke: dict[str, Scalar]
    tags: tuple[str, ...]
    dump: dict[str, Any] = field(repr=False)

    @property
    def expect(self) -> dict[str, Any]:
        """``expect:`` as the model dumps it (for the record)."""
        return copy.deepcopy(self.dump["expect"])

    def sweep_keys(self) -> list[str]:
        """Names of the params the sweep varies."""
        if isinstance(self.sweep, dict):
            return list(self.sweep)
        if isinstance(self.sweep, list):
            return sorted({key for entry in self.sweep for key in entry})
        return []


def _pin(data: Any) -> PinView:
    return PinView(_get(data, "repo", str), _get(data, "revision", str), _get(data, "repo_type", str))


def _sweep(data: Any) -> dict[str, list[Scalar]] | list[dict[str, Scalar]] | None:
    if data is None:
        return None
    if isinstance(data, list):
        return [_scalars(entry, "sweep") for entry in data]
    if isinstance(data, dict):
        grid = {key: values for key, values in data.items() if isinstance(key, str) and isinstance(values, list)}
        if len(grid) == len(data) and all(isinstance(v, (bool, int, float, str)) for vs in grid.values() for v in vs):
            return {key: list(values) for key, values in grid.items()}
    raise ValueError("sweep: neither a grid nor a list of param sets")


def view_of(dump: Mapping[str, Any]) -> ManifestView:
    """The view of a manifest model's plain dump (``Manifest.model_dump()``); ValueError for a
    dump of the wrong shape or types (a damaged or forged cache entry)."""
    image, hardware, metrics = dump.get("image"), dump.get("hardware"), dump.get("metrics")
    seeds = dump.get("seeds")
    if (
        not isinstance(seeds, list)
        or not seeds
        or not all(isinstance(s, int) and not isinstance(s, bool) and 0 <= s < SEED_LIMIT for s in seeds)
    ):
        raise ValueError("seeds: not a list of seeds")
    if not isinstance(dump.get("expect"), dict):
        raise ValueError("expect: not a mapping")
    data = dump.get("data")
    if not isinstance(data, list):
        raise ValueError("data: not a list")
    model = dump.get("model")
    command = _strings(dump.get("command"), "command")
    if not command:
        raise ValueError("command: empty")
    return ManifestView(
        name=_get(dump, "name", str),
        description=_get(dump, "description", str),
        image=ImageView(
            build=_get(image, "build", str, NONE),
            ref=_get(image, "ref", str, NONE),
            lockfile=_get(image, "lockfile", str, NONE),
            network=_get(image, "network", bool),
            reproducible=_get(image, "reproducible", bool, NONE),
        ),
        command=command,
        workdir=_get(dump, "workdir", str),
        params=_scalars(dump.get("params"), "params"),
        seeds=tuple(seeds),
        sweep=_sweep(dump.get("sweep")),
        hardware=HardwareView(
            accelerator=_get(hardware, "accelerator", str),
            gpus=_get(hardware, "gpus", int),
            cpus=_get(hardware, "cpus", int, float),
            memory=_get(hardware, "memory", str, int),
            timeout=_get(hardware, "timeout", str, int),
        ),
        metrics=MetricsView(
            tensorboard=_get(metrics, "tensorboard", str, NONE),
            primary=_get(metrics, "primary", str, NONE),
            summary_last_n=_get(metrics, "summary_last_n", int),
            system_interval=_get(metrics, "system_interval", int, float),
        ),
        data=tuple(_pin(item) for item in data),
        model=None if model is None else _pin(model),
        smoke=_scalars(dump.get("smoke"), "smoke"),
        tags=_strings(dump.get("tags"), "tags"),
        dump=dict(dump),
    )


def manifest_text(data: bytes) -> str:
    """A manifest file's text as ``Path.read_text`` gives it (UTF-8, universal newlines): its
    sha256 is part of every run id, so it must not change with the way the file was read."""
    return data.decode("utf-8").replace("\r\n", "\n").replace("\r", "\n")


class LoadedManifest:
    """A validated manifest together with where it came from and its resolved paths.

    ``view`` is what the run path reads; ``manifest`` is the pydantic model, made on first use
    (by ``make_model``) when the manifest came from the cache."""

    def __init__(
        self,
        path: Path,
        view: ManifestView,
        root: Path,
        text: str,
        model: Any = None,
        make_model: Callable[[dict[str, Any]], Any] | None = None,
    ):
        self.path = path
        self.view = view
        self.root = root
        self.text = text
        self.sha256 = hashlib.sha256(text.encode()).hexdigest()
        self._model = model
        self._make_model = make_model

    @property
    def manifest(self) -> Any:
        """The validated pydantic ``harness.manifest.Manifest``."""
        if self._model is None:
            assert self._make_model is not None
            self._model = self._make_model(self.view.dump)
        return self._model

    @manifest.setter
    def manifest(self, model: Any) -> None:
        """Replace the model (a reproduction that changes how the image is built); the view follows."""
        self._model = model
        self.view = view_of(model.model_dump())

    @property
    def build_dir(self) -> Path | None:
        """The image recipe folder (``image.build``), resolved."""
        spec = self.view.image
        return (self.root / spec.build).resolve() if spec.build else None

    @property
    def lockfile(self) -> Path | None:
        """The lockfile (``image.lockfile``), resolved."""
        spec = self.view.image
        return (self.root / spec.lockfile).resolve() if spec.lockfile else None


def project_root_for(manifest_path: Path) -> Path:
    """The project folder a manifest's relative paths refer to: the nearest ancestor with images/ or lockfiles/."""
    for folder in manifest_path.resolve().parents:
        if (folder / "images").is_dir() or (folder / "lockfiles").is_dir():
            return folder
    return Path.cwd().resolve()


def _inside(root: Path, relative: str) -> bool:
    candidate = (root / relative).resolve()
    return candidate == root or root in candidate.parents


def file_problems(path: Path, image: ImageView, root: Path, lines: Mapping[tuple, int]) -> list[str]:
    """``file:line: field: message`` for each file the manifest points to that is missing, outside
    the project, or (a lockfile) unusable. ``lines``: YAML path -> line, as far as known."""
    problems: list[str] = []
    if image.build is not None:
        line = lines.get(("image", "build"), 1)
        if Path(image.build).is_absolute() or not _inside(root, image.build):
            problems.append(
                f"{path}:{line}: image.build: {image.build!r} must be a folder inside the project (e.g. images/rl)"
            )
        elif not (root / image.build / "Dockerfile").is_file():
            problems.append(f"{path}:{line}: image.build: {root / image.build} has no Dockerfile")
    if image.lockfile is not None:
        line = lines.get(("image", "lockfile"), 1)
        if Path(image.lockfile).is_absolute() or not _inside(root, image.lockfile):
            problems.append(f"{path}:{line}: image.lockfile: {image.lockfile!r} must be a file inside the project")
        elif not (root / image.lockfile).is_file():
            problems.append(
                f"{path}:{line}: image.lockfile: {image.lockfile} does not exist "
                f"(run `harness lock {image.build or 'images/<name>'}`)"
            )
        else:
            from harness.lockfile import lockfile_problems

            problems += [f"{path}:{line}: image.lockfile: {p}" for p in lockfile_problems(root / image.lockfile)]
    return problems
