"""What marks an engine image as the harness's own: the stage labels inserted into each staged
Dockerfile, and the ledger of the image ids harness builds produced (read by ``harness gc``)."""

from __future__ import annotations

import re
from pathlib import Path

from harness.util.fsutil import cache_root

BUILD_LABEL = "org.harness.build"
RECIPE_LABEL = "org.harness.recipe"
CONTENT_LABEL = "org.harness.content-hash"
STAGING_MARK = "/harness-build/"
FROM_LINE = re.compile(r"(?i)^\s*FROM\s")


def ledger_path() -> Path:
    """The file listing the image ids harness builds produced (next to the wheel cache)."""
    return cache_root() / "built-images.txt"


BUILT_ID = re.compile(r"(?:--->\s+|sha256:)([0-9a-f]{12})")


def built_ids_in(text: str) -> list[str]:
    """Short image ids a classic-builder stream line reports (`` ---> 1a2b3c4d5e6f``, aux ``sha256:…``)."""
    return BUILT_ID.findall(text)


def record_built(ids: list[str], recipe: str) -> None:
    """Add the ids of one build's images to the ledger (appends; a lost line only keeps an image)."""
    if not ids:
        return
    path = ledger_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a", encoding="utf-8") as handle:
        handle.write("".join(f"{image_id} {recipe}\n" for image_id in dict.fromkeys(ids)))


def built_ids() -> set[str]:
    """Every short image id in the ledger."""
    path = ledger_path()
    if not path.is_file():
        return set()
    return {line.split()[0] for line in path.read_text(encoding="utf-8", errors="replace").splitlines() if line.strip()}


def mark_stages(dockerfile: Path, recipe: str) -> None:
    """Insert ``LABEL org.harness.build=1 org.harness.recipe=<recipe>`` after every FROM of a staged
    Dockerfile. The label is the same for every build of a recipe, so the builder stage stays cached
    when only the workload changes."""
    label = f'LABEL {BUILD_LABEL}="1" {RECIPE_LABEL}="{recipe}"'
    lines = dockerfile.read_text(encoding="utf-8").splitlines()
    out: list[str] = []
    continued = False
    pending = False
    for line in lines:
        out.append(line)
        if not continued and FROM_LINE.match(line):
            pending = True
        continued = line.rstrip().endswith("\\")
        if pending and not continued:
            out.append(label)
            pending = False
    dockerfile.write_text("\n".join(out) + "\n", encoding="utf-8")
