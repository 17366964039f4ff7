"""Select runs from the local store: by manifest name, run id, ``param=value``, ``status=``,
``tag=``, ``seed=``, or a Hub repo ``hub:org/name`` (pulled into the local store first).

Terms with the same key are alternatives (``lr=1e-4 lr=3e-4``: either); terms with different
keys must all hold (``dqn-cartpole status=failed``). Without a ``status=`` term only completed
runs are selected.

Smoke runs and runs of another budget are not results: without a ``smoke=`` term smoke runs are
left out (unless nothing else matches), and of each manifest's runs only those of its most common
budget (the params its ``smoke`` shrinks, e.g. total_timesteps) are kept unless a term names a
budget param. What was left out is said in ``notes``.
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
    for given in terms:
        term = given.strip()
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


def select_runs(store: LocalStore, terms: Sequence[str], notes: list[str] | None = None) -> pa.Table:
    """Rows of the run index (see harness.analysis.index) matching the selection terms; what the
    defaults left out (smoke runs, runs of another budget) is appended to ``notes``."""
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
            elif key == "smoke":
                if not any(value_matches(bool(row["smoke"]), v) for v in values):
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
    said: list[str] = []
    named = set(grouped.get("run", [])) | set(grouped.get("name", []))
    explicit = [i for i in chosen if rows[i]["run_id"] in named]  # a run named by its id is kept
    if not explicit:
        if "smoke" not in grouped:
            chosen = _without_smoke(rows, chosen, said)
        chosen = _one_budget(rows, chosen, set(grouped), said)
    if notes is not None:
        notes.extend(said)
    if not chosen:
        shown = " ".join(terms)
        implicit = "" if "status" in grouped else " (status=completed unless given)"
        raise HarnessError(f"no runs match '{shown}'{implicit}; {_describe(rows)}")
    return index.take(pa.array(chosen, pa.int64()))


def _without_smoke(rows: list[dict[str, Any]], chosen: list[int], notes: list[str]) -> list[int]:
    """``chosen`` less its smoke runs, unless it holds nothing else (then it is said)."""
    smoke = [i for i in chosen if rows[i]["smoke"]]
    if not smoke:
        return chosen
    if len(smoke) == len(chosen):
        notes.append(f"only smoke runs match: using {_runs(len(smoke))} (short runs, not results)")
        return chosen
    notes.append(f"left out {_runs(len(smoke))} of smoke tests (select them with smoke=true)")
    return [i for i in chosen if not rows[i]["smoke"]]


def _one_budget(rows: list[dict[str, Any]], chosen: list[int], keys: set[str], notes: list[str]) -> list[int]:
    """Of each manifest's runs in ``chosen``, those of its most common budget (the latest budget on a
    tie), unless the selection names a budget param; what was left out is said."""
    by_name: dict[str, list[int]] = {}
    for i in chosen:
        by_name.setdefault(rows[i]["name"], []).append(i)
    left_out: set[int] = set()
    for name, members in by_name.items():
        budgets = Counter(rows[i]["budget"] for i in members if rows[i]["budget"] is not None)
        if len(budgets) < 2 or keys & set(json.loads(next(iter(budgets)))):
            continue
        latest = {
            rows[i]["budget"]: rows[i]["started_at"] or ""
            for i in sorted(members, key=lambda i: rows[i]["started_at"] or "")
        }
        kept = max(budgets, key=lambda b: (budgets[b], latest[b]))
        dropped = [i for i in members if rows[i]["budget"] not in (None, kept)]
        left_out.update(dropped)
        others = sorted({rows[i]["budget"] for i in dropped})
        shown = " or ".join(_budget_terms(b) for b in others)
        notes.append(
            f"left out {_runs(len(dropped))} of {name} with another budget than {_budget_terms(kept)} "
            f"(select them with {shown})"
        )
    return [i for i in chosen if i not in left_out]


def _budget_terms(budget: str) -> str:
    return " ".join(f"{key}={value}" for key, value in json.loads(budget).items())


def _runs(count: int) -> str:
    return f"{count} run{'s' if count != 1 else ''}"


def default_metric(runs: pa.Table, metric: str | None, fallback: str = DEFAULT_METRIC) -> str:
    """The metric asked for, else the selected runs' most common primary metric, else ``fallback``."""
    if metric:
        return metric
    primaries = Counter(p for p in runs.column("primary_metric").to_pylist() if p)
    return primaries.most_common(1)[0][0] if primaries else fallback


def run_params(runs: pa.Table) -> list[dict[str, Any]]:
    """The params of each selected run, decoded, in table order."""
    return [json.loads(p or "{}") for p in runs.column("params").to_pylist()]
