"""``harness logs [-f] RUN``: a run's output and where its metrics are, following a running run."""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import click

from harness.commands.options import json_option
from harness.commands.output import emit_json, examples
from harness.commands.runids import RUN_ID
from harness.errors import HarnessError

READ_LIMIT = 1 << 20  # bytes per read of the log
READS_PER_CALL = 64  # at most 64 MiB per poll: a log that grows faster cannot stall the follower


class _LogTail:
    """New lines of a growing log file, read in bounded pieces (a flood cannot stall the follower)."""

    def __init__(self, path: Path, skip_to_last: int | None):
        self.path = path
        self.offset = 0
        self.partial = b""
        if skip_to_last is not None and path.is_file():
            size = path.stat().st_size
            with open(path, "rb") as handle:
                handle.seek(max(size - READ_LIMIT, 0))
                lines = handle.read(READ_LIMIT).splitlines(keepends=True)
            kept = lines[-skip_to_last:] if skip_to_last else []
            self.offset = size - sum(len(line) for line in kept)

    def lines(self, final: bool = False) -> list[str]:
        """Complete lines written since the last call (with ``final``, also a last line without a newline)."""
        if not self.path.is_file():
            return []
        out: list[str] = []
        with open(self.path, "rb") as handle:
            handle.seek(self.offset)
            for _ in range(READS_PER_CALL):
                data = handle.read(READ_LIMIT)
                self.offset += len(data)
                parts = (self.partial + data).split(b"\n")
                self.partial = parts.pop()
                out += [part.decode("utf-8", errors="replace").rstrip("\r") for part in parts]
                if len(data) < READ_LIMIT:
                    break
        if final and self.partial:
            out.append(self.partial.decode("utf-8", errors="replace").rstrip("\r"))
            self.partial = b""
        return out


@click.command(
    epilog=examples(
        "harness logs dqn-cartpole-3f2a",
        "harness logs -f dqn-cartpole-3f2a            # follow until the run ends",
        "harness logs dqn-cartpole-3f2a --json | jq .progress",
    )
)
@click.argument("run_id", type=RUN_ID)
@click.option("-f", "--follow", is_flag=True, help="Keep printing new output and progress until the run ends.")
@click.option(
    "--tail", "tail_lines", type=click.IntRange(min=0), default=None, help="Start with only the last N lines."
)
@click.option(
    "--interval",
    type=click.FloatRange(min=0.1),
    default=None,
    help="Seconds between progress lines when not on a terminal [default: $HARNESS_PROGRESS_INTERVAL or 10].",
)
@json_option
def logs(run_id: str, follow: bool, tail_lines: int | None, interval: float | None, as_json: bool) -> None:
    """A run's output (logs/output.log) and progress: elapsed time, last step, primary metric, ETA.

    With -f, follows a running run (started here or by another harness process) until it ends.
    """
    from harness.run.owner import orphaned
    from harness.run.progress import ProgressReporter, record_progress
    from harness.store.local import LocalStore

    store = LocalStore()
    record: Mapping[str, Any] = store.load(run_id)
    layout = store.layout(run_id)
    tail = _LogTail(layout.output_log, tail_lines)
    progress = record_progress(layout, record)
    if as_json and not follow:
        snapshot = progress.poll(now=_ended(record))
        emit_json(
            {
                "run_id": run_id,
                "status": record.get("status"),
                "log": tail.lines(final=True),
                "progress": snapshot.as_dict(),
            }
        )
        return
    if as_json:  # one JSON object per line while it runs, for scripts that follow along
        _follow_json(store, run_id, tail, progress, interval)
        return
    for line in tail.lines(final=not _running(record)):
        click.echo(line)
    if not follow or not _running(record):
        click.echo(_final_line(record, progress.poll(now=_ended(record))))
        return
    reporter = ProgressReporter(progress, sys.stdout, interval=interval).start()
    try:
        while True:
            for line in tail.lines():
                reporter.echo(line)
            record = _reload(store, run_id, record)
            if not _running(record):
                break
            if orphaned(record):
                reporter.stop()
                raise HarnessError(
                    f"run {run_id}: the harness process running it has ended; `harness recover` marks it interrupted"
                )
            time.sleep(0.5)
    finally:
        reporter.stop()
    for line in tail.lines(final=True):
        click.echo(line)
    click.echo(_final_line(record, progress.poll(now=_ended(record))))


def _follow_json(store: Any, run_id: str, tail: _LogTail, progress: Any, interval: float | None) -> None:
    from harness.run.progress import plain_interval

    every = interval or plain_interval()
    record: Mapping[str, Any] = store.load(run_id)
    while True:
        record = _reload(store, run_id, record)
        running = _running(record)
        lines = tail.lines(final=not running)
        snapshot = progress.poll(now=None if running else _ended(record))
        click.echo(
            json.dumps(
                {"run_id": run_id, "status": record.get("status"), "log": lines, "progress": snapshot.as_dict()},
                sort_keys=True,
            )
        )
        if not running:
            return
        time.sleep(every)


def _running(record: Mapping[str, Any]) -> bool:
    return record.get("status") == "running"


def _reload(store: Any, run_id: str, previous: Mapping[str, Any]) -> Mapping[str, Any]:
    from harness.errors import StoreError

    try:
        return store.load(run_id)
    except StoreError:
        return previous  # record.json is replaced atomically; a failed read is a race, try again


def _ended(record: Mapping[str, Any]) -> float | None:
    """The time a finished run ended (elapsed stops there); None while it runs."""
    if _running(record) or record.get("duration_s") is None:
        return None
    from harness.run.progress import started_at

    return started_at(record) + float(record["duration_s"])


def _final_line(record: Mapping[str, Any], snapshot: Any) -> str:
    """``<run>: completed in 0:26; step 100,000/100,000 (100%), charts/episodic_return 200``."""
    from harness.run.progress import clock

    duration = f" in {clock(record['duration_s'])}" if record.get("duration_s") is not None else ""
    facts = ", ".join(snapshot.facts()) if snapshot is not None else ""
    return f"{record['run_id']}: {record.get('status')}{duration}" + (f"; {facts}" if facts else "")
