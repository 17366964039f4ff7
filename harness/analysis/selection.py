"""Select runs from the local store: by manifest name, run id, ``param=value``, ``status=``,
``tag=``, ``seed=``, or a Hub repo ``hub:org/name`` (pulled into the local store first).

Terms with the same key are alternatives (``lr=1e-4 lr=3e-4``: either); terms with different
keys must all hold (``dqn-cartpole status=failed``). Without a ``status=`` term only completed
runs are selected.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from collections.abc import Sequence
from typing import Any

import pyarrow as pa
import yaml

from harness.analysis.index import refresh_index
from harness.errors import HarnessError
from harness.store.local import LocalStore
from harness.store.record import DEFAULT_METRIC


def _parse_value(text: str) -> Any:
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def value_matches(actual: Any, wanted: str) -> bool:
    """Whether a param's recorded value equals the value typed on the command line (``1e-4`` = 0.0001)."""
    parsed = _parse_value(wanted)
    if isinstance(actual, bool) or isinstance(parsed, bool):
        return actual == parsed or str(actual) == wanted
    if isinstance(actual, (int, float)) and isinstance(parsed, (int, float)):
        return math.isclose(float(actual), float(parsed), rel_tol=1e-12, abs_tol=0.0)
    return actual == parsed or str(actual) == wanted


def _pull_hub(store: LocalStore, repo: str) -> set[str]:
    """Pull a Hub dataset repo into the store; the run ids it holds."""
    if not repo or repo.count("/") not in (1, 2):
        raise HarnessError(f"hub selection must be hub:<org>/<name>[/<run_id>], got 'hub:{repo}'")
    from harness.store import hub  # the Hub client costs seconds to import: only when asked

    return set(hub.pull(repo, store=store))


def _describe(rows: list[dict[str, Any]]) -> str:
    if not rows:
        return "the store holds no runs"
    names = Counter(r["name"] for r in rows)
    statuses = Counter(r["status"] for r in rows)
    keys = sorted({k for r in rows for k in json.loads(r["params"] or "{}")})
    parts = [
        "manifests " + ", ".join(f"{n} ({c})" for n, c in names.most_common(5)) + (" ..." if len(names) > 5 else ""),
        "statuses " + ", ".join(f"{s} ({c})" for s, c in statuses.most_common()),
    ]
    if keys:
        parts.append("params " + ", ".join(keys[:10]))
    return "the store holds " + "; ".join(parts)


def parse_terms(terms: Sequence[str]) -> dict[str, list[str]]:
    """Group selection terms by key: bare words under ``name``, ``hub:x/y`` under ``hub``."""
    grouped: dict[str, list[str]] = {}
    for term in terms:
        term = term.strip()
        if not term:
            continue
        if term.startswith("hub:"):
            key, value = "hub", term[4:]
        elif "=" in term:
            key, value = term.split("=", 1)
            key = key.strip()
            if not key:
                raise HarnessError(f"selection term {term!r} has no key before '='")
        else:
            key, value = "name", term
        grouped.setdefault(key, []).append(value)
    return grouped


def select_runs(store: LocalStore, terms: Sequence[str]) -> pa.Table:
    """Rows of the run index (see harness.analysis.index) matching the selection terms."""
    grouped = parse_terms(terms)
    if not grouped:
        raise HarnessError("no selection: name runs by manifest, param=value, status=, tag= or hub:org/name")
    hub_ids: set[str] | None = None
    for repo in grouped.pop("hub", []):
        hub_ids = (hub_ids or set()) | _pull_hub(store, repo)
    index = refresh_index(store)
    rows = index.to_pylist()
    statuses = grouped.get("status") or ["completed", "imported"]

    def keep(row: dict[str, Any]) -> bool:
        if hub_ids is not None and row["run_id"] not in hub_ids:
            return False
        if row["status"] not in statuses:
            return False
        for key, values in grouped.items():
            if key == "status":
                continue
            if key == "name":
                if row["name"] not in values and row["run_id"] not in values:
                    return False
            elif key == "run":
                if row["run_id"] not in values:
                    return False
            elif key == "tag":
                if not set(values) & set(row["tags"] or []):
                    return False
            elif key == "seed":
                if row["seed"] is None or not any(value_matches(row["seed"], v) for v in values):
                    return False
            else:
                params = json.loads(row["params"] or "{}")
                if key not in params or not any(value_matches(params[key], v) for v in values):
                    return False
        return True

    chosen = [i for i, row in enumerate(rows) if keep(row)]
    if not chosen:
        shown = " ".join(terms)
        implicit = "" if "status" in grouped else " (status=completed unless given)"
        raise HarnessError(f"no runs match '{shown}'{implicit}; {_describe(rows)}")
    return index.take(pa.array(chosen, pa.int64()))


def default_metric(runs: pa.Table, metric: str | None, fallback: str = DEFAULT_METRIC) -> str:
    """The metric asked for, else the selected runs' most common primary metric, else ``fallback``."""
    if metric:
        return metric
    primaries = Counter(p for p in runs.column("primary_metric").to_pylist() if p)
    return primaries.most_common(1)[0][0] if primaries else fallback


def run_params(runs: pa.Table) -> list[dict[str, Any]]:
    """The params of each selected run, decoded, in table order."""
    return [json.loads(p or "{}") for p in runs.column("params").to_pylist()]
