"""A hostile workload for tests/test_hostile.py: run inside the sandbox, it plants in $HARNESS_OUT
what an attacker would leave for the harness on the host to read. Standard library only.

usage: hostile.py ATTACK TARGET   (TARGET: a host path the sandbox cannot see, e.g. a secret file)
"""

import json
import os
import struct
import sys
import time

OUT = os.environ["HARNESS_OUT"]
TB = os.path.join(OUT, "tb")


def log(name, value, step):
    with open(os.path.join(OUT, "metrics.jsonl"), "a") as handle:
        handle.write(json.dumps({"name": name, "step": step, "value": value, "wall_time": time.time()}) + "\n")


def _crc32c_table():
    table = []
    for byte in range(256):
        crc = byte
        for _ in range(8):
            crc = (crc >> 1) ^ 0x82F63B78 if crc & 1 else crc >> 1
        table.append(crc)
    return table


_TABLE = _crc32c_table()


def masked_crc32c(data):
    crc = 0xFFFFFFFF
    for byte in data:
        crc = _TABLE[(crc ^ byte) & 0xFF] ^ (crc >> 8)
    crc ^= 0xFFFFFFFF
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def link_external(target):
    os.symlink(target, os.path.join(OUT, "metrics.external.jsonl"))


def link_track(target):
    os.symlink(target, os.path.join(OUT, "metrics.jsonl"))


def link_tb(target):
    os.symlink(os.path.dirname(target), TB)  # the folder of the host secret as the TensorBoard folder
    os.makedirs(os.path.join(OUT, "tb2"))
    os.symlink(target, os.path.join(OUT, "tb2", "events.out.tfevents.1.host"))


def tb_root(target):
    os.symlink("/", TB)


def dev_zero(target):
    os.symlink("/dev/zero", os.path.join(OUT, "metrics.external.jsonl"))
    os.makedirs(TB)
    os.symlink("/dev/zero", os.path.join(TB, "events.out.tfevents.0.zero"))
    os.symlink("/dev/zero", os.path.join(OUT, "zero.bin"))


def fifo(target):
    os.mkfifo(os.path.join(OUT, "metrics.external.jsonl"))
    os.mkfifo(os.path.join(OUT, "metrics.jsonl"))
    os.makedirs(TB)
    os.mkfifo(os.path.join(TB, "events.out.tfevents.0.fifo"))
    os.mkfifo(os.path.join(OUT, "artifact.bin"))


def deep(target):
    os.chdir(OUT)
    for _ in range(1200):
        os.mkdir("d")
        os.chdir("d")
    with open("bottom.txt", "w") as handle:
        handle.write("bottom\n")
    os.chdir(OUT)
    os.makedirs(TB)
    os.chdir(TB)
    for _ in range(200):
        os.mkdir("t")
        os.chdir("t")
    os.symlink(target, "events.out.tfevents.deep")


def bad_lines(target):
    lines = [
        '{"name": "ok/a", "step": 1, "value": 1.5}',
        f'{{"name": "bad/step", "step": {2**63}, "value": 1}}',
        f'{{"name": "bad/negstep", "step": {-(2**63) - 1}, "value": 1}}',
        "[" * 200000 + "]" * 200000,
        '{"name": "bad/nested", "value": 1, "x": ' + "[" * 5000 + "]" * 5000 + "}",
        '{"name": "\\ud800", "step": 2, "value": 1}',
        '{"name": "bad/inf", "step": 3, "value": 1e999}',
        '{"name": "bad/str", "step": 3, "value": "abc"}',
        '{"name": "bad/list", "step": 3, "value": [1]}',
        '{"name": "ok/bool", "step": 4, "value": true}',
        '{"name": "ok/nan", "step": 5, "value": NaN}',
        '{"name": "bad\\u0007ctl", "step": 6, "value": 1}',
        '{"name": "bad/wall", "step": 7, "value": 1, "wall_time": "x"}',
        '{"name": "ok/a", "step": 2, "value": 2.5}',
    ]
    with open(os.path.join(OUT, "metrics.external.jsonl"), "wb") as handle:
        for line in lines:
            handle.write(line.encode() + b"\n")
        handle.write(b'{"name": "\xff\xfe", "step": 8, "value": 1}\n')  # not UTF-8
        handle.write(b'{"name": "' + b"n" * (50 << 20) + b'", "step": 9, "value": 1}\n')  # a 50 MB name
        handle.write(b'{"name": "' + b"m" * 1000 + b'", "step": 9, "value": 1}\n')  # a long name, one line
        handle.write(b'{"name": "ok/a", "step": 3, "value": 3.5}\n')
        for index in range(12_000):  # more distinct names than a run may have
            handle.write(b'{"name": "many/%d", "step": 0, "value": 1}\n' % index)


def bad_names(target):
    with open(os.path.join(OUT.encode(), b"bad-\xff-name.txt"), "w") as handle:
        handle.write("not utf-8 name\n")
    with open(os.path.join(OUT, "back\\slash.txt"), "w") as handle:
        handle.write("backslash\n")
    with open(os.path.join(OUT, "ctl\x01name.txt"), "w") as handle:
        handle.write("control\n")
    log("ok/a", 1.0, 0)


def flip(target):
    """Swap a metrics file between a regular file and a link to the target while the harness polls."""
    path = os.path.join(OUT, "metrics.external.jsonl")
    tmp = os.path.join(OUT, "tmp.jsonl")
    end = time.time() + 4
    step = 0
    while time.time() < end:
        with open(tmp, "w") as handle:
            handle.write(json.dumps({"name": "flip/a", "step": step, "value": 1.0}) + "\n")
        os.replace(tmp, path)
        time.sleep(0.05)
        os.symlink(target, tmp)
        os.replace(tmp, path)
        time.sleep(0.05)
        step += 1


def tb_huge_record(target):
    """An event file whose first record claims 2^62 bytes (with a valid header checksum)."""
    os.makedirs(TB)
    header = struct.pack("<Q", 1 << 62)
    with open(os.path.join(TB, "events.out.tfevents.1.huge"), "wb") as handle:
        handle.write(header + struct.pack("<I", masked_crc32c(header)) + b"\0" * 64)
    header = struct.pack("<Q", 24 << 20)  # too large a record, but complete: skipped unread
    with open(os.path.join(TB, "events.out.tfevents.2.large"), "wb") as handle:
        handle.write(header + struct.pack("<I", masked_crc32c(header)) + b"\0" * (24 << 20) + b"\0" * 4)
        handle.write(os.urandom(1 << 16))  # then garbage


def escapes(target):
    """Terminal escape sequences and forged lines in the output, then a failure (so `show` prints the log)."""
    sys.stdout.write("\x1b[2J\x1b[H\x1b]0;owned\x07fake\rerror: forged harness line\n")
    sys.stdout.write("\x1b[31mred\x1b[0m \x9b31m c1 csi\n")
    sys.stdout.flush()
    log("probe/value", 1.0, 0)
    sys.exit(3)


def many_files(target):
    for index in range(3000):
        with open(os.path.join(OUT, f"f{index}"), "w") as handle:
            handle.write("x")


ATTACKS = {
    name: value
    for name, value in globals().items()
    if callable(value) and not name.startswith("_") and name not in {"log", "masked_crc32c"}
}

if __name__ == "__main__":
    attack, target = sys.argv[1], sys.argv[2]
    ATTACKS[attack](target)
    track_file = os.path.join(OUT, "metrics.jsonl")
    if not os.path.lexists(track_file) or (os.path.isfile(track_file) and not os.path.islink(track_file)):
        log("probe/value", 1.0, 0)
    print(f"planted {attack}")
