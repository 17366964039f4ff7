"""``harness export SELECTION --tensorboard DIR``: the selected runs as TensorBoard event files."""

from __future__ import annotations

from pathlib import Path

import click

from harness.commands.options import json_option
from harness.commands.output import emit_json, examples
from harness.commands.runids import complete_run_ids


@click.command(
    epilog=examples(
        "harness export dqn-cartpole --tensorboard tb/ && tensorboard --logdir tb/",
        "harness export dqn-sweep learning_rate=2.5e-4 --tensorboard tb/ --no-system",
        "harness export dqn-cartpole-3f2a --tensorboard tb/ --json",
    )
)
@click.argument("selection", nargs=-1, required=True, shell_complete=complete_run_ids)
@click.option(
    "--tensorboard",
    "tensorboard_dir",
    required=True,
    type=click.Path(path_type=Path, file_okay=False),
    help="Folder for the event files: one subfolder per run.",
)
@click.option(
    "--system/--no-system",
    default=True,
    show_default=True,
    help="Also export the system metrics (under system/, step = seconds since the first sample).",
)
@json_option
def export(selection: tuple[str, ...], tensorboard_dir: Path, system: bool, as_json: bool) -> None:
    """Write the selected runs' metrics as TensorBoard event files (one subfolder per run).

    SELECTION is what compare and plot take: manifest names, run ids (or unique prefixes),
    param=value, status=, tag=, seed=, hub:org/name.
    """
    from harness.analysis.selection import select_runs
    from harness.commands.runids import expand_selection
    from harness.store.export import export_tensorboard
    from harness.store.local import LocalStore

    store = LocalStore()
    runs = select_runs(store, expand_selection(store, selection))
    done = export_tensorboard(store, runs.column("run_id").to_pylist(), tensorboard_dir, system=system)
    if as_json:
        emit_json(
            {
                "tensorboard_dir": str(tensorboard_dir),
                "runs": [
                    {"run_id": e.run_id, "folder": str(e.folder), "scalars": e.scalars, "tags": e.tags} for e in done
                ],
            }
        )
        return
    for e in done:
        click.echo(f"{e.run_id}: {e.scalars} scalars, {e.tags} tags -> {e.folder}")
    click.echo(f"tensorboard --logdir {tensorboard_dir}")
