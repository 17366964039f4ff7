"""Pinned Hub inputs of a run (``model:`` and ``data:`` in the manifest).

Runs have no network, so the harness fetches each pinned repo on the host, at its commit, into a
Hugging Face cache folder that the container gets read-only with ``HF_HUB_OFFLINE=1``: the
workload's ``from_pretrained(repo, revision=sha)`` then resolves from that cache. Only files that
are data (safetensors, JSON, text, tokenizer models, parquet) are fetched: never pickles or code.
The host's token is used for the download and never reaches the container.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from harness.errors import HarnessError
from harness.loaded_manifest import ManifestView, PinView

DATA_PATTERNS = [
    "*.json",
    "*.safetensors",
    "*.txt",
    "*.model",
    "*.tiktoken",
    "*.md",
    "*.parquet",
    "*.csv",
    "*.jsonl",
    "*.arrow",
    "*.yaml",
    "*.vocab",
    "*.spm",
]
CONTAINER_CACHE = "/opt/hf-cache"


def hub_cache_dir() -> Path:
    """Where pinned repos are kept on the host between runs."""
    from harness.util.fsutil import cache_root

    return cache_root() / "hub"


def pins_of(manifest: ManifestView) -> list[PinView]:
    """The model pin (if any) and the data pins, in that order."""
    return ([manifest.model] if manifest.model else []) + list(manifest.data)


def fetch_pins(manifest: ManifestView) -> list[dict[str, Any]]:
    """Download every pinned repo at its commit into the host cache; what was fetched, for the record."""
    pins = pins_of(manifest)
    if not pins:
        return []
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError
    from huggingface_hub.utils import logging as hub_logging

    hub_logging.set_verbosity_error()  # retries are the client's business; a failure is one line below

    fetched = []
    for pin in pins:
        try:
            folder = snapshot_download(
                repo_id=pin.repo,
                revision=pin.revision,
                repo_type=pin.repo_type,
                cache_dir=hub_cache_dir(),
                allow_patterns=DATA_PATTERNS,
            )
        except (HfHubHTTPError, LocalEntryNotFoundError, OSError, ValueError) as exc:
            from huggingface_hub import constants

            reason = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
            raise HarnessError(
                f"{pin.repo_type} {pin.repo}@{pin.revision}: cannot fetch it from {constants.ENDPOINT} ({reason}); "
                "run where the Hub is reachable, or fill the cache with the same commit"
            ) from None
        files = sorted(p.relative_to(folder).as_posix() for p in Path(folder).rglob("*") if p.is_file())
        fetched.append({"repo": pin.repo, "revision": pin.revision, "repo_type": pin.repo_type, "files": files})
    return fetched


def pin_environment(container: bool) -> dict[str, str]:
    """Environment that points the job's Hugging Face libraries at the fetched cache, offline."""
    cache = CONTAINER_CACHE if container else str(hub_cache_dir())
    return {"HF_HUB_CACHE": cache, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
