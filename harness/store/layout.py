"""The one vocabulary of a run folder: every file name the harness writes or reads in it.

```
<store>/runs/<run_id>/
  record.json          the run record (outside the checksummed files)
  manifest.yaml        the manifest as run
  lockfile.txt         the image's lockfile
  context/             the image recipe (rebuilds the image)
  logs/output.log      the job's stdout and stderr
  out/                 the job's writable folder ($HARNESS_OUT)
    metrics.jsonl            harness.track's points
    metrics.external.jsonl   $HARNESS_METRICS, JSON lines from any program
  metrics.parquet      every algorithm metric (run_id, name, step, value, wall_time)
  system.jsonl         system samples as they are taken
  system.parquet       the same as a table
  .harness-reserve     space held back while the run goes (removed at the end)
  .metrics-spool/      metric rows spilled to disk while the run goes (removed at the end)
```
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

RECORD = "record.json"
MANIFEST = "manifest.yaml"
LOCKFILE = "lockfile.txt"
CONTEXT = "context"
LOGS = "logs"
OUTPUT_LOG = "output.log"
OUT = "out"
TRACK_JSONL = "metrics.jsonl"
EXTERNAL_JSONL = "metrics.external.jsonl"
METRICS_PARQUET = "metrics.parquet"
SYSTEM_JSONL = "system.jsonl"
SYSTEM_PARQUET = "system.parquet"
RESERVE = ".harness-reserve"
METRICS_SPOOL = ".metrics-spool"


@dataclass(frozen=True)
class RunLayout:
    """The paths of one run folder (which need not exist yet)."""

    root: Path

    @property
    def record(self) -> Path:
        return self.root / RECORD

    @property
    def manifest(self) -> Path:
        return self.root / MANIFEST

    @property
    def lockfile(self) -> Path:
        return self.root / LOCKFILE

    @property
    def context(self) -> Path:
        return self.root / CONTEXT

    @property
    def logs(self) -> Path:
        return self.root / LOGS

    @property
    def output_log(self) -> Path:
        return self.root / LOGS / OUTPUT_LOG

    @property
    def out(self) -> Path:
        return self.root / OUT

    @property
    def metrics_parquet(self) -> Path:
        return self.root / METRICS_PARQUET

    @property
    def system_jsonl(self) -> Path:
        return self.root / SYSTEM_JSONL

    @property
    def system_parquet(self) -> Path:
        return self.root / SYSTEM_PARQUET

    @property
    def reserve(self) -> Path:
        return self.root / RESERVE

    @property
    def metrics_spool(self) -> Path:
        return self.root / METRICS_SPOOL

    def tensorboard(self, relative: str | None) -> Path | None:
        """The manifest's TensorBoard folder inside ``out/``, or None when it names none."""
        return self.out / relative if relative else None

    def is_record_temp(self, name: str) -> bool:
        """Whether ``name`` is record.json or an atomic-write temporary of it."""
        return name == RECORD or name.startswith(f".{RECORD}.")
