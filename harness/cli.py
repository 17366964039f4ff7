"""The ``harness`` command line: thin Click code over the modules.

Commands are imported lazily (``harness/commands/<area>.py``) so that ``harness run`` does not
pay for the analysis or Hub imports.
"""

from __future__ import annotations

import gc
import importlib
import sys

import click

from harness import __version__

# command name -> (module under harness.commands, attribute)
COMMANDS: dict[str, tuple[str, str]] = {
    "validate": ("core", "validate"),
    "schema": ("core", "schema"),
    "lock": ("core", "lock"),
    "image": ("core", "image"),
    "build": ("core", "build"),
    "run": ("core", "run"),
    "ls": ("core", "ls"),
    "show": ("core", "show"),
    "recover": ("core", "recover"),
    "doctor": ("core", "doctor"),
    "verify": ("verify", "verify"),
    "init": ("init", "init"),
    "status": ("sweeps", "status"),
    "publish": ("hub", "publish"),
    "pull": ("hub", "pull"),
    "reproduce": ("hub", "reproduce"),
    "import": ("imports", "import_cmd"),
    "push": ("push", "push"),
    "compare": ("analysis", "compare"),
    "plot": ("analysis", "plot"),
    "thc": ("analysis", "thc"),
    "diff": ("diff", "diff"),
    "export": ("export", "export"),
    "gc": ("gc", "gc"),
    "logs": ("logs", "logs"),
}


class LazyGroup(click.Group):
    """A group that imports a command's module only when that command is used."""

    def list_commands(self, ctx: click.Context) -> list[str]:  # noqa: ARG002 — Click's signature
        return sorted(COMMANDS)

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:  # noqa: ARG002 — Click's signature
        if name not in COMMANDS:
            return None
        module_name, attribute = COMMANDS[name]
        try:
            module = importlib.import_module(f"harness.commands.{module_name}")
        except ModuleNotFoundError as exc:
            if exc.name == f"harness.commands.{module_name}":
                return None
            raise
        # what is imported by now lives until exit: the collector need not walk it again
        gc.freeze()
        return getattr(module, attribute, None)


@click.group(
    cls=LazyGroup,
    epilog="\b\nExamples:\n  harness run manifests/dqn-cartpole.yaml\n  harness ls\n"
    '  harness show <run id prefix>\n  eval "$(_HARNESS_COMPLETE=bash_source harness)"   # Tab completes run ids',
)
# The distribution is harness-repro (PyPI's "harness" is another project); the version is the
# package's own, so a source checkout on PYTHONPATH reports it too.
@click.version_option(version=__version__, package_name="harness-repro", prog_name="harness")
def cli() -> None:
    """harness: pin, run, record, publish and reproduce ML experiments."""


def main() -> None:
    """Console entry point: bad input becomes one line on stderr and exit status 2; a stop signal
    (SIGINT, SIGTERM, SIGHUP) stops what runs, and the exit status is 128 + its number."""
    from harness.runtime import signals

    signals.install()
    try:
        _main()
    except SystemExit as exc:
        stopped_by = signals.exit_status()
        if stopped_by is not None and exc.code not in (None, 0):
            sys.exit(stopped_by)
        raise


def _main() -> None:
    from harness.errors import HarnessError
    from harness.util.terminal import quiet_hub_progress

    quiet_hub_progress()
    try:
        # with standalone_mode=False, click returns (not raises) the code of a click.exceptions.Exit
        code = cli.main(
            standalone_mode=False, prog_name="harness"
        )  # usage and completion say harness, also under `python -m`
        if isinstance(code, int) and code != 0:
            sys.exit(code)
    except HarnessError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(exc.exit_code)
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        sys.exit(130)
    except click.ClickException as exc:
        exc.show()
        sys.exit(2 if exc.exit_code in (1, 2) else exc.exit_code)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
