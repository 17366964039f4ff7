"""``harness diff A B``: two runs side by side, differences first."""

from __future__ import annotations

import click

from harness.commands.options import console, json_option
from harness.commands.output import emit_json, examples
from harness.commands.runids import RUN_ID


@click.command(
    epilog=examples(
        "harness diff dqn-cartpole-3f2a dqn-cartpole-3f2a1b0c9d8e-2",
        "harness diff A B --all            # also the fields that are the same",
        "harness diff A B --json | jq '.differences[] | select(.section == \"params\")'",
    )
)
@click.argument("run_a", type=RUN_ID)
@click.argument("run_b", type=RUN_ID)
@click.option("--all", "show_all", is_flag=True, help="Also list the fields both runs share.")
@json_option
def diff(run_a: str, run_b: str, show_all: bool, as_json: bool) -> None:
    """Manifest, params, lockfile, packages, image, hardware and metric summaries of two runs,
    side by side, differences first."""
    from rich import box
    from rich.table import Table

    from harness.analysis.rundiff import cell, diff_runs
    from harness.store.local import LocalStore

    result = diff_runs(LocalStore(), run_a, run_b)
    if as_json:
        emit_json(result.to_dict())
        return
    out = console()
    rows = result.rows if show_all else result.differences
    table = Table(box=box.SIMPLE_HEAD, pad_edge=False, title=f"{result.a}  vs  {result.b}", title_justify="left")
    table.add_column("section", no_wrap=True)
    table.add_column("field", overflow="fold")
    table.add_column("A", overflow="fold")
    table.add_column("B", overflow="fold")
    for row in rows:
        style = None if row.same else "bold"
        table.add_row(row.section, row.field, cell(row.a), cell(row.b), style=style)
    if rows:
        out.print(table)
    sections = sorted({row.section for row in result.differences})
    click.echo(
        f"{len(result.differences)} field(s) differ ({', '.join(sections) or 'none'}); "
        f"{len(result.same)} the same{'' if show_all else ' (--all shows them)'}"
    )
