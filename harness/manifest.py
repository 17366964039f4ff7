"""The experiment manifest: pydantic models, safe YAML loading, errors with file:line: field."""

from __future__ import annotations

import difflib
import math
import re
import string
from pathlib import Path, PurePosixPath
from typing import Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StrictFloat,
    StrictInt,
    StrictStr,
    ValidationError,
    field_validator,
    model_validator,
)

from harness.errors import ManifestError
from harness.loaded_manifest import (
    MAX_MANIFEST_BYTES,
    SEED_LIMIT,
    LoadedManifest,
    file_problems,
    parse_duration,
    parse_size,
    project_root_for,
    view_of,
)

__all__ = ["MAX_MANIFEST_BYTES", "SEED_LIMIT", "LoadedManifest", "parse_duration", "parse_size", "project_root_for"]

MAX_SWEEP_RUNS_HARD_LIMIT = 1_000_000

Scalar = StrictBool | StrictInt | StrictFloat | StrictStr
HEX40 = re.compile(r"^[0-9a-f]{40}$")
DIGEST_REF = re.compile(r"^[a-z0-9][a-z0-9._/:-]*@sha256:[0-9a-f]{64}$|^sha256:[0-9a-f]{64}$")
NAME = re.compile(r"^[a-z0-9][a-z0-9._-]{0,62}$")
PARAM_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,63}$")


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ImageSpec(Strict):
    """Where the image comes from: a recipe folder under images/ or a digest-pinned reference."""

    build: str | None = Field(None, description="folder under images/ with a Dockerfile")
    ref: str | None = Field(None, description="registry/name@sha256:<64 hex> or sha256:<64 hex> (an image id)")
    lockfile: str | None = Field(None, description="pip-compile --generate-hashes output under lockfiles/")
    network: StrictBool = Field(
        False,
        description="the build needs the network (builds have none otherwise); "
        "reproducing such a recipe needs --allow-build-network",
    )
    reproducible: StrictBool | None = Field(
        None,
        description="build bit-reproducibly (podman with clamped timestamps, loaded into Docker): "
        "a rebuild from the same recipe, lockfile and base gives the same image id. Unset: so where "
        "podman is installed, else Docker's builder; false: always Docker's builder",
    )

    @model_validator(mode="after")
    def _one_source(self) -> ImageSpec:
        if (self.build is None) == (self.ref is None):
            raise ValueError(
                "give exactly one of image.build (a folder under images/) or image.ref (with @sha256: digest)"
            )
        if self.ref is not None and not DIGEST_REF.match(self.ref):
            raise ValueError(
                f"image.ref {self.ref!r} is not pinned: use name@sha256:<64 hex digest> (a bare tag can change)"
            )
        if self.reproducible and self.build is None:
            raise ValueError("image.reproducible applies to image.build only (an image.ref is not built)")
        if self.network and self.build is None:
            raise ValueError("image.network applies to image.build only (an image.ref is not built)")
        if self.build is not None and self.lockfile is None:
            raise ValueError("image.build needs image.lockfile (run `harness lock images/<name>`)")
        return self


class Hardware(Strict):
    """The hardware target of one run."""

    accelerator: Literal["cpu", "cuda"] = "cpu"
    gpus: StrictInt = Field(0, ge=0, le=64)
    cpus: StrictInt | StrictFloat = Field(1, gt=0, le=1024)
    memory: StrictStr | StrictInt = "2GiB"
    timeout: StrictStr | StrictInt = "1h"

    @field_validator("memory")
    @classmethod
    def _memory(cls, value: str | int) -> str | int:
        size = parse_size(value)
        if size < 6 * 2**20:
            raise ValueError(f"memory {value!r} is below Docker's minimum of 6MiB")
        if size > 64 * 2**40:
            raise ValueError(f"memory {value!r} is more than 64TiB: write the run's real limit, e.g. 16GiB")
        return value

    @field_validator("timeout")
    @classmethod
    def _timeout(cls, value: str | int) -> str | int:
        seconds = parse_duration(value)
        if not 1 <= seconds <= 30 * 86400:
            raise ValueError(f"timeout {value!r} must be between 1s and 30d")
        return value

    @model_validator(mode="after")
    def _gpus_need_cuda(self) -> Hardware:
        if self.gpus > 0 and self.accelerator != "cuda":
            raise ValueError("gpus > 0 needs accelerator: cuda")
        return self

    @property
    def memory_bytes(self) -> int:
        return parse_size(self.memory)

    @property
    def timeout_seconds(self) -> float:
        return parse_duration(self.timeout)


