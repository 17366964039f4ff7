"""Which engine images the harness made, and removing those nothing needs any more.

Every stage of a harness build carries the label ``org.harness.build`` (inserted after each FROM
of the staged Dockerfile, so the recipe and its content hash are untouched), and the final image
also ``org.harness.content-hash``. Labels are inherited, though: an image someone
builds FROM a harness image carries them too. So the harness also keeps a ledger of the image ids
its builds produced (every step's id from the build stream), and ``harness gc`` removes a dangling
image only when the ledger lists it, and a tagged one only when its tag is exactly the
``harness/<recipe>:<hash>`` its labels describe. Builder-stage images made before the ledger
existed are recognised by their ``COPY ... /harness-build/`` step (the staging folder only the
harness uses), and only when dangling.

Removed: the harness's dangling images (builder stages, and final images whose tag moved to a
rebuild) unless a record names their id (the run's image stays whatever became of its tag), and tagged ``harness/<recipe>:<hash>`` images that no record of the store and no
manifest of the project references. Kept: everything else, images in use by a container, and any
image that also carries a tag outside ``harness/``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness.images.ledger import CONTENT_LABEL, RECIPE_LABEL, STAGING_MARK, built_ids


@dataclass
class Candidate:
    """An image gc would remove, and why."""

    id: str
    tags: list[str]
    reason: str  # dangling builder stage | dangling rebuilt image | unreferenced
    size: int  # bytes only this image holds (the engine's Size - SharedSize)
    recipe: str | None = None


@dataclass
class GcResult:
    """What ``harness gc`` found and did."""

    candidates: list[Candidate]
    removed: list[str] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (image id, why)
    reclaimed_bytes: int | None = None  # measured from the engine's layer total; None on a dry run
    estimated_bytes: int = 0
    kept_referenced: int = 0

    def to_dict(self, dry_run: bool) -> dict[str, Any]:
        """``harness gc --json`` (docs/cli-json.md)."""
        return {
            "dry_run": dry_run,
            "images": [
                {
                    "id": c.id,
                    "tags": c.tags,
                    "reason": c.reason,
                    "recipe": c.recipe,
                    "size_bytes": c.size,
                    "removed": c.id in self.removed,
                }
                for c in self.candidates
            ],
            "skipped": [{"id": image_id, "why": why} for image_id, why in self.skipped],
            "kept_referenced": self.kept_referenced,
            "estimated_bytes": self.estimated_bytes,
            "reclaimed_bytes": self.reclaimed_bytes,
        }


def _labels(attrs: dict[str, Any]) -> dict[str, str]:
    return (attrs.get("Config") or {}).get("Labels") or {}


def _legacy_builder(image: Any) -> bool:
    """A dangling builder stage of a harness build made before stages were labelled."""
    try:
        return any(STAGING_MARK in (step.get("CreatedBy") or "") for step in image.history())
    except Exception:  # noqa: BLE001 — an image whose history cannot be read is not ours to judge
        return False


def referenced_images(store: Any, project: Path | None, note: Callable[[str], None]) -> set[str]:
    """Image tags and ids that a record of ``store`` or a manifest under ``project/manifests`` names."""
    from harness.errors import HarnessError

    wanted: set[str] = set()
    for record in store.records():
        image = record.get("image") or {}
        wanted.update(v for v in (image.get("tag"), image.get("id"), image.get("ref")) if v)
    if project is None or not (project / "manifests").is_dir():
        return wanted
    from harness.images.build import base_images, content_hash, engine_image_id
    from harness.manifest import load_manifest

    for path in sorted((project / "manifests").glob("*.y*ml")):
        try:
            loaded = load_manifest(path)
            if loaded.manifest.image.ref:
                wanted.add(loaded.manifest.image.ref)
                continue
            assert loaded.build_dir is not None
            base_ids = {}
            for base in base_images(loaded.build_dir / "Dockerfile"):
                base_ids[base] = engine_image_id(base) or ""
                wanted.add(base)
            spec = loaded.manifest.image
            # a recipe that does not name its builder may have been built by either
            for reproducible in (True, False) if spec.reproducible is None else (spec.reproducible,):
                digest = content_hash(loaded.build_dir, loaded.lockfile, base_ids, spec.network, reproducible)
                wanted.add(f"harness/{loaded.build_dir.name}:{digest[:16]}")
        except (HarnessError, OSError, AssertionError) as exc:
            note(f"{path}: not checked for its image ({str(exc).splitlines()[0] if str(exc) else type(exc).__name__})")
    return wanted


def find_garbage(client: Any, referenced: set[str], recipes: set[str] | None = None, tagged: bool = True) -> GcResult:
    """The harness's images that nothing needs; ``recipes`` limits it to those recipe names, and
    ``tagged=False`` to dangling images (without a project, what its manifests name is unknown)."""
    sizes = {}
    try:
        for entry in client.df().get("Images") or []:
            shared = entry.get("SharedSize", 0)
            sizes[entry["Id"]] = max(int(entry.get("Size", 0)) - max(int(shared), 0), 0)
    except Exception:  # noqa: BLE001 — sizes are a courtesy; gc works without them
        pass
    candidates: list[Candidate] = []
    kept = 0
    ledger = built_ids()
    for image in client.images.list():
        attrs = image.attrs
        labels = _labels(attrs)
        tags = [t for t in (image.tags or []) if t != "<none>:<none>"]
        short = image.id.split(":")[-1][:12]
        recipe = labels.get(RECIPE_LABEL)
        if image.id in referenced or image.id.split(":")[-1] in referenced:
            # a record names it: a rebuild may have moved its tag, but the run's image stays
            kept += 1
            continue
        if not tags:
            if short not in ledger and not _legacy_builder(image):
                continue
            reason = "dangling rebuilt image" if CONTENT_LABEL in labels else "dangling builder stage"
        else:
            own_tag = f"harness/{recipe}:{str(labels.get(CONTENT_LABEL, ''))[:16]}"
            if CONTENT_LABEL not in labels or not all(t.startswith("harness/") for t in tags) or own_tag not in tags:
                continue
            if any(t in referenced for t in tags):
                kept += 1
                continue
            if not tagged:
                continue
            reason = "unreferenced"
        if recipes is not None and recipe not in recipes:
            continue
        candidates.append(Candidate(image.id, tags, reason, sizes.get(image.id, 0), recipe))
    result = GcResult(candidates, kept_referenced=kept)
    result.estimated_bytes = sum(c.size for c in candidates)
    return result


def _layers_size(client: Any) -> int | None:
    try:
        return int(client.df().get("LayersSize") or 0)
    except Exception:  # noqa: BLE001 — no total: the reclaimed space is unknown, not zero
        return None


def remove_garbage(client: Any, result: GcResult) -> GcResult:
    """Remove the candidates (never forced: an image a container uses stays) and measure the space."""
    from docker.errors import APIError, ImageNotFound

    before = _layers_size(client)
    # tagged images first: untagging can leave their builder parents dangling, which go next
    for candidate in sorted(result.candidates, key=lambda c: not c.tags):
        try:
            if candidate.tags:
                for tag in candidate.tags:
                    client.images.remove(tag, noprune=False)
            else:
                client.images.remove(candidate.id, noprune=False)
            result.removed.append(candidate.id)
        except ImageNotFound:
            result.removed.append(candidate.id)  # went with an image removed before it
        except APIError as exc:
            result.skipped.append((candidate.id, str(exc.explanation or exc).splitlines()[0]))
    after = _layers_size(client)
    if before is not None and after is not None:
        result.reclaimed_bytes = max(before - after, 0)
    return result


def human_bytes(count: int | None) -> str:
    """1234567 -> '1.2 MB' (decimal units, as docker prints them)."""
    if count is None:
        return "unknown"
    value = float(count)
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if value < 1000 or unit == "TB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1000
    return f"{count} B"  # pragma: no cover
