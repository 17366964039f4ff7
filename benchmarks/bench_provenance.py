"""Signed provenance of a 3-run group: signing and verifying alone, and publish/pull with and
without ``--sign``/``--trust`` against the project's test Hub (same run, interleaved, median of N).

    python benchmarks/bench_provenance.py [--repeats 5]

Needs openssl (for the key, as a user makes it); no Docker engine.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

RUNS = ["group-s1", "group-s2", "group-s3"]


def median_ms(samples: list[float]) -> str:
    """The median of ``samples`` (seconds) in milliseconds, with the spread."""
    return (
        f"{statistics.median(samples) * 1000:8.1f} ms  (min {min(samples) * 1000:.1f}, max {max(samples) * 1000:.1f})"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    os.environ.update(
        HF_HUB_DISABLE_XET="1", HF_HUB_DISABLE_PROGRESS_BARS="1", HF_TOKEN="hf_benchTOKEN0123456789abcdef"
    )

    from harness.store import provenance
    from harness.store.hub import publish, pull
    from harness.store.local import LocalStore
    from tests.hubserver import HubServer
    from tests.hubserver.runs import make_run

    with tempfile.TemporaryDirectory(prefix="bench-provenance-") as scratch:
        root = Path(scratch)
        key, public = root / "key.pem", root / "key.pub"
        subprocess.run(["openssl", "genpkey", "-algorithm", "ed25519", "-out", str(key)], check=True)
        subprocess.run(["openssl", "pkey", "-in", str(key), "-pubout", "-out", str(public)], check=True)
        store = LocalStore(root / "origin")
        records = [make_run(store, run_id, seed=seed) for seed, run_id in enumerate(RUNS, 1)]
        timings: dict[str, list[float]] = {
            k: [] for k in ("sign", "verify", "publish", "publish --sign", "pull", "pull --trust")
        }
        with HubServer(root / "hub", token=os.environ["HF_TOKEN"]) as hub:
            for attempt in range(args.repeats):
                started = time.perf_counter()
                signer = provenance.load_signer(key)
                signed = [{**r, "provenance": provenance.sign_record(r, signer)} for r in records]
                timings["sign"].append(time.perf_counter() - started)
                started = time.perf_counter()
                trusted = provenance.load_public_key(public)
                for record in signed:
                    provenance.verify_record(record, trusted)
                timings["verify"].append(time.perf_counter() - started)
                for label, sign in (("publish", None), ("publish --sign", key)):
                    started = time.perf_counter()
                    publish(
                        RUNS,
                        f"bench/{label.replace(' --', '-')}-{attempt}",
                        endpoint=hub.url,
                        store=store,
                        sign_key=sign,
                    )
                    timings[label].append(time.perf_counter() - started)
                for label, repo, trust in (
                    ("pull", f"bench/publish-{attempt}", None),
                    ("pull --trust", f"bench/publish-sign-{attempt}", public),
                ):
                    started = time.perf_counter()
                    pull(repo, endpoint=hub.url, store=LocalStore(root / f"{label}-{attempt}"), trust_key=trust)
                    timings[label].append(time.perf_counter() - started)
    print(f"3-run group, median of {args.repeats}:")
    for label, samples in timings.items():
        print(f"  {label:<15} {median_ms(samples)}")


if __name__ == "__main__":
    main()
