"""Importers: another publisher's Hub repos read as harness inputs (docs/importing.md).

An importer knows one publisher's repo format. Given the repo's file listing it says whether the
repo is in its format (``detect``) and which files to download (``wanted``: never weights); given
those files, downloaded as regular files, it reads one published run (``read``): the command as
an argument list with ``{seed}`` and params, the image it needs (workload files, a hashed
lockfile, a base), the metrics it published and the provenance. ``harness.reproduce.importing`` turns a
group of such runs into a manifest, a recipe, a lockfile and ``imported`` records.

Everything here reads hostile input: files only through ``RepoSnapshot.read`` (bounded, no link
followed), nothing executed, no weights downloaded or unpickled.
"""

from __future__ import annotations

from harness.store.importers.base import ImportedRun, Importer, RepoFile, RepoImportError, RepoSnapshot

__all__ = ["ImportedRun", "Importer", "RepoFile", "RepoImportError", "RepoSnapshot", "importers"]


def importers() -> list[Importer]:
    """Every known format, in the order they are tried."""
    from harness.store.importers.cleanrl import CleanRLImporter

    return [CleanRLImporter()]
