"""``harness status``: how far a sweep has got, live, from the store and the scheduler."""

from __future__ import annotations

import json
import time
from typing import Any

import click

from harness.commands.options import json_option
from harness.commands.output import emit_json, examples


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    seconds = int(seconds)
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


def progress_table(progress: dict[str, Any]) -> Any:
    """A rich table of one sweep's progress, with the runs that did not complete listed below."""
    from rich.console import Group
    from rich.progress_bar import ProgressBar
    from rich.table import Table

    table = Table(title=f"sweep {progress['sweep_id']} ({progress['backend']})", title_justify="left")
    for column in ("total", "queued", "running", "done", "failed", "elapsed", "ETA"):
        table.add_column(column, justify="right", no_wrap=True, min_width=len(column))
    table.add_column("progress", width=16)
    ended = progress["done"] + progress["failed"]
    table.add_row(
        str(progress["total"]),
        str(progress["queued"]),
        f"[cyan]{progress['running']}",
        f"[green]{progress['done']}",
        f"[red]{progress['failed']}" if progress["failed"] else "0",
        _duration(progress["elapsed_s"]),
        "done" if progress["finished"] else _duration(progress["eta_s"]),
        ProgressBar(total=max(progress["total"], 1), completed=ended, width=16),
    )
    parts: list[Any] = [table]
    bad = [run for run in progress["runs"] if run["state"] not in ("completed", "queued", "running")]
    if bad:
        failed = Table(show_header=True, box=None)
        failed.add_column("run", no_wrap=True)  # a run id is never cut: it is what the user copies
        failed.add_column("state")
        for run in bad[:20]:
            failed.add_row(run["run_id"], f"[red]{run['state']}")
        if len(bad) > 20:
            failed.add_row(f"... and {len(bad) - 20} more", "")
        parts.append(failed)
    if progress["slurm_job_ids"]:
        parts.append(f"Slurm job(s): {', '.join(progress['slurm_job_ids'])}")
    if progress.get("ray_job_ids"):
        parts.append(f"Ray job(s): {', '.join(progress['ray_job_ids'][-4:])}")
    return Group(*parts)


@click.command(epilog=examples("harness status --watch", "harness status dqn-sweep-1a2b --json"))
@click.argument("sweep", required=False)
@json_option
@click.option("--watch", is_flag=True, help="Refresh until every run has ended (Ctrl-C leaves).")
@click.option(
    "--interval",
    type=click.FloatRange(min=0, min_open=True),
    default=2.0,
    show_default=True,
    help="Seconds between refreshes with --watch.",
)
@click.option("--requeue", is_flag=True, help="Slurm: send failed, cancelled and preempted runs back to the queue.")
def status(sweep: str | None, as_json: bool, watch: bool, interval: float, requeue: bool) -> None:
    """Show a sweep's progress (the newest sweep without SWEEP): queued, running, done, failed."""
    from harness.backends import sweep_progress
    from harness.backends.sweeps import list_sweep_ids, load_state
    from harness.errors import HarnessError
    from harness.store.local import LocalStore

    store = LocalStore()
    if sweep is None:
        known = list_sweep_ids(store)
        if not known:
            raise HarnessError(f"{store.root}: no sweeps yet (run a manifest with a sweep or several seeds)")
        sweep = known[0]
    state = load_state(store, sweep)
    if requeue:
        if state.backend != "slurm":
            raise HarnessError("--requeue is for Slurm sweeps; re-run a local sweep with `harness run --retry-failed`")
        from harness.backends.slurm import requeue as requeue_runs

        requeue_runs(state, store, echo=click.echo)
        state = load_state(store, state.sweep_id)
    if as_json and not watch:
        emit_json(sweep_progress(state, store))
        return
    if as_json:
        while True:  # one JSON object per line while it changes, for scripts that follow along
            progress = sweep_progress(state, store)
            click.echo(json.dumps(progress))
            if progress["finished"]:
                return
            time.sleep(interval)
            state = load_state(store, state.sweep_id)
    from rich.console import Console
    from rich.live import Live

    console = Console()
    progress = sweep_progress(state, store)
    if not watch:
        console.print(progress_table(progress))
        return
    from harness.util.terminal import ci_mode

    if ci_mode():  # no redraws in a log: one table each time the counts change
        shown = None
        while True:
            counts = (progress["queued"], progress["running"], progress["done"], progress["failed"])
            if counts != shown:
                console.print(progress_table(progress))
                shown = counts
            if progress["finished"]:
                return
            time.sleep(interval)
            state = load_state(store, state.sweep_id)
            progress = sweep_progress(state, store)
    with Live(progress_table(progress), console=console, refresh_per_second=4) as live:
        while not progress["finished"]:
            time.sleep(interval)
            state = load_state(store, state.sweep_id)
            progress = sweep_progress(state, store)
            live.update(progress_table(progress))
