"""Log algorithm metrics from inside a run: ``track.log({"charts/episodic_return": r}, step=t)``.

Standard library only: the harness mounts its own package read-only into every container and
puts it on ``PYTHONPATH``, so this module must import without anything from the image.

Each call only converts the values to float and appends them to an in-memory queue; a daemon
thread writes the queued points to ``$HARNESS_OUT/metrics.jsonl`` at least once a second, and
``atexit`` writes the rest. One line per point::

    {"name": "charts/episodic_return", "step": 1000, "value": 21.0, "wall_time": 1767225600.25}

Without ``$HARNESS_OUT`` (a script run outside the harness) the first call warns once on stderr
and every call is a no-op, so the same workload runs unchanged anywhere.
"""

from __future__ import annotations

import atexit
import collections
import itertools
import json
import os
import threading
import time
import warnings

__all__ = ["FLUSH_INTERVAL_S", "flush", "log"]

FLUSH_INTERVAL_S = 1.0
METRICS_FILE = "metrics.jsonl"
# completed by the name's cached '{"name": ..., "step": ' prefix
LINE = '%s%d, "value": %r, "wall_time": %r}\n'
# repr() spellings of non-finite values -> the ones Python's json reads back. A name cannot
# produce these: inside its JSON string every quote is escaped.
NON_FINITE = (
    ('"value": nan,', '"value": NaN,'),
    ('"value": inf,', '"value": Infinity,'),
    ('"value": -inf,', '"value": -Infinity,'),
)


class _Tracker:
    """The process-wide writer behind :func:`log` and :func:`flush`."""

    def __init__(self) -> None:
        # deque.append / popleft are atomic, so ``log`` needs no lock against the flush thread.
        self._queue: collections.deque[tuple[str, int, float, float]] = collections.deque()
        self._next_step: dict[str, int] = {}
        self._line_prefixes: dict[str, str] = {}
        self._write_lock = threading.Lock()
        self._fd: int | None = None
        self._path: str | None = None
        self._enabled: bool | None = None  # None: not decided yet (read $HARNESS_OUT lazily)
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()

    def _enable(self) -> bool:
        out = os.environ.get("HARNESS_OUT")
        if not out:
            warnings.warn(
                "harness.track: HARNESS_OUT is not set (not running under the harness); metrics are not recorded",
                RuntimeWarning,
                stacklevel=3,  # the caller of log()
            )
            self._enabled = False
            return False
        self._path = os.path.join(out, METRICS_FILE)
        self._enabled = True
        self._thread = threading.Thread(target=self._flush_loop, name="harness-track", daemon=True)
        self._thread.start()
        return True

    def log(self, metrics: dict[str, float], step: int | None = None) -> None:
        """Record one value per metric name at ``step``.

        ``step`` defaults to a per-name counter (0, 1, 2, … for each name). Values must convert
        to float (Python numbers, numpy scalars, one-element tensors).
        """
        if not self._enabled and (self._enabled is False or not self._enable()):
            return
        prefixes = self._line_prefixes
        now = time.time()
        append = self._queue.append
        if step is not None:
            step = int(step)
        for name, value in metrics.items():
            prefix = prefixes.get(name) or self._register_name(name)
            if step is None:
                point_step = self._next_step.get(name, 0)
                self._next_step[name] = point_step + 1
            else:
                point_step = step
            # float() at call time: a bad value fails here, and no tensor is kept alive.
            append((prefix, point_step, float(value), now))

    def _register_name(self, name: object) -> str:
        if type(name) is not str:
            raise TypeError(f"harness.track: metric name must be a str, got {name!r}")
        prefix = self._line_prefixes[name] = '{"name": ' + json.dumps(name) + ', "step": '
        return prefix

    def _flush_loop(self) -> None:
        while not self._stop.wait(FLUSH_INTERVAL_S):
            self.flush()

    @staticmethod
    def _encode(points: list[tuple[str, int, float, float]]) -> bytes:
        # One %-format over all points runs the per-line work in C (this is most of the cost).
        text = (LINE * len(points)) % tuple(itertools.chain.from_iterable(points))
        for python, json_spelling in NON_FINITE:
            text = text.replace(python, json_spelling)
        return text.encode()

    def flush(self) -> None:
        """Write every queued point to ``$HARNESS_OUT/metrics.jsonl`` now."""
        if not self._enabled:
            return
        with self._write_lock:
            queue = self._queue
            count = len(queue)
            if not count:
                return
            popleft = queue.popleft
            data = self._encode([popleft() for _ in range(count)])
            if self._fd is None:
                assert self._path is not None
                self._fd = os.open(self._path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
            # One O_APPEND write per flush keeps lines whole when several processes log.
            while data:
                written = os.write(self._fd, data)
                data = data[written:]

    def _after_fork_in_child(self) -> None:
        # The parent still owns (and will write) the queued points: drop our copies.
        self._queue.clear()
        self._write_lock = threading.Lock()
        self._stop = threading.Event()
        if self._enabled:
            self._thread = threading.Thread(target=self._flush_loop, name="harness-track", daemon=True)
            self._thread.start()


_tracker = _Tracker()
atexit.register(_tracker.flush)
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_tracker._after_fork_in_child)


# The bound methods themselves: one Python call less per log() than a wrapper function.
log = _tracker.log
flush = _tracker.flush
