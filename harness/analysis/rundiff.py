"""Two runs side by side: what differs in how they were asked for (manifest, params, lockfile),
what they ran on (image, packages, hardware) and what they measured (metric summaries).

Every field becomes one row ``(section, field, a, b)``; rows whose values differ come first.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from harness.store.local import LocalStore

SECTIONS = ("manifest", "params", "lockfile", "packages", "image", "hardware", "metrics")
SUMMARY_FIELDS = ("count", "last", "max", "mean_last_n")
MISSING = None


@dataclass(frozen=True)
class Row:
    """One field of both runs."""

    section: str
    field: str
    a: Any
    b: Any

    @property
    def same(self) -> bool:
        return self.a == self.b


@dataclass
class RunDiff:
    """The rows of two runs, differences first (in section order), then the fields they share."""

    a: str
    b: str
    rows: list[Row]

    @property
    def differences(self) -> list[Row]:
        return [row for row in self.rows if not row.same]

    @property
    def same(self) -> list[Row]:
        return [row for row in self.rows if row.same]

    def to_dict(self) -> dict[str, Any]:
        """JSON shape of ``harness diff --json`` (docs/cli-json.md)."""
        return {
            "a": self.a,
            "b": self.b,
            "differences": [asdict(row) for row in self.differences],
            "same": [asdict(row) for row in self.same],
        }


def _flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    """Nested dicts as dotted keys; lists stay whole (compared as one value)."""
    if isinstance(value, dict):
        flat: dict[str, Any] = {}
        for key in value:
            flat.update(_flatten(value[key], f"{prefix}.{key}" if prefix else str(key)))
        return flat
    return {prefix: value}


def _manifest(run_dir: Path) -> dict[str, Any]:
    """The run's manifest as data, read with the manifest loader's limits (size cap, no YAML aliases):
    a pulled run's manifest is untrusted input."""
    from harness.errors import HarnessError
    from harness.manifest import read_manifest_data

    path = run_dir / "manifest.yaml"
    if not path.is_file():
        return {}
    try:
        data = read_manifest_data(path)[0]
    except HarnessError as exc:
        return {"(unreadable manifest.yaml)": str(exc).splitlines()[0]}
    return data if isinstance(data, dict) else {}


def _requirements(lines: list[str]) -> dict[str, str]:
    """``name==version`` lines (hash continuation lines ignored) as name -> version."""
    pinned: dict[str, str] = {}
    for line in lines:
        line = line.split("#", 1)[0].strip().rstrip("\\").strip()
        if "==" in line and not line.startswith("-"):
            name, _, version = line.partition("==")
            pinned[name.strip().lower().replace("_", "-")] = version.split(";")[0].strip()
    return pinned


def _lockfile(run_dir: Path) -> dict[str, str]:
    path = run_dir / "lockfile.txt"
    return _requirements(path.read_text(errors="replace").splitlines()) if path.is_file() else {}


def _packages(record: Mapping[str, Any]) -> dict[str, str]:
    """Packages installed in the image as the run's environment capture saw them."""
    packages = (record.get("environment") or {}).get("packages")
    if isinstance(packages, dict):
        return {str(k).lower().replace("_", "-"): str(v) for k, v in packages.items()}
    if isinstance(packages, list):
        return _requirements([str(p) for p in packages])
    return _requirements(list((record.get("image") or {}).get("packages") or []))


def _section_rows(section: str, a: dict[str, Any], b: dict[str, Any]) -> list[Row]:
    return [Row(section, key, a.get(key, MISSING), b.get(key, MISSING)) for key in sorted(set(a) | set(b))]


def diff_runs(store: LocalStore, run_a: str, run_b: str) -> RunDiff:
    """Compare two runs of the store field by field."""
    records = [store.load(run_a), store.load(run_b)]
    dirs = [store.run_dir(run_a), store.run_dir(run_b)]
    rows: list[Row] = []
    manifests = [_flatten({k: v for k, v in _manifest(d).items() if k not in ("params",)}) for d in dirs]
    for m, r in zip(manifests, records):
        m["sha256"] = r.get("manifest_sha256")
    rows += _section_rows("manifest", *manifests)
    rows += _section_rows(
        "params", *[{**(r.get("params") or {}), "(seed)": r.get("seed"), "(smoke)": r.get("smoke")} for r in records]
    )
    locks: list[dict[str, Any]] = [dict(_lockfile(d)) for d in dirs]
    for lock, record in zip(locks, records):
        lock["(sha256)"] = record.get("lockfile_sha256")
    rows += _section_rows("lockfile", *locks)
    rows += _section_rows("packages", *[_packages(r) for r in records])
    images = []
    for record in records:
        image = record.get("image") or {}
        images.append(
            {
                "tag": image.get("tag") or image.get("ref"),
                "id": image.get("id"),
                "content_hash": image.get("content_hash"),
                "runtime": record.get("runtime"),
                "hermetic": record.get("hermetic"),
                "docker": record.get("docker_version"),
                "harness": record.get("harness_version"),
                "python": ((record.get("environment") or {}).get("python") or {}).get("version"),
                "torch": ((record.get("environment") or {}).get("torch") or {}).get("version"),
            }
        )
    rows += _section_rows("image", *images)
    hardware = []
    for record in records:
        host = {k: v for k, v in (record.get("host") or {}).items() if k != "hostname"}
        hardware.append(
            {
                **_flatten(record.get("hardware") or {}, "target"),
                **_flatten(host, "host"),
                "host.hostname": (record.get("host") or {}).get("hostname"),
            }
        )
    rows += _section_rows("hardware", *hardware)
    summaries = []
    for record in records:
        flat = {"(status)": record.get("status"), "(duration_s)": record.get("duration_s")}
        for metric, summary in (record.get("metrics_summary") or {}).items():
            for key in SUMMARY_FIELDS:
                if isinstance(summary, dict) and key in summary:
                    flat[f"{metric} {key}"] = summary[key]
        summaries.append(flat)
    rows += _section_rows("metrics", *summaries)
    order = {section: i for i, section in enumerate(SECTIONS)}
    rows.sort(key=lambda row: (row.same, order[row.section]))
    return RunDiff(records[0]["run_id"], records[1]["run_id"], rows)


def cell(value: Any) -> str:
    """A value as a table cell: numbers to 6 significant digits, missing as '-'."""
    if value is MISSING:
        return "-"
    if isinstance(value, float):
        return f"{value:.6g}"
    if isinstance(value, (dict, list)):
        return json.dumps(value, sort_keys=True)
    return str(value)
