"""Report what the sandbox looks like from inside, and misbehave on request (for tests).

--mode ok        print a JSON report of the sandbox and log a few metrics
--mode fail      exit with status 3 after printing a line
--mode sleep     log one metric per --interval seconds for --seconds seconds
--mode oom       allocate memory until the kernel kills the process
--mode fill      write --megabytes of data into $HARNESS_OUT (for disk-full tests)
--mode pins      list the pinned Hub cache the harness mounted ($HF_HUB_CACHE) into pins.json
"""

import argparse
import json
import os
import socket
import sys
import time

from harness import track


def sandbox_report() -> dict:
    status = dict(line.split(":", 1) for line in open("/proc/self/status") if ":" in line)
    try:
        with open("/probe-write-test", "w"):
            root_writable = True
    except OSError:
        root_writable = False
    interfaces = [line.split(":")[0].strip() for line in open("/proc/net/dev").readlines()[2:]]
    try:
        socket.create_connection(("1.1.1.1", 53), timeout=1).close()
        network = True
    except OSError:
        network = False
    return {
        "uid": os.getuid(), "gid": os.getgid(), "cap_eff": status["CapEff"].strip(),
        "no_new_privs": status.get("NoNewPrivs", "").strip(), "root_writable": root_writable,
        "interfaces": interfaces, "network": network, "seed": os.environ.get("HARNESS_SEED"),
        "run_id": os.environ.get("HARNESS_RUN_ID"), "params": json.loads(os.environ.get("HARNESS_PARAMS", "{}")),
        "out_writable": os.access(os.environ["HARNESS_OUT"], os.W_OK), "argv": sys.argv[1:],
        "env_keys": sorted(os.environ),
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--mode", default="ok")
    parser.add_argument("--seconds", type=float, default=5)
    parser.add_argument("--interval", type=float, default=0.2)
    parser.add_argument("--megabytes", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if args.mode == "ok":
        report = sandbox_report()
        print(json.dumps(report), flush=True)
        with open(os.path.join(os.environ["HARNESS_OUT"], "sandbox.json"), "w") as handle:
            json.dump(report, handle)
        for step in range(5):
            track.log({"probe/value": step * 0.5 + args.seed}, step=step)
    elif args.mode == "fail":
        print("probe: failing on purpose", flush=True)
        sys.exit(3)
    elif args.mode == "sleep":
        step = 0
        deadline = time.time() + args.seconds
        while time.time() < deadline:
            track.log({"probe/tick": step}, step=step)
            step += 1
            time.sleep(args.interval)
    elif args.mode == "oom":
        hog = []
        while True:
            hog.append(bytearray(16 * 2**20))
            time.sleep(0.05)
    elif args.mode == "fill":
        with open(os.path.join(os.environ["HARNESS_OUT"], "fill.bin"), "wb") as handle:
            for _ in range(args.megabytes):
                handle.write(b"\0" * 2**20)
    elif args.mode == "pins":
        cache = os.environ["HF_HUB_CACHE"]
        files = sorted(os.path.relpath(os.path.join(folder, name), cache)
                       for folder, _, names in os.walk(cache) for name in names)
        try:
            open(os.path.join(cache, "write-test"), "w").close()
            cache_writable = True
        except OSError:
            cache_writable = False
        report = {"files": files, "offline": os.environ.get("HF_HUB_OFFLINE"), "cache_writable": cache_writable,
                  "env_keys": sorted(os.environ)}
        with open(os.path.join(os.environ["HARNESS_OUT"], "pins.json"), "w") as handle:
            json.dump(report, handle)
    elif args.mode == "noop":
        pass
    track.flush()


if __name__ == "__main__":
    main()
