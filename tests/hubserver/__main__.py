"""``python -m tests.hubserver --root DIR --port PORT [--token T]``: serve the test Hub on 127.0.0.1."""

from __future__ import annotations

import argparse
import signal
import sys
from pathlib import Path

from tests.hubserver.server import HubHTTPServer


def main(argv: list[str] | None = None) -> None:
    """Parse the options, print the URL, serve until interrupted."""
    parser = argparse.ArgumentParser(prog="python -m tests.hubserver", description=__doc__)
    parser.add_argument("--root", type=Path, required=True, help="folder that holds the repositories")
    parser.add_argument("--port", type=int, default=0, help="port on 127.0.0.1 (0: any free port)")
    parser.add_argument("--token", help="the only token allowed to write (default: any token writes)")
    parser.add_argument("--drop-commits", type=int, default=0, help="cut the connection during the next N commits")
    parser.add_argument("--throttle", type=int, default=0, help="move file bodies at most this many bytes a second")
    parser.add_argument("--verbose", action="store_true", help="log every request to stderr")
    args = parser.parse_args(argv)

    httpd = HubHTTPServer(args.root, args.port, args.token, args.verbose)
    httpd.faults.drop_commits = args.drop_commits
    httpd.faults.throttle = args.throttle
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    print(httpd.url, flush=True)
    try:
        httpd.serve_forever()
    except (KeyboardInterrupt, SystemExit):
        pass
    finally:
        httpd.server_close()


if __name__ == "__main__":
    main()
