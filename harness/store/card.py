"""What a results repo on the Hub shows: the runs index (``runs.parquet``), the dataset card
(README.md, built with huggingface_hub's ``DatasetCard``); the learning-curve figure it shows is
drawn by ``harness.analysis.repo_figure`` and handed to ``harness.store.hub.publish``.

The runs index has one row per run with every param as its own column (``param_<name>``) and the
hardware target and host as plain columns, so the dataset viewer can filter and sort them; the
``params`` and ``hardware`` JSON columns stay for scripts that read the whole thing. Smoke runs
are flagged (``smoke``), and a reproduction says what it reproduces and its verdict.
"""

from __future__ import annotations

import io
import json
import statistics
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

PARAM_PREFIX = "param_"
FIGURE_PATH = "figures/learning_curves.png"
FIGURE_RUNS = 60  # at most this many runs are drawn (the newest)

# What draws the figure: (run folders by id, index rows, where to write it) -> the file, or None when
# there is nothing to draw. The card does not draw (analysis does): the caller passes it in.
FigureMaker = Callable[[Mapping[str, Path], list[dict[str, Any]], Path], "Path | None"]
DEFAULT_LICENSE = "unknown"
ENV_PARAMS = ("env_id", "env", "env_name", "environment")  # the param that names the environment, if any

BASE_COLUMNS = pa.schema(
    [
        ("run_id", pa.string()),
        ("name", pa.string()),
        ("description", pa.string()),
        ("seed", pa.int64()),
        ("smoke", pa.bool_()),
        ("status", pa.string()),
        ("primary_metric", pa.string()),
        ("primary_last", pa.float64()),
        ("primary_max", pa.float64()),
        ("primary_mean_last_n", pa.float64()),
        ("score", pa.float64()),
        ("score_statistic", pa.string()),
        ("env", pa.string()),
        ("budget", pa.string()),
        ("reproduces", pa.string()),
        ("reproduction_verdict", pa.string()),
        ("runtime", pa.string()),
        ("started_at", pa.string()),
        ("duration_s", pa.float64()),
        ("image_id", pa.string()),
        ("image_registry_ref", pa.string()),
        ("accelerator", pa.string()),
        ("gpus", pa.int64()),
        ("cpus", pa.float64()),
        ("memory", pa.string()),
        ("host_cpu_model", pa.string()),
        ("host_cpu_count", pa.int64()),
        ("host_gpu", pa.string()),
        ("params", pa.string()),
        ("hardware", pa.string()),
    ]
)


def _number(value: Any, kind: type) -> Any:
    try:
        return None if value is None or isinstance(value, bool) else kind(value)
    except (TypeError, ValueError):
        return None


def index_row(record: Mapping[str, Any]) -> dict[str, Any]:
    """One run's row of the runs index (params as JSON here; :func:`runs_table` spreads them)."""
    primary = record.get("primary_metric")
    summary = (record.get("metrics_summary") or {}).get(primary or "", {}) or {}
    image = record.get("image") or {}
    target = record.get("hardware") or {}
    host = record.get("host") or {}
    gpus = host.get("gpus") or []
    params = record.get("params") or {}
    # the per-seed score is what `expect` compares across seeds: the final value or the mean of the last N
    last_n = _number(record.get("summary_last_n"), int)
    final = (record.get("expect") or {}).get("statistic") == "final" or summary.get("mean_last_n") is None
    env = next((params[key] for key in ENV_PARAMS if params.get(key) is not None), None)
    return {
        "run_id": record["run_id"],
        "name": record.get("name"),
        "description": record.get("description"),
        "seed": _number(record.get("seed"), int),
        "smoke": bool(record.get("smoke")),
        "status": record.get("status"),
        "primary_metric": primary,
        "primary_last": _number(summary.get("last"), float),
        "primary_max": _number(summary.get("max"), float),
        "primary_mean_last_n": _number(summary.get("mean_last_n"), float),
        "score": _number(summary.get("last" if final else "mean_last_n"), float),
        "score_statistic": "final" if final else f"mean of last {last_n or 'N'}",
        "env": None if env is None else str(env),
        "budget": json.dumps(record["budget"], sort_keys=True, default=str) if record.get("budget") else None,
        "reproduces": record.get("reproduces"),
        "reproduction_verdict": record.get("reproduction_verdict"),
        "runtime": record.get("runtime"),
        "started_at": record.get("started_at"),
        "duration_s": _number(record.get("duration_s"), float),
        "image_id": image.get("id"),
        "image_registry_ref": image.get("registry_ref"),
        "accelerator": target.get("accelerator"),
        "gpus": _number(target.get("gpus"), int),
        "cpus": _number(target.get("cpus"), float),
        "memory": None if target.get("memory") is None else str(target.get("memory")),
        "host_cpu_model": host.get("cpu_model"),
        "host_cpu_count": _number(host.get("cpu_count"), int),
        "host_gpu": ", ".join(str(g.get("name", g)) if isinstance(g, dict) else str(g) for g in gpus) or None,
        "params": json.dumps(record.get("params") or {}, sort_keys=True, default=str),
        "hardware": json.dumps(
            {"target": record.get("hardware"), "host": record.get("host")}, sort_keys=True, default=str
        ),
    }


