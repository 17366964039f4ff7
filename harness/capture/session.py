"""Capture around one running job: metric ingestion every second (tables refreshed every 10 s) and
the host-side system sampler."""

from __future__ import annotations

import threading
import time
from typing import TYPE_CHECKING, Any

from harness.store.layout import RunLayout

if TYPE_CHECKING:
    from harness.manifest import MetricsSpec

PARQUET_REFRESH_S = 10.0


class CaptureSession:
    """Metric ingestion and system sampling around a running job: started once the job is, finished
    once it has ended (the tables are then on disk)."""

    def __init__(self, run_id: str, layout: RunLayout, metrics: MetricsSpec):
        from harness.capture.metrics import MetricsIngester

        self.layout = layout
        self.ingester = MetricsIngester(
            run_id, layout.out, layout.tensorboard(metrics.tensorboard), spool_dir=layout.metrics_spool
        )
        self.interval = float(metrics.system_interval)
        self.summary_last_n = metrics.summary_last_n
        self.run_id = run_id
        self.sampler: Any = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="harness-ingest", daemon=True)

    def start(self, container: Any = None, pid: int | None = None, gpus: int = 0) -> None:
        """Sample the container (or the process tree of ``pid``) and ingest metrics until ``finish``."""
        from harness.capture.system import SystemSampler

        self.sampler = SystemSampler(
            self.run_id,
            self.layout.system_jsonl,
            interval=self.interval,
            container=container,
            pid=pid,
            gpu_indices=list(range(gpus)) if gpus else None,
        )
        self.sampler.start()
        self._thread.start()

    def _loop(self) -> None:
        last_write = time.monotonic()
        while not self._stop.wait(1.0):
            try:
                if (
                    self.ingester.poll()
                    and time.monotonic() - last_write > PARQUET_REFRESH_S
                    and self.ingester.live_refresh_allowed()
                ):
                    self.ingester.write_parquet(self.layout.metrics_parquet, self.summary_last_n)
                    last_write = time.monotonic()
            except Exception:  # a live refresh is best effort: finish() reads everything again
                continue

    def finish(self) -> None:
        """Stop sampling, read what is left and write both tables."""
        from harness.capture.system import system_jsonl_to_parquet

        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5)
        if self.sampler is not None:
            self.sampler.stop()
        self.ingester.poll(final=True)
        self.ingester.write_parquet(self.layout.metrics_parquet, self.summary_last_n)
        self.ingester.close()
        system_jsonl_to_parquet(self.run_id, self.layout.system_jsonl, self.layout.system_parquet)

    def summary(self) -> dict[str, dict[str, Any]]:
        """Per-metric summaries for the record (call after ``finish``)."""
        return self.ingester.summary(self.summary_last_n)