class MetricsSpec(Strict):
    """Where the workload's metrics come from and which one matters most."""

    tensorboard: str | None = Field(
        None,
        description="folder under $HARNESS_OUT holding TensorBoard event files (default: searched all over $HARNESS_OUT)",
    )
    primary: str | None = None
    summary_last_n: StrictInt = Field(10, ge=1, le=100_000)
    system_interval: StrictInt | StrictFloat = Field(1.0, ge=0.1, le=60)

    @field_validator("tensorboard")
    @classmethod
    def _relative(cls, value: str | None) -> str | None:
        if value is not None and (value.startswith("/") or ".." in Path(value).parts):
            raise ValueError(f"{value!r} must be a relative folder under $HARNESS_OUT")
        return value


class Reference(Strict):
    """A published result the runs must be consistent with: a table's mean ± spread over seeds.

    A mean ± spread alone leaves out what a verdict needs, so the fields say it: whether the spread
    is a standard deviation or a standard error (``spread``), over how many seeds (``seeds``), of
    which metric and which per-seed statistic; ``source`` says where it was published."""

    mean: StrictInt | StrictFloat
    sd: StrictInt | StrictFloat = Field(ge=0, description="the published spread across seeds (see spread)")
    seeds: StrictInt = Field(ge=1, le=100_000, description="how many seeds the published mean is over")
    source: StrictStr = Field(min_length=1, max_length=2000, description="URL or citation of the published table")
    spread: Literal["sd", "se"] = Field(
        "sd", description="sd: standard deviation across seeds; se: standard error of the mean (sd / sqrt(seeds))"
    )
    metric: StrictStr | None = Field(None, description="default: expect.metric, else metrics.primary")
    statistic: Literal["final", "last_n"] | None = Field(None, description="per seed; default: expect.statistic")

    @field_validator("mean", "sd")
    @classmethod
    def _finite(cls, value: float) -> float:
        if not math.isfinite(value):
            raise ValueError(f"{value} must be a finite number")
        return value

    @property
    def sd_across_seeds(self) -> float:
        """The standard deviation across seeds, whichever spread was published."""
        return float(self.sd) * (math.sqrt(self.seeds) if self.spread == "se" else 1.0)


class Expect(Strict):
    """What a reproduction must show.

    Bit-identity (``deterministic``) or closeness (``rtol``/``atol``) for a run repeated as it was;
    for runs that are not deterministic (or not on the same hardware), equivalence across seeds:
    the CI of the difference in ``aggregate`` of each seed's ``statistic`` of ``metric`` must lie
    within the margin (docs/hub.md, "Verdicts across seeds").
    """

    deterministic: StrictBool = True
    rtol: StrictInt | StrictFloat = Field(0.0, ge=0)
    atol: StrictInt | StrictFloat = Field(0.0, ge=0)
    alpha: StrictInt | StrictFloat | None = Field(
        None, gt=0, lt=1, description="ignored: superseded by confidence (kept so older manifests still load)"
    )
    ignore: list[StrictStr] = Field(
        [], description="metric names (fnmatch patterns) that depend on timing, e.g. charts/SPS"
    )
    metric: StrictStr | None = Field(None, description="metric compared across seeds (default: metrics.primary)")
    statistic: Literal["final", "last_n"] = Field(
        "last_n", description="per seed: the final value or the mean of the last last_n"
    )
    last_n: StrictInt = Field(10, ge=1, le=100_000)
    aggregate: Literal["mean", "iqm"] = Field("mean", description="across seeds: mean (Welch CI) or IQM (Yuen CI)")
    margin: StrictInt | StrictFloat | None = Field(None, description="equivalence margin in the metric's units")
    margin_relative: StrictInt | StrictFloat | None = Field(
        None, description="equivalence margin as a fraction of the original's |aggregate| (default 0.1)"
    )
    confidence: StrictInt | StrictFloat = Field(0.90, description="two-sided CI level; 0.90 is TOST at 5 %")
    reference: Reference | None = Field(
        None, description="a published mean ± spread the runs must be consistent with (compare --against-reference)"
    )

    @field_validator("margin")
    @classmethod
    def _margin(cls, value: float | None) -> float | None:
        if value is not None and not (0 < value < float("inf")):
            raise ValueError(
                f"margin {value} must be a positive number: the largest difference, in the metric's units, "
                "that you would still call the same result"
            )
        return value

    @field_validator("margin_relative")
    @classmethod
    def _margin_relative(cls, value: float | None) -> float | None:
        if value is not None and not (0 < value < 1):
            raise ValueError(
                f"margin_relative {value} must be a fraction between 0 and 1 of the original's value "
                "(0.1 means within 10 %)"
            )
        return value

    @field_validator("confidence")
    @classmethod
    def _confidence(cls, value: float) -> float:
        if not 0.5 < value < 1:
            raise ValueError(f"confidence {value} must be between 0.5 and 1 (exclusive): 0.90 gives TOST at α = 0.05")
        return value

    @model_validator(mode="after")
    def _one_margin(self) -> Expect:
        if self.margin is not None and self.margin_relative is not None:
            raise ValueError("give expect.margin (absolute) or expect.margin_relative (a fraction), not both")
        return self


