"""Capture around one running job: metric ingestion every second (tables refreshed every 10 s) and
the host-side system sampler."""

from __future__ import annotations

import threading
import time
from typing import TYPE_CHECKING, Any

from harness.store.layout import RunLayout

if TYPE_CHECKING:
    from harness.loaded_manifest import MetricsView

PARQUET_REFRESH_S = 10.0


class CaptureSession:
    """Metric ingestion and system sampling around a running job: started once the job is, finished
    once it has ended (the tables are then on disk)."""

    def __init__(self, run_id: str, layout: RunLayout, metrics: MetricsView):
        self.layout = layout
        self.tensorboard = layout.tensorboard(metrics.tensorboard)
        self._ingester: Any = None
        self.interval = float(metrics.system_interval)
        self.summary_last_n = metrics.summary_last_n
        self.run_id = run_id
        self.sampler: Any = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="harness-ingest", daemon=True)

    @property
    def ingester(self) -> Any:
        """The run's MetricsIngester, made on first use: its table libraries load once the job has
        started (while the engine starts the container), not before."""
        return self._make_ingester()

    def _make_ingester(self) -> Any:
        if self._ingester is None:
            from harness.capture.metrics import MetricsIngester

            self._ingester = MetricsIngester(
                self.run_id, self.layout.out, self.tensorboard, spool_dir=self.layout.metrics_spool
            )
        return self._ingester

    def start(self, container: Any = None, pid: int | None = None, gpus: int = 0) -> None:
        """Sample the container (or the process tree of ``pid``) and ingest metrics until ``finish``."""
        from harness.capture.system import SystemSampler

        self._make_ingester()  # here, in the caller's thread, before the ingest thread reads it

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
            except Exception:  # noqa: BLE001 — a live refresh is best effort: finish() reads everything again
                continue

    def stop_sampling(self) -> None:
        """Stop the sampler and the ingestion thread (once the job has ended); ``finish`` does it too."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5)
        if self.sampler is not None:
            self.sampler.stop()

    def finish(self) -> None:
        """Stop sampling, read what is left and write both tables."""
        from harness.capture.system import system_jsonl_to_parquet

        self.stop_sampling()
        self.ingester.poll(final=True)
        self.ingester.write_parquet(self.layout.metrics_parquet, self.summary_last_n)
        self.ingester.close()
        system_jsonl_to_parquet(self.run_id, self.layout.system_jsonl, self.layout.system_parquet)

    def summary(self) -> dict[str, dict[str, Any]]:
        """Per-metric summaries for the record (call after ``finish``)."""
        return self.ingester.summary(self.summary_last_n)