def _param_type(values: list[Any]) -> pa.DataType:
    present = [v for v in values if v is not None]
    if present and all(isinstance(v, bool) for v in present):
        return pa.bool_()
    if present and all(isinstance(v, int) and not isinstance(v, bool) for v in present):
        return pa.int64()
    if present and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in present):
        return pa.float64()
    return pa.string()


def _param_cell(value: Any, kind: pa.DataType) -> Any:
    if value is None:
        return None
    if kind == pa.string():
        return value if isinstance(value, str) else json.dumps(value, sort_keys=True, default=str)
    if kind == pa.float64():
        return float(value)
    return value


def runs_table(rows: list[dict[str, Any]]) -> pa.Table:
    """The runs index as a table: the base columns, then one ``param_<name>`` column per param
    any run has (typed by its values: bool, integer, float, else text)."""
    params = [json.loads(row.get("params") or "{}") for row in rows]
    names = sorted({name for p in params for name in p})
    fields = list(BASE_COLUMNS)
    columns: dict[str, list[Any]] = {f.name: [row.get(f.name) for row in rows] for f in BASE_COLUMNS}
    for name in names:
        values = [p.get(name) for p in params]
        kind = _param_type(values)
        fields.append(pa.field(PARAM_PREFIX + name, kind))
        columns[PARAM_PREFIX + name] = [_param_cell(v, kind) for v in values]
    schema = pa.schema(fields)
    return pa.table({f.name: pa.array(columns[f.name], f.type) for f in schema}, schema=schema)


def runs_index(
    existing: list[dict[str, Any]], records: Sequence[Mapping[str, Any]]
) -> tuple[bytes, list[dict[str, Any]]]:
    """``runs.parquet`` bytes after adding ``records`` to the rows already on the Hub (a run published
    again replaces its row); also the rows, oldest first."""
    new_ids = {r["run_id"] for r in records}
    kept = [
        {k: v for k, v in row.items() if not k.startswith(PARAM_PREFIX)}
        for row in existing
        if row.get("run_id") not in new_ids
    ]
    rows = kept + [index_row(r) for r in records]
    rows.sort(key=lambda row: (row.get("started_at") or "", row["run_id"]))
    buffer = io.BytesIO()
    pq.write_table(runs_table(rows), buffer)
    return buffer.getvalue(), rows


# -- card ----------------------------------------------------------------------------------------


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value).replace("|", "\\|").replace("\n", " ")


def _varying_params(rows: list[dict[str, Any]]) -> list[str]:
    params = [json.loads(row.get("params") or "{}") for row in rows]
    names = sorted({n for p in params for n in p})
    return [n for n in names if len({json.dumps(p.get(n), sort_keys=True) for p in params}) > 1]