class HubPin(Strict):
    """A Hub repo pinned to a commit."""

    repo: StrictStr = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*(/[A-Za-z0-9][A-Za-z0-9._-]*)?$")
    revision: StrictStr
    repo_type: Literal["model", "dataset"] = "model"

    @field_validator("revision")
    @classmethod
    def _commit(cls, value: str) -> str:
        if not HEX40.match(value):
            raise ValueError(f"revision {value!r} is not a commit: pin a 40-hex commit sha, not a branch or tag")
        return value


class SourceRun(Strict):
    """A published run this manifest was imported from (``harness import``): its repo at a commit."""

    repo: StrictStr = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*(/[A-Za-z0-9][A-Za-z0-9._-]*)?$")
    revision: StrictStr
    seed: StrictInt | None = None
    format: Literal["cleanrl"] = "cleanrl"

    @field_validator("revision")
    @classmethod
    def _commit(cls, value: str) -> str:
        if not HEX40.match(value):
            raise ValueError(f"revision {value!r} is not a commit: pin a 40-hex commit sha, not a branch or tag")
        return value


class Manifest(Strict):
    """One experiment: everything its result depends on."""

    apiVersion: Literal["harness/v1"]
    name: StrictStr
    description: StrictStr = ""
    image: ImageSpec
    command: list[StrictStr] = Field(min_length=1, max_length=512)
    workdir: StrictStr = Field(
        ".",
        description="the job's working directory: a folder under $HARNESS_OUT (default: $HARNESS_OUT itself, "
        "writable and kept with the record) or an absolute path in the image, such as /workload (read-only)",
    )
    params: dict[str, Scalar] = {}
    seeds: list[StrictInt] = Field(min_length=1, max_length=100_000)
    sweep: dict[str, list[Scalar]] | list[dict[str, Scalar]] | None = None
    hardware: Hardware = Hardware()
    metrics: MetricsSpec = MetricsSpec()
    expect: Expect = Expect()
    data: list[HubPin] = []
    model: HubPin | None = None
    smoke: dict[str, Scalar] = {}
    tags: list[StrictStr] = []
    source: list[SourceRun] = Field([], max_length=10_000, description="the published runs it was imported from")

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        if not NAME.match(value):
            raise ValueError(f"{value!r}: use lower-case letters, digits, '.', '_' or '-' (at most 63)")
        return value

    @field_validator("workdir")
    @classmethod
    def _workdir(cls, value: str) -> str:
        path = PurePosixPath(value)
        if ".." in path.parts or not value.strip() or "\0" in value:
            raise ValueError(
                f"{value!r}: give a folder under $HARNESS_OUT (such as '.' or 'work') or an absolute path in the image"
            )
        return value

    @field_validator("params", "smoke")
    @classmethod
    def _param_names(cls, value: dict[str, Any]) -> dict[str, Any]:
        for key in value:
            if not PARAM_NAME.match(key):
                raise ValueError(f"param name {key!r}: use letters, digits and '_'")
        return value

    @field_validator("seeds")
    @classmethod
    def _seeds(cls, value: list[int]) -> list[int]:
        for seed in value:
            if not 0 <= seed < SEED_LIMIT:
                raise ValueError(f"seed {seed} must be an integer from 0 to 2**32-1")
        if len(set(value)) != len(value):
            raise ValueError("seeds repeat: list each seed once")
        return value

    @model_validator(mode="after")
    def _cross_checks(self) -> Manifest:
        known = set(self.params)
        for key in self.sweep_keys():
            if key not in known:
                raise ValueError(f"sweep key {key!r} is not a param: add it to params with a default")
        if isinstance(self.sweep, dict):
            for key, values in self.sweep.items():
                if not values:
                    raise ValueError(f"sweep.{key} is an empty list: give at least one value")
        elif isinstance(self.sweep, list) and not self.sweep:
            raise ValueError("sweep is an empty list: give at least one param set or drop it")
        for key in self.smoke:
            if key not in known:
                raise ValueError(f"smoke key {key!r} is not a param: add it to params")
        allowed = known | {"seed"}
        for part in self.command:
            for field_name in placeholders(part):
                if field_name not in allowed:
                    close = difflib.get_close_matches(field_name, sorted(allowed), n=1)
                    hint = f" (did you mean {{{close[0]}}}?)" if close else ""
                    raise ValueError(f"placeholder {{{field_name}}} in command has no param{hint}")
        if self.model is not None:
            # workloads take the pin as params too; they must not drift apart
            for param, value in (("model_repo", self.model.repo), ("model_revision", self.model.revision)):
                if param in self.params and self.params[param] != value:
                    raise ValueError(
                        f"params.{param} {self.params[param]!r} differs from the model pin {value!r}: keep them equal"
                    )
        if self.sweep_size() > MAX_SWEEP_RUNS_HARD_LIMIT:
            raise ValueError(f"sweep × seeds makes {self.sweep_size()} runs, more than {MAX_SWEEP_RUNS_HARD_LIMIT}")
        return self

    def sweep_keys(self) -> list[str]:
        """Names of the params the sweep varies."""
        if isinstance(self.sweep, dict):
            return list(self.sweep)
        if isinstance(self.sweep, list):
            return sorted({key for entry in self.sweep for key in entry})
        return []

    def sweep_size(self) -> int:
        """Number of runs the sweep and seeds expand to."""
        combos = 1
        if isinstance(self.sweep, dict):
            for values in self.sweep.values():
                combos *= max(len(values), 1)
        elif isinstance(self.sweep, list):
            combos = len(self.sweep)
        return combos * len(self.seeds)


