"""Verification of a submission for CI: what to check, what to run, how GitHub shows it.

``harness verify`` uses this module: problems become GitHub workflow annotations
(``::error file=…,line=…::…``) that GitHub pins to the file and line in a pull request, and the
smoke runs become a table in the job summary (``$GITHUB_STEP_SUMMARY``).
"""

from __future__ import annotations

import os
import re
import subprocess
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# A change under one of these can break any manifest: all CPU manifests are smoke-run.
SHARED_INPUTS = ("harness/", "pyproject.toml", "scripts/", ".github/workflows/verify-manifests.yml")
PROBLEM = re.compile(r"^(?P<file>[^\s:][^:\n]*?)(?::(?P<line>\d+))?: (?P<message>.+)$", re.DOTALL)


@dataclass(frozen=True)
class Annotation:
    """One problem, pinned to a file and line of the repository when known."""

    message: str
    file: str | None = None
    line: int | None = None
    level: str = "error"

    def workflow_command(self) -> str:
        """The GitHub Actions workflow command that shows this annotation."""
        properties = []
        if self.file:
            properties.append(f"file={_escape_property(self.file)}")
            if self.line:
                properties.append(f"line={self.line}")
        head = f"::{self.level} {','.join(properties)}" if properties else f"::{self.level}"
        return f"{head}::{_escape_data(self.message)}"

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}: " if self.file and self.line else f"{self.file}: " if self.file else ""
        return f"{where}{self.message}"


def _escape_data(text: str) -> str:
    return text.replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A")


def _escape_property(text: str) -> str:
    return _escape_data(text).replace(":", "%3A").replace(",", "%2C")


def github_actions() -> bool:
    """True inside a GitHub Actions job (annotations and the job summary are understood there)."""
    return os.environ.get("GITHUB_ACTIONS", "").lower() == "true"


def annotation_for(problem: str, root: Path) -> Annotation:
    """An annotation from a ``file:line: field: message`` problem (file made relative to ``root``)."""
    match = PROBLEM.match(problem.strip())
    if not match:
        return Annotation(problem.strip())
    file = match.group("file")
    try:
        file = Path(file).resolve().relative_to(root.resolve()).as_posix()
    except ValueError:
        pass
    line = int(match.group("line")) if match.group("line") else None
    return Annotation(match.group("message"), file, line)


def changed_files(base: str, root: Path) -> list[str]:
    """Files that differ between ``base`` and HEAD (three-dot: since they forked), repo-relative."""
    result = subprocess.run(["git", "diff", "--name-only", f"{base}...HEAD"], cwd=root, capture_output=True, text=True)
    if result.returncode != 0:
        from harness.errors import HarnessError

        tail = (result.stderr.strip().splitlines() or ["(no output)"])[-1]
        raise HarnessError(f"git diff {base}...HEAD: {tail} (give the pull request's base, e.g. origin/main, or `all`)")
    return [line for line in result.stdout.splitlines() if line]


@dataclass(frozen=True)
class Chosen:
    """A manifest to smoke-run, and why."""

    path: Path
    reason: str
    gpus: int
    first_seed: int = 0


def choose_manifests(manifests: Iterable[Any], changed: list[str] | None) -> list[Chosen]:
    """The manifests a change touches: directly, through their image recipe or lockfile, or all
    of them when the harness itself changed (``changed`` None: all).

    ``manifests`` are loaded manifests (``path``, ``manifest``, ``root``)."""
    chosen: list[Chosen] = []
    shared = (
        None
        if changed is None
        else next((c for c in changed if c.startswith(SHARED_INPUTS) or c in SHARED_INPUTS), None)
    )
    for loaded in manifests:
        relative = Path(loaded.path).resolve().relative_to(Path(loaded.root).resolve()).as_posix()
        image = loaded.manifest.image
        gpus = loaded.manifest.hardware.gpus
        reason = ""
        if changed is None:
            reason = "all manifests asked for"
        elif relative in changed:
            reason = "manifest changed"
        elif image.lockfile and image.lockfile in changed:
            reason = f"{image.lockfile} changed"
        elif image.build and any(c.startswith(image.build.rstrip("/") + "/") for c in changed):
            reason = f"{image.build.rstrip('/')}/ changed"
        elif shared is not None:
            reason = f"{shared} changed (the harness itself: every manifest)"
        if reason:
            chosen.append(Chosen(Path(relative), reason, gpus, loaded.manifest.seeds[0]))
    return chosen


@dataclass
class RunRow:
    """One line of the job summary: a smoke run (or a manifest that was skipped or failed)."""

    manifest: str
    run_id: str
    status: str
    metric: str = ""
    duration_s: float | None = None


def row_from_record(manifest: str, record: Mapping[str, Any]) -> RunRow:
    """A summary row from a run record: status, the primary metric's last value, the duration."""
    primary = record.get("primary_metric") or ""
    summary = (record.get("metrics_summary") or {}).get(primary) or {}
    last = summary.get("last")
    metric = (
        f"{primary} = {last:.4g}" if isinstance(last, (int, float)) else (f"{primary}: no value" if primary else "")
    )
    return RunRow(manifest, record.get("run_id", ""), record.get("status", "unknown"), metric, record.get("duration_s"))


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def summary_markdown(rows: list[RunRow], problems: list[Annotation], headline: str) -> str:
    """The job summary: a headline, the problems, and a table of the smoke runs."""
    lines = [f"### harness verify: {headline}", ""]
    if problems:
        lines += ["| file | line | problem |", "|---|---|---|"]
        lines += [f"| `{_cell(p.file or '-')}` | {p.line or ''} | {_cell(p.message)} |" for p in problems]
        lines.append("")
    if rows:
        lines += ["| manifest | run id | status | primary metric | duration |", "|---|---|---|---|---|"]
        for row in rows:
            duration = f"{row.duration_s:.1f} s" if isinstance(row.duration_s, (int, float)) else "-"
            lines.append(
                f"| `{_cell(row.manifest)}` | `{_cell(row.run_id) or '-'}` | {_cell(row.status)} | "
                f"{_cell(row.metric) or '-'} | {duration} |"
            )
        lines.append("")
    elif not problems:
        lines += ["No manifest touched by this change needs a run.", ""]
    return "\n".join(lines) + "\n"


def write_step_summary(markdown: str) -> Path | None:
    """Append ``markdown`` to the job summary file when GitHub Actions gives one."""
    target = os.environ.get("GITHUB_STEP_SUMMARY")
    if not target:
        return None
    with open(target, "a", encoding="utf-8") as handle:
        handle.write(markdown)
    return Path(target)