def _budget(row: Mapping[str, Any]) -> dict[str, Any]:
    """A row's budget; a row read back from the Hub may hold anything there, so {} unless a mapping."""
    try:
        budget = json.loads(row.get("budget") or "{}")
    except (TypeError, ValueError):
        return {}
    return budget if isinstance(budget, dict) else {}


def _budget_text(row: Mapping[str, Any]) -> str:
    return " ".join(f"{key}={value}" for key, value in _budget(row).items())


def _summary_lines(rows: list[dict[str, Any]], varying: list[str]) -> list[str]:
    """``## Results across seeds``: per manifest, env, budget and varying params, the mean ± sd of
    the per-seed score over its completed seeds (smoke runs and reproductions left out)."""
    budget_keys = {key for row in rows for key in _budget(row)}
    others = [n for n in varying if n not in ENV_PARAMS and n not in budget_keys]  # env, budget: own columns
    groups: dict[tuple[str, str, str, str], list[dict[str, Any]]] = {}
    for row in rows:
        if row.get("smoke") or row.get("reproduces") or row.get("status") != "completed":
            continue
        params = json.loads(row.get("params") or "{}")
        shown = json.dumps({n: params.get(n) for n in others}, sort_keys=True, default=str)
        key = (str(row.get("name")), str(row.get("env") or ""), _budget_text(row), shown)
        groups.setdefault(key, []).append(row)
    if not groups:
        return []
    header = ["manifest", "env", "budget", *others, "metric", "per seed", "mean ± sd", "seeds"]
    lines = ["## Results across seeds", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for (name, env, budget, shown), members in sorted(groups.items()):
        scores = [float(r["score"]) for r in members if r.get("score") is not None]
        if not scores:
            continue
        mean = statistics.fmean(scores)
        spread = f" ± {statistics.stdev(scores):.4g}" if len(scores) > 1 else " (one seed: no sd)"
        params = json.loads(shown)
        lines.append(
            "| "
            + " | ".join(
                [
                    _cell(name),
                    _cell(env),
                    _cell(budget),
                    *(_cell(params.get(n)) for n in others),
                    _cell(members[0].get("primary_metric")),
                    _cell(members[0].get("score_statistic")),
                    f"{mean:.6g}{spread}",
                    str(len(scores)),
                ]
            )
            + " |"
        )
    return [
        *lines,
        "",
        "sd is the sample standard deviation across seeds (not a standard error); each seed's score is the "
        "statistic named under *per seed*. Smoke runs and reproductions are left out.",
        "",
    ]


def card_text(
    repo: str,
    rows: list[dict[str, Any]],
    has_system: bool,
    figure: str | None,
    license: str | None = None,
    pretty_name: str | None = None,
    total: int | None = None,
) -> str:
    """README.md of a results repo: YAML metadata (a default config, license, pretty name, tags)
    and a page that says what was run, shows the curves and the runs, and how to reproduce them.
    ``rows`` are the newest runs of the index; ``total`` counts all of them (default: len(rows))."""
    from huggingface_hub import DatasetCard, DatasetCardData

    names = sorted({str(row.get("name")) for row in rows})
    configs = [
        {"config_name": "runs", "data_files": "runs.parquet", "default": True},
        {"config_name": "metrics", "data_files": "runs/*/metrics.parquet"},
    ]
    if has_system:
        configs.append({"config_name": "system", "data_files": "runs/*/system.parquet"})
    data = DatasetCardData(
        license=license or DEFAULT_LICENSE,
        pretty_name=pretty_name or f"{', '.join(names)}: experiment runs",
        tags=["harness", "reproducibility", *sorted({n for n in names if n})[:5]],
        configs=configs,
    )
    descriptions = {}
    for row in rows:
        if row.get("description") and row.get("name") not in descriptions:
            descriptions[row["name"]] = " ".join(str(row["description"]).split())
    lines = [f"# {data.pretty_name}", ""]
    lines += [
        f"Run records published with harness, a containerised reproducibility harness: {total or len(rows)} run(s)"
        + (f" (the newest {len(rows)} listed here; `runs.parquet` has them all)" if total and total > len(rows) else "")
        + f" of {len(names)} manifest(s). Each run folder under `runs/` holds the resolved manifest, the lockfile, "
        "the image build context, logs, metrics and a `record.json` with the sha256 of every file, so the run "
        "can be rebuilt and re-run without the original project.",
        "",
    ]
    for name in names:
        if name in descriptions:
            lines += [f"**{name}**: {descriptions[name]}", ""]
    if figure:
        lines += [
            "## Learning curves",
            "",
            f"![learning curves]({figure})",
            "",
            "Each manifest's primary metric (rolling mean over 10 points); smoke runs left out, reproductions drawn "
            "as their own curve.",
            "",
        ]
    varying = _varying_params(rows)
    reproductions: dict[str, list[str]] = {}
    for row in rows:
        if row.get("reproduces"):
            reproductions.setdefault(row["reproduces"], []).append(f"{row.get('reproduction_verdict') or 'unknown'}")
    header = [
        "run",
        "manifest",
        "seed",
        *varying,
        "status",
        "smoke",
        "primary metric",
        "score",
        "reproduces",
        "verdict",
        "reproduced as",
    ]
    lines += _summary_lines(rows, varying)
    lines += ["## Runs", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        params = json.loads(row.get("params") or "{}")
        cells = [
            f"`{row['run_id']}`",
            _cell(row.get("name")),
            _cell(row.get("seed")),
            *(_cell(params.get(n)) for n in varying),
            _cell(row.get("status")),
            "yes" if row.get("smoke") else "",
            _cell(row.get("primary_metric")),
            _cell(row.get("score") if row.get("score") is not None else row.get("primary_last")),
            f"`{row['reproduces']}`" if row.get("reproduces") else "",
            _cell(row.get("reproduction_verdict")),
            ", ".join(reproductions.get(row["run_id"], [])),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    example = next(
        (r["run_id"] for r in reversed(rows) if not r.get("reproduces")), rows[-1]["run_id"] if rows else "<run_id>"
    )
    lines += [
        "",
        "`runs.parquet` (the default config) has one row per run, every param as its own `param_<name>` column, "
        "the hardware target and host as columns, a `smoke` flag, and for reproductions the run they reproduce "
        "and their verdict (`identical`, `consistent`, `diverged` or `inconclusive`).",
        "",
        "## Load the data",
        "",
        "```python",
        "from datasets import load_dataset",
        f'runs = load_dataset("{repo}", split="train")                # one row per run (default config)',
        f'metrics = load_dataset("{repo}", "metrics", split="train")  # run_id, name, step, value, wall_time',
        "```",
        "",
        "## Pull and reproduce a run",
        "",
        "```",
        "pip install harness-repro",
        f"harness pull {repo}                      # every run, each file checked against its record's sha256",
        f"harness reproduce {repo}/{example}",
        "```",
        "",
        "`reproduce` pulls the run, rebuilds its image from the published context and lockfile, re-runs the",
        "published seeds of its configuration with the same params in the sandbox (`--seeds N|auto` and",
        "`--new-seeds` choose others) and prints whether the result is `identical`, `consistent` (equivalent",
        "within the manifest's `expect` margin), `diverged` or `inconclusive` (with the seeds that would settle",
        "it); `--publish` adds the reproduction runs to this repo.",
        "",
    ]
    pushed = [row for row in rows if row.get("image_registry_ref")]
    if pushed:
        lines += [
            "Runs whose image was pushed to a registry are re-run with that exact image, pulled by digest",
            "(`harness reproduce --rebuild` builds it from the recipe instead):",
            "",
            *(f"- `{row['run_id']}`: `{row['image_registry_ref']}`" for row in pushed),
            "",
        ]
    card = DatasetCard(f"---\n{data.to_yaml()}\n---\n\n" + "\n".join(lines))
    return str(card)


def figure_sources(records: Iterable[Mapping[str, Any]], store_dir: Any) -> dict[str, Path]:
    """Run folders with a metrics table, by run id, for the runs being published."""
    found = {}
    for record in records:
        folder = store_dir(record["run_id"])
        if (folder / "metrics.parquet").is_file():
            found[record["run_id"]] = folder
    return found