def placeholders(text: str) -> list[str]:
    """Field names of ``{name}`` placeholders in a command argument."""
    try:
        return [field for _, field, _, _ in string.Formatter().parse(text) if field is not None]
    except ValueError as exc:
        raise ValueError(f"command argument {text!r}: {exc} (write {{{{ and }}}} for literal braces)") from exc


class NoAliasLoader(yaml.SafeLoader):
    """A safe loader that refuses anchors and aliases (no billion-laughs expansion)."""

    def compose_node(self, parent, index):  # type: ignore[no-untyped-def]
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            raise yaml.MarkedYAMLError(
                None, None, "anchors and aliases are not allowed in a manifest", event.start_mark
            )
        return super().compose_node(parent, index)


def _line_map(node: yaml.Node, path: tuple = (), lines: dict | None = None) -> dict[tuple, int]:
    """YAML path (keys and indices) -> 1-based line of the node."""
    lines = {} if lines is None else lines
    lines[path] = node.start_mark.line + 1
    if isinstance(node, yaml.MappingNode):
        for key_node, value_node in node.value:
            key = key_node.value
            lines[path + (key,)] = key_node.start_mark.line + 1
            _line_map(value_node, path + (key,), lines)
            lines[path + (key,)] = key_node.start_mark.line + 1
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            _line_map(item, path + (index,), lines)
    return lines


