"""Terminal or log: a spinner for a person at a terminal, plain lines for CI and logs.

In CI (``CI`` or ``GITHUB_ACTIONS`` set, or stdout not a terminal) nothing is redrawn: every
update is one line, so a build's log reads the same in a GitHub Actions log as in a file.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Protocol

FALSE_WORDS = {"", "0", "false", "no", "off"}


def ci_environment() -> bool:
    """Whether ``CI`` or ``GITHUB_ACTIONS`` says this is a CI job (``CI=false`` does not)."""
    return any(os.environ.get(name, "").strip().lower() not in FALSE_WORDS for name in ("CI", "GITHUB_ACTIONS"))


def ci_mode() -> bool:
    """True when output must be plain lines: in CI (``CI``/``GITHUB_ACTIONS``) or without a TTY."""
    if ci_environment():
        return True
    try:
        return not sys.stdout.isatty()
    except (AttributeError, ValueError):
        return True


def quiet_hub_progress() -> None:
    """Turn off huggingface_hub's progress bars (they redraw) when in CI mode.

    Set before huggingface_hub is imported (it reads the variable at import), and switched off
    in an already imported client too."""
    if not ci_mode():
        return
    os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] = "1"
    if "huggingface_hub" in sys.modules:
        from huggingface_hub.utils import disable_progress_bars

        disable_progress_bars()


class Status(Protocol):
    """What a command shows while it waits: ``update`` a line, ``stop`` before other output."""

    def update(self, line: str) -> None: ...

    def stop(self) -> None: ...


class PlainStatus:
    """Each distinct update as its own line on stdout (or stderr), flushed (no redraws)."""

    def __init__(self, prefix: str = "", stderr: bool = False) -> None:
        self.prefix = prefix
        self.stream = sys.stderr if stderr else sys.stdout
        self._last = ""

    def update(self, line: str) -> None:
        """Print ``line`` unless it repeats the previous one."""
        line = line.rstrip()
        if line and line != self._last:
            self._last = line
            print(f"{self.prefix}{line}", file=self.stream, flush=True)

    def stop(self) -> None:
        """Nothing to clear."""


class _RichStatus:
    """rich's spinner with the updates dimmed after a fixed prefix."""

    def __init__(self, rich_status, prefix: str) -> None:  # type: ignore[no-untyped-def]
        self._status = rich_status
        self.prefix = prefix

    def update(self, line: str) -> None:
        from rich.markup import escape

        self._status.update(f"{escape(self.prefix)}[dim]{escape(line[:110])}")

    def stop(self) -> None:
        self._status.stop()


@contextmanager
def status(title: str, prefix: str = "", stderr: bool = False) -> Iterator[Status]:
    """Show ``title`` while the block runs; updates are ``prefix`` + a line. ``stderr`` keeps
    stdout for a result (``--json``).

    A spinner at a terminal; in CI mode the title and each update are plain lines."""
    if ci_mode():
        plain = PlainStatus(prefix, stderr)
        print(title, file=plain.stream, flush=True)
        yield plain
        return
    from rich.console import Console

    with Console(highlight=False, stderr=stderr).status(title) as rich_status:
        yield _RichStatus(rich_status, prefix)
