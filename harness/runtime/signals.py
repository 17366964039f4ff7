"""The signals that stop the harness: SIGINT (Ctrl-C), SIGTERM (``kill``, Slurm's ``scancel``) and
SIGHUP (a closed terminal or SSH session). In the main thread each becomes a ``KeyboardInterrupt``,
so a run stops its job and seals its record and a sweep stops all of its runs; the process then
exits with 128 + the signal's number, as a shell reports a process the signal ended."""

from __future__ import annotations

import signal
import threading
from types import FrameType
from typing import Any


class Terminated(KeyboardInterrupt):
    """SIGTERM: the run was cancelled from outside (Slurm's scancel, `kill`)."""


class HungUp(KeyboardInterrupt):
    """SIGHUP: the terminal or SSH session that started the harness went away."""


STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
_received: list[int] = []


def _handler(signum: int, frame: FrameType | None) -> None:
    _received.append(signum)
    if signum == signal.SIGTERM:
        raise Terminated
    if signum == signal.SIGHUP:
        raise HungUp
    raise KeyboardInterrupt


def install() -> dict[int, Any]:
    """Turn the stop signals into interrupts (main thread only; a signal the parent ignored, as
    ``nohup`` does with SIGHUP, stays ignored). Returns the handlers replaced, for :func:`restore`."""
    if threading.current_thread() is not threading.main_thread():
        return {}
    previous: dict[int, Any] = {}
    for signum in STOP_SIGNALS:
        current = signal.getsignal(signum)
        if current is signal.SIG_IGN or current is _handler:
            continue
        previous[signum] = signal.signal(signum, _handler)
    return previous


def restore(previous: dict[int, Any]) -> None:
    """Put back the handlers that :func:`install` replaced."""
    for signum, handler in previous.items():
        signal.signal(signum, handler)


def stop_reason(exc: BaseException) -> str:
    """The run status for a run stopped by ``exc``: ``cancelled`` for SIGTERM, else ``interrupted``."""
    return "cancelled" if isinstance(exc, Terminated) else "interrupted"


def exit_status() -> int | None:
    """128 + the number of the first stop signal this process received, or None."""
    return 128 + _received[0] if _received else None
