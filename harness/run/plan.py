"""From a manifest to the runs it describes: seeds × sweep, each with a stable id."""

from __future__ import annotations

import hashlib
import itertools
import json
from dataclasses import dataclass, field
from typing import Any

from harness.errors import HarnessError
from harness.loaded_manifest import SEED_LIMIT, LoadedManifest

Scalar = bool | int | float | str


@dataclass(frozen=True)
class RunSpec:
    """One run: a manifest, its final params and a seed."""

    loaded: LoadedManifest
    params: dict[str, Scalar]
    seed: int
    smoke: bool = False
    config_key: str = field(default="")

    @property
    def run_id(self) -> str:
        return f"{self.loaded.view.name}-{self.config_key[:12]}"

    @property
    def name(self) -> str:
        return self.loaded.view.name

    def command(self) -> list[str]:
        """The manifest's command with ``{param}`` and ``{seed}`` filled in."""
        values = {**{k: _text(v) for k, v in self.params.items()}, "seed": str(self.seed)}
        return [part.format(**values) for part in self.loaded.view.command]


def _text(value: Scalar) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    return str(value)


def config_key(loaded: LoadedManifest, params: dict[str, Any], seed: int, smoke: bool) -> str:
    """sha256 of what determines a run's result: manifest content, lockfile, params, seed."""
    payload = {
        "manifest": loaded.sha256,
        "lockfile": hashlib.sha256(loaded.lockfile.read_bytes()).hexdigest() if loaded.lockfile else None,
        "params": params,
        "seed": seed,
        "smoke": smoke,
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


def parse_overrides(pairs: tuple[str, ...] | list[str], loaded: LoadedManifest) -> dict[str, Scalar]:
    """``--param name=value`` pairs, typed like the manifest's default for that param."""
    overrides: dict[str, Scalar] = {}
    params = loaded.view.params
    for pair in pairs:
        name, sep, raw = pair.partition("=")
        if not sep:
            raise HarnessError(f"--param {pair!r}: write name=value")
        if name not in params:
            known = ", ".join(sorted(params)) or "none"
            raise HarnessError(f"--param {name}: {loaded.path} has no param {name!r} (params: {known})")
        overrides[name] = _coerce(raw, params[name], name)
    return overrides


def _coerce(raw: str, default: Scalar, name: str) -> Scalar:
    try:
        if isinstance(default, bool):
            if raw.lower() not in {"true", "false"}:
                raise ValueError
            return raw.lower() == "true"
        if isinstance(default, int):
            return int(raw)
        if isinstance(default, float):
            return float(raw)
    except ValueError:
        raise HarnessError(f"--param {name}={raw}: expected a {type(default).__name__} like {default!r}") from None
    return raw


def sweep_points(loaded: LoadedManifest) -> list[dict[str, Scalar]]:
    """The param sets of the sweep (a grid or an explicit list); one empty set without a sweep."""
    sweep = loaded.view.sweep
    if sweep is None:
        return [{}]
    if isinstance(sweep, list):
        return [dict(entry) for entry in sweep]
    keys = list(sweep)
    return [dict(zip(keys, values)) for values in itertools.product(*(sweep[k] for k in keys))]


def expand(
    loaded: LoadedManifest,
    seeds: list[int] | None = None,
    overrides: dict[str, Scalar] | None = None,
    smoke: bool = False,
) -> list[RunSpec]:
    """Every run of a manifest: sweep points × seeds, with smoke params and overrides applied last."""
    manifest = loaded.view
    chosen_seeds = seeds if seeds else list(manifest.seeds)
    for seed in chosen_seeds:
        if not 0 <= seed < SEED_LIMIT:
            raise HarnessError(f"--seed {seed}: a seed is an integer from 0 to 2**32-1")
    specs: list[RunSpec] = []
    seen: set[str] = set()
    for point in sweep_points(loaded):
        params = {**manifest.params, **point}
        if smoke:
            params.update(manifest.smoke)
        params.update(overrides or {})
        for seed in chosen_seeds:
            key = config_key(loaded, params, seed, smoke)
            if key in seen:  # smoke params or overrides can make sweep points coincide
                continue
            seen.add(key)
            specs.append(RunSpec(loaded=loaded, params=params, seed=seed, smoke=smoke, config_key=key))
    return specs
