"""The importer interface: the Protocol each format implements and the types it reads and returns."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from harness.errors import HarnessError
from harness.util.safefs import UnsafeFile, printable, read_beneath


class RepoImportError(HarnessError):
    """A repo that cannot be imported: one line naming the repo, the file and what is wrong."""


@dataclass(frozen=True)
class RepoFile:
    """One file of the repo's listing: its size and the Hub's hashes (``sha256`` for LFS files)."""

    path: str
    size: int
    sha256: str | None = None
    blob_id: str | None = None

    @property
    def provenance(self) -> str:
        """The file's identity as the Hub states it: ``sha256:<hex>`` or ``git-blob:<oid>``."""
        return f"sha256:{self.sha256}" if self.sha256 else f"git-blob:{self.blob_id}"


@dataclass
class RepoSnapshot:
    """A repo at one commit: its whole listing, and a folder holding the files an importer wanted."""

    repo: str
    revision: str
    files: dict[str, RepoFile]
    folder: Path

    def read(self, path: str, limit: int) -> bytes:
        """The bytes of a downloaded file, at most ``limit``; RepoImportError for a missing, linked,
        special or oversized file."""
        listed = self.files.get(path)
        if listed is not None and listed.size > limit:
            raise RepoImportError(
                f"{self.repo}@{self.revision[:12]}: {printable(path)} is {listed.size} bytes, more than {limit}"
            )
        try:
            return read_beneath(self.folder, path, limit)
        except UnsafeFile as exc:
            raise RepoImportError(f"{self.repo}@{self.revision[:12]}: {printable(path)}: {exc.reason}") from None
        except FileNotFoundError:
            raise RepoImportError(f"{self.repo}@{self.revision[:12]}: {printable(path)} was not downloaded") from None
        except OSError as exc:
            raise RepoImportError(f"{self.repo}@{self.revision[:12]}: {printable(path)}: {exc.strerror}") from None


@dataclass
class ImportedRun:
    """One published run as the harness needs it.

    ``command`` is the training command as an argument list with ``{seed}`` and ``{param}``
    placeholders (no shell); ``workload`` the files the image carries under /workload/;
    ``lockfile`` the hashed lockfile text; ``events`` the repo paths of its TensorBoard files;
    ``evaluation`` metric name -> value of the publisher's final evaluation.
    """

    format: str
    repo: str
    revision: str
    name: str
    seed: int
    command: list[str]
    params: dict[str, Any]
    dropped: list[str]
    workload: dict[str, bytes]
    lockfile: str
    base_image: str
    python: str
    tensorboard: str
    events: list[str]
    evaluation: dict[str, float]
    environment: dict[str, Any]
    notes: list[str] = field(default_factory=list)
    sources: dict[str, bytes] = field(default_factory=dict)  # publisher files kept in the record (card, lock)

    def signature(self) -> tuple[Any, ...]:
        """What the seed repos of one experiment share (all but the seed and where they live)."""
        return (
            self.format,
            self.name,
            self.command,
            sorted(self.params.items()),
            sorted(self.workload.items()),
            self.lockfile,
            self.base_image,
            self.tensorboard,
        )


class Importer(Protocol):
    """One publisher's repo format."""

    format: str

    def detect(self, files: Mapping[str, RepoFile], card: bytes | None) -> bool:
        """Whether a repo with these files (and this README.md, if any) is in this format."""
        ...

    def wanted(self, files: Mapping[str, RepoFile]) -> list[str]:
        """The repo paths to download for ``read`` (never weights or videos)."""
        ...

    def read(self, snapshot: RepoSnapshot) -> ImportedRun:
        """One published run; RepoImportError (one line) for anything missing or unusable."""
        ...