def _field_suggestion(model: type[BaseModel], loc: tuple) -> str:
    """' (did you mean X?)' for an unknown key, looked up in the model at that location."""
    current: Any = model
    for part in loc[:-1]:
        if isinstance(part, int) or not (isinstance(current, type) and issubclass(current, BaseModel)):
            continue
        field = current.model_fields.get(part)
        if field is None:
            return ""
        annotation = field.annotation
        args = getattr(annotation, "__args__", ())
        current = next((a for a in (annotation, *args) if isinstance(a, type) and issubclass(a, BaseModel)), None)
    if not (isinstance(current, type) and issubclass(current, BaseModel)):
        return ""
    close = difflib.get_close_matches(str(loc[-1]), list(current.model_fields), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _format_errors(path: Path, error: ValidationError, lines: dict[tuple, int]) -> list[str]:
    problems = []
    for item in error.errors():
        loc = tuple(p for p in item["loc"] if not (isinstance(p, str) and ("[" in p or p in {"function-after"})))
        probe = loc
        while probe and probe not in lines:
            probe = probe[:-1]
        line = lines.get(probe, 1)
        field = ".".join(str(p) for p in loc) or "(top level)"
        message = item["msg"].removeprefix("Value error, ")
        if item["type"] == "extra_forbidden":
            message = f"unknown key{_field_suggestion(Manifest, loc)}"
        elif item["type"] == "missing":
            message = "required field is missing"
        problems.append(f"{path}:{line}: {field}: {message}")
    # pydantic reports one error per union member; keep each line once
    return list(dict.fromkeys(problems))


def read_manifest_data(path: Path) -> tuple[dict[str, Any], dict[tuple, int]]:
    """Parse a manifest file safely: size-capped, no aliases, a mapping at the top."""
    if not path.is_file():
        raise ManifestError([f"{path}: no such manifest file"])
    if path.stat().st_size > MAX_MANIFEST_BYTES:
        raise ManifestError([f"{path}: larger than {MAX_MANIFEST_BYTES} bytes; a manifest is a short YAML file"])
    text = path.read_text(encoding="utf-8", errors="replace")
    try:
        loader = NoAliasLoader(text)
        try:
            node = loader.get_single_node()
            data = loader.construct_document(node) if node is not None else None
        finally:
            loader.dispose()
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark else 1
        raise ManifestError([f"{path}:{line}: YAML syntax error: {exc.problem or exc.context}"]) from None
    except yaml.YAMLError as exc:
        raise ManifestError([f"{path}:1: YAML error: {exc}"]) from None
    if not isinstance(data, dict) or node is None:
        raise ManifestError([f"{path}:1: (top level): a manifest is a YAML mapping (apiVersion, name, image, ...)"])
    return data, _line_map(node)


def parse_manifest(path: Path) -> Manifest:
    """Validate a manifest file's schema; every problem as ``file:line: field: message``."""
    return _parse_with_lines(path)[0]


def _parse_with_lines(path: Path) -> tuple[Manifest, dict[tuple, int]]:
    data, lines = read_manifest_data(path)
    try:
        return Manifest.model_validate(data), lines
    except ValidationError as exc:
        raise ManifestError(_format_errors(path, exc, lines)) from None


def load_manifest(path: str | Path) -> LoadedManifest:
    """Load and fully check a manifest: schema, then files it points to (inside the project only)."""
    return load_with_lines(path)[0]


def load_with_lines(path: str | Path) -> tuple[LoadedManifest, dict[tuple, int]]:
    """``load_manifest``, and the line of each YAML path of the file (for later messages)."""
    path = Path(path)
    manifest, lines = _parse_with_lines(path)
    root = project_root_for(path)
    view = view_of(manifest.model_dump())
    problems = file_problems(path, view.image, root, lines)
    if problems:
        raise ManifestError(problems)
    return LoadedManifest(path, view, root, path.read_text(encoding="utf-8"), model=manifest), lines


def json_schema() -> dict[str, Any]:
    """JSON Schema of the manifest, for editors."""
    schema = Manifest.model_json_schema()
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "harness manifest (harness/v1)"
    return schema


def expect_warnings(loaded: LoadedManifest) -> list[str]:
    """``file:line: expect: warning: ...`` for an ``expect`` that validates but will surprise.

    A run that is not deterministic without a stated margin, a very wide relative margin, or too
    few seeds to show equivalence at all.
    """
    manifest = loaded.manifest
    expect = manifest.expect
    lines = read_manifest_data(loaded.path)[1]
    where = f"{loaded.path}:{lines.get(('expect',), lines.get((), 1))}: expect"
    metric = expect.metric or manifest.metrics.primary or "the primary metric"
    warnings: list[str] = []
    if not expect.deterministic and expect.margin is None and expect.margin_relative is None:
        warnings.append(
            f"{where}: warning: deterministic is false and no margin is stated: reproductions will be "
            f"judged within 10 % of the original's {expect.aggregate} {metric} (margin_relative 0.1); "
            "state expect.margin or expect.margin_relative"
        )
    if expect.margin_relative is not None and expect.margin_relative > 0.25:
        warnings.append(
            f"{where}: warning: margin_relative {expect.margin_relative:g} calls results up to "
            f"{100 * expect.margin_relative:g} % apart the same; is that the claim?"
        )
    if not expect.deterministic and len(manifest.seeds) < 3:
        warnings.append(
            f"{where}: warning: {len(manifest.seeds)} seed{'s' if len(manifest.seeds) != 1 else ''}: "
            "a reproduction across seeds needs at least 3 a side to show equivalence"
        )
    if expect.alpha is not None:
        warnings.append(
            f"{where}: warning: alpha is ignored: the verdict across seeds is an equivalence test "
            f"at confidence {expect.confidence:g} (0.90 is TOST at α = 0.05); remove alpha"
        )
    if expect.statistic == "final" and ("expect", "last_n") in lines:
        warnings.append(f"{where}: warning: last_n is ignored with statistic: final")
    return warnings
