"""Whether the Debian mirror still serves the packages a bootstrapped base image was made from.

The base bootstrap records every ``.deb`` by sha256 in ``/etc/harness-debs.sha256``; mmdebstrap
makes the same base again only from the same package files. After a Debian point release the
mirror drops the old versions, and the same base can no longer be made from it. The check reads
the host's apt package index (``apt-cache show``): no network, bounded, and an absent index or
apt is "unknown", never an error.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import unquote

DEBS_FILE = "/etc/harness-debs.sha256"
MAX_LIST_BYTES = 1 << 20  # a minbase list is ~10 kB
MAX_PACKAGES = 2000
MAX_INDEX_BYTES = 64 << 20  # apt-cache's answer for a few hundred names is a few MB
APT_LISTS = Path("/var/lib/apt/lists")


@dataclass(frozen=True)
class DebFile:
    """One package file a base was made from (sha256 may be empty when only the version is known)."""

    name: str
    version: str
    sha256: str = ""


@dataclass
class MirrorCheck:
    """The outcome: ``state`` is ``current``, ``moved`` or ``unknown``; ``detail`` one line."""

    state: str
    detail: str
    gone: list[DebFile] = field(default_factory=list)
    served_now: dict[str, list[str]] = field(default_factory=dict)

    def to_dict(self) -> dict[str, object]:
        """JSON-ready form."""
        return {
            "state": self.state,
            "detail": self.detail,
            "gone": [{"name": d.name, "version": d.version, "sha256": d.sha256} for d in self.gone],
        }


def parse_debs_list(text: str) -> list[DebFile]:
    """``sha256sum`` lines of ``name_version_arch.deb`` files; malformed lines are left out."""
    debs: list[DebFile] = []
    for line in text.splitlines()[:MAX_PACKAGES]:
        digest, _, filename = line.strip().partition("  ")
        filename = filename.lstrip("*")
        parts = filename.removesuffix(".deb").split("_")
        if len(digest) != 64 or not filename.endswith(".deb") or len(parts) != 3:
            continue
        name, version = parts[0], unquote(parts[1])  # apt writes an epoch's ':' as %3a
        if name and version and all(c.isprintable() and not c.isspace() for c in name + version):
            debs.append(DebFile(name, version, digest.lower()))
    return debs


def image_debs(image: str) -> list[DebFile] | None:
    """The package files the base ``image`` records, or None when it records none (an older base)."""
    from harness.runtime.engine import docker_client

    try:
        output = docker_client().containers.run(
            image,
            ["head", "-c", str(MAX_LIST_BYTES), DEBS_FILE],
            remove=True,
            network_mode="none",
            user="65534:65534",
        )
    except Exception:  # noqa: BLE001 — an image without the list (or no engine) is "unknown", not a failure
        return None
    return parse_debs_list(bytes(output).decode("utf-8", "replace"))


def _index_age() -> str:
    """When the apt index was last refreshed, for the reader to judge how current "now" is."""
    try:
        newest = max(p.stat().st_mtime for p in APT_LISTS.glob("*_Packages*"))
    except (OSError, ValueError):
        return "unknown date"
    return time.strftime("%Y-%m-%d", time.gmtime(newest))


def served_versions(names: list[str], timeout: float = 60.0) -> dict[str, list[tuple[str, str]]] | None:
    """``name -> [(version, sha256)]`` from the apt index, or None when there is no usable index."""
    if shutil.which("apt-cache") is None or not names:
        return None
    try:
        result = subprocess.run(
            ["apt-cache", "show", "--", *names],
            capture_output=True,
            timeout=timeout,
            env={**os.environ, "LC_ALL": "C"},
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    served: dict[str, list[tuple[str, str]]] = {}
    for stanza in result.stdout[:MAX_INDEX_BYTES].decode("utf-8", "replace").split("\n\n"):
        fields = {
            key.strip(): value.strip()
            for key, sep, value in (line.partition(":") for line in stanza.splitlines() if not line.startswith(" "))
            if sep
        }
        if "Package" in fields and "Version" in fields:
            served.setdefault(fields["Package"], []).append((fields["Version"], fields.get("SHA256", "").lower()))
    return served or None


def check_mirror(debs: list[DebFile] | None) -> MirrorCheck:
    """Whether every recorded package file (same version, and same sha256 when recorded) is still served."""
    if not debs:
        return MirrorCheck(
            "unknown", "unknown: the base image records no package files (bootstrapped before they were)"
        )
    served = served_versions(sorted({d.name for d in debs}))
    if served is None:
        return MirrorCheck("unknown", "unknown: no apt package index here to compare with (apt-get update?)")
    gone = [
        d
        for d in debs
        if not any(v == d.version and (not d.sha256 or s == d.sha256) for v, s in served.get(d.name, []))
    ]
    age = _index_age()
    if not gone:
        return MirrorCheck("current", f"all {len(debs)} package files are still served (apt index of {age})")
    now = {d.name: [v for v, _ in served.get(d.name, [])] for d in gone}
    shown = ", ".join(f"{d.name} {d.version} (now {' / '.join(now[d.name]) or 'none'})" for d in gone[:3]) + (
        f" and {len(gone) - 3} more" if len(gone) > 3 else ""
    )
    return MirrorCheck(
        "moved",
        f"the Debian mirror has moved on (apt index of {age}): {len(gone)} of {len(debs)} package files are "
        f"no longer served, so this base cannot be made again from it: {shown}",
        gone,
        now,
    )
