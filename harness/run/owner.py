"""Whether the harness process that owns a running record still lives: a run whose owner died on
this host never ends by itself (``harness recover`` marks it, ``harness logs -f`` stops following)."""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping
from typing import Any


def alive(pid: Any) -> bool:
    """Whether ``pid`` (as a record holds it: any JSON value) names a process of this host."""
    if not isinstance(pid, int) or isinstance(pid, bool) or not 0 < pid < 2**31:
        return False
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, OverflowError):
        return False
    except PermissionError:
        return True  # someone else's process: alive
    return True


def orphaned(record: Mapping[str, Any], hostname: str | None = None) -> bool:
    """A running record of this host whose owner process is gone (another host's run, under Slurm,
    is never orphaned from here)."""
    owner = record.get("owner")
    owner = owner if isinstance(owner, dict) else {}
    return (
        record.get("status") == "running"
        and owner.get("hostname") == (hostname or socket.gethostname())
        and not alive(owner.get("pid"))
    )
