"""Run ids as a user types them: any unique prefix names a run, and the shell completes them.

Completion lists the store's run folders only (no record is read), so pressing Tab stays fast
with thousands of runs.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import click

from harness.errors import StoreError
from harness.store.layout import RECORD as RECORD_NAME

if TYPE_CHECKING:
    from harness.store.local import LocalStore

SHOWN_CANDIDATES = 8


def _store() -> LocalStore:
    # the store module loads only when a run id is looked up: `harness build` and `run` never do
    from harness.store.local import LocalStore

    return LocalStore()


class AmbiguousRunId(StoreError):
    """A prefix that names more than one run."""


def run_ids(store: LocalStore) -> list[str]:
    """Every run id in the store (folders holding a record.json), sorted."""
    if not store.runs_dir.is_dir():
        return []
    return sorted(
        p.name for p in store.runs_dir.iterdir() if not p.name.startswith(".") and (p / RECORD_NAME).is_file()
    )


def resolve_run_id(store: LocalStore, text: str) -> str:
    """The run id that ``text`` names: the id itself, or the only run whose id starts with it.

    Raises AmbiguousRunId (listing the candidates) or StoreError (no such run) as one line.
    """
    if not text:
        raise StoreError("empty run id: see `harness ls`")
    if "/" not in text and not text.startswith(".") and store.exists(text):
        return text
    matches = [run_id for run_id in run_ids(store) if run_id.startswith(text)]
    if len(matches) == 1:
        return matches[0]
    if matches:
        shown = ", ".join(matches[:SHOWN_CANDIDATES]) + (
            f" and {len(matches) - SHOWN_CANDIDATES} more" if len(matches) > SHOWN_CANDIDATES else ""
        )
        raise AmbiguousRunId(f"run id prefix {text!r} is ambiguous: it matches {shown}")
    store.load(text)  # raises the store's own "no run" error, with the newest runs listed
    raise StoreError(f"{store.root}: no run {text!r}")  # pragma: no cover - load raised


def complete_run_ids(ctx: click.Context, param: click.Parameter, incomplete: str) -> list[Any]:  # noqa: ARG001 — Click's shell_complete signature
    """Click ``shell_complete`` callback: the store's run ids starting with what was typed."""
    from click.shell_completion import CompletionItem

    try:
        ids = run_ids(_store())
    except OSError:
        return []
    return [CompletionItem(run_id) for run_id in ids if run_id.startswith(incomplete)]


def known_repos(store: LocalStore) -> list[str]:
    """Hub repos this store has pulled runs from (``pulled_from.repo`` of its records), sorted."""
    return sorted({str((r.get("pulled_from") or {}).get("repo")) for r in store.records() if r.get("pulled_from")})


def complete_repos(ctx: click.Context, param: click.Parameter, incomplete: str) -> list[Any]:  # noqa: ARG001 — Click's shell_complete signature
    """Click ``shell_complete`` callback for ``org/name[/<run_id>]``: repos runs were pulled from,
    then that repo's runs in the store."""
    from click.shell_completion import CompletionItem

    try:
        store = _store()
        if incomplete.count("/") >= 2:
            repo = incomplete.rsplit("/", 1)[0]
            pulled = [r["run_id"] for r in store.records() if (r.get("pulled_from") or {}).get("repo") == repo]
            return [
                CompletionItem(f"{repo}/{run_id}")
                for run_id in sorted(pulled)
                if f"{repo}/{run_id}".startswith(incomplete)
            ]
        return [CompletionItem(repo) for repo in known_repos(store) if repo.startswith(incomplete)]
    except OSError:
        return []


class RunIdType(click.ParamType):
    """A run id argument: a unique prefix is expanded to the full id, and Tab completes ids.

    With ``allow_hub=True`` a Hub spec (``org/name/<run_id>``) passes through unchanged.
    """

    name = "run_id"

    def __init__(self, allow_hub: bool = False, allow_imported: bool = False):
        self.allow_hub = allow_hub
        self.allow_imported = allow_imported

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> str:  # noqa: ARG002 — Click's ParamType signature
        text = str(value)
        if self.allow_hub and "/" in text:
            return text
        if self.allow_imported and any(
            r.get("status") == "imported" and r.get("name") == text for r in _store().records()
        ):
            return text  # an imported group's name (harness import)
        # A StoreError (not click's BadParameter) so that the CLI prints one line and exits 2.
        return resolve_run_id(_store(), text)

    def shell_complete(self, ctx: click.Context, param: click.Parameter, incomplete: str) -> list[Any]:
        if self.allow_hub and "/" in incomplete:
            return complete_repos(ctx, param, incomplete)
        return complete_run_ids(ctx, param, incomplete)


RUN_ID = RunIdType()
RUN_ID_OR_HUB = RunIdType(allow_hub=True)
RUN_ID_OR_HUB_OR_IMPORTED = RunIdType(allow_hub=True, allow_imported=True)


def expand_selection(store: LocalStore, terms: tuple[str, ...] | list[str]) -> list[str]:
    """Selection terms with run-id prefixes written out in full.

    A bare word that names a manifest stays as it is (a manifest name is also a prefix of its run
    ids); any other bare word that is a unique run-id prefix becomes that run's id.
    """
    from harness.analysis.index import refresh_index

    bare = [t for t in terms if "=" not in t and not t.startswith("hub:")]
    if not bare:
        return list(terms)
    names = set(refresh_index(store).column("name").to_pylist())
    expanded = []
    for term in terms:
        if term in bare and term not in names and any(run_id.startswith(term) for run_id in run_ids(store)):
            expanded.append(resolve_run_id(store, term))
        else:
            expanded.append(term)
    return expanded
