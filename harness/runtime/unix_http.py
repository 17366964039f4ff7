"""``http.client`` over a unix socket, for the engine's streaming answers (logs, image copies).

Kept apart from ``harness.runtime.engine_api``: http.client brings ssl and email (about 0.1 s of
imports), which a run's plain request/answer calls do not need.
"""

from __future__ import annotations

import http.client
import socket


class UnixConnection(http.client.HTTPConnection):
    """An HTTP/1.1 connection to the server listening on the unix socket ``path``."""

    def __init__(self, path: str, timeout: float | None):
        super().__init__("localhost", timeout=timeout)
        self.path = path

    def connect(self) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(self.timeout)
        self.sock.connect(self.path)
