"""What a failed job's output says the user must change: a write to the sandbox's read-only file
system is the most common first failure of an unmodified third-party script."""

from __future__ import annotations

import os
import re
from pathlib import Path

from harness.util.safefs import UnsafeFile, open_beneath, printable, read_fd

TAIL_BYTES = 64 << 10  # the end of the log is where the traceback is
READ_ONLY = re.compile(rb"\[Errno 30\] Read-only file system: '([^'\n]{1,400})'|Read-only file system")


def read_only_hint(log_path: Path, workdir: str) -> str:
    """A sentence for a job whose output ends with a write refused by the read-only root file system
    (naming the path when the output does), or "" when it shows none."""
    try:
        fd = open_beneath(log_path.parent, log_path.name)
    except UnsafeFile:
        return ""
    try:
        size = os.fstat(fd).st_size
        tail = read_fd(fd, TAIL_BYTES, log_path.name, offset=max(0, size - TAIL_BYTES))
    except (OSError, UnsafeFile):
        return ""
    finally:
        os.close(fd)
    matches = list(READ_ONLY.finditer(tail))
    if not matches:
        return ""
    named = matches[-1].group(1)
    path = f" ({printable(named.decode(errors='replace'), 200)!r})" if named else ""
    where = (
        f"its working directory is the image's {workdir}, which is read-only: drop the manifest's workdir "
        "(the default is $HARNESS_OUT, writable and kept with the record)"
        if workdir.startswith("/")
        else "the sandbox's root file system is read-only: write under $HARNESS_OUT (the working directory) "
        "or /tmp, or give the path as a relative one"
    )
    return f"the job wrote to a read-only path{path}; {where}"
