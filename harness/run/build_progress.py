"""A progress line every few seconds while an image builds, so that a long build is never silent.

It is fed the builder's own log lines (``build_image``'s ``log``) and says which step the build is
on: Docker's ``Step 3/7 : RUN ...``, buildah's ``[1/2] STEP 3/5: RUN ...``, or else the last thing the
harness said it was doing (downloading the locked packages, copying the base).
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable

from harness.run.progress import clock

# buildah numbers a multi-stage build's steps per stage: "[1/2] STEP 3/5: RUN ..."
_STEP = re.compile(r"^(?:\[(\d+)/(\d+)\]\s+)?(?:Step|STEP)\s+(\d+)/(\d+)\s*:\s*(.*)$")
MAX_SHOWN = 60  # characters of a step's instruction on the line


class BuildHeartbeat:
    """Echoes ``building image: step 3/7 (RUN pip install ...), 0:42 elapsed`` every ``interval``
    seconds from :meth:`start` until :meth:`stop`; :meth:`log` takes the builder's lines."""

    def __init__(self, echo: Callable[[str], None], interval: float = 5.0, what: str = "image"):
        self.echo = echo
        self.interval = interval
        self.what = what
        self.phase = "starting"
        self.started = time.monotonic()
        self._stopped = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def log(self, line: str) -> None:
        """One line of the builder's output: a step changes the phase, so does a harness note."""
        text = " ".join(line.split())
        if not text:
            return
        match = _STEP.match(text)
        with self._lock:
            if match:
                instruction = match.group(5)
                if len(instruction) > MAX_SHOWN:
                    instruction = instruction[: MAX_SHOWN - 3] + "..."
                stage = f" of stage {match.group(1)}/{match.group(2)}" if match.group(1) else ""
                self.phase = f"step {match.group(3)}/{match.group(4)}{stage} ({instruction})"
            elif (
                not self.phase.startswith("step ")
                and not text.startswith(("--->", "Removing intermediate", "Successfully"))
                and len(text) < 200
            ):
                self.phase = text  # before the first step: what the harness is preparing

    def line(self) -> str:
        """Where the build is now."""
        with self._lock:
            phase = self.phase
        return f"building {self.what}: {phase}, {clock(time.monotonic() - self.started)} elapsed"

    def _loop(self) -> None:
        while not self._stopped.wait(self.interval):
            self.echo(self.line())

    def start(self) -> BuildHeartbeat:
        """Start echoing (a daemon thread: a crashed caller never hangs on it)."""
        self.started = time.monotonic()
        self._thread = threading.Thread(target=self._loop, name="harness-build-progress", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop echoing; safe to call more than once."""
        self._stopped.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=5)
