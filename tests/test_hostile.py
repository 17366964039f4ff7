"""Safe to reproduce anything: hostile workloads and hostile published runs cannot reach the host.

Each attack runs for real: a workload in the noop image (``tests/hostile_workload.py``) plants
links, FIFOs, deep trees and bad metric lines in its output; hostile repos are served by the
project's Hub server. The host holds a secret file with a random marker; every case asserts that
the marker appears nowhere the harness writes (store, records, tables, logs, its own output, the
Hub), that the run reaches a final status, and that ``harness ls / show / recover`` still work.
"""

from __future__ import annotations

import http.server
import json
import os
import secrets
import shutil
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from harness.errors import EngineError, HubError
from harness.store.local import LocalStore
from harness.store.record import FINAL_STATUSES
from tests.conftest import REPO, noop_project, run_cli
from tests.hubserver import RepoRef
from tests.hubserver.runs import make_run

MARKER = f"HOSTILE-MARKER-{secrets.token_hex(12)}"
HUB_REPO = "lab/hostile"
HANG = 300  # seconds: what a hostile input must never make the harness take (a loaded CI machine included)

MANIFEST = """apiVersion: harness/v1
name: hostile
image: {build: images/noop, lockfile: lockfiles/noop.txt}
command: [python, /workload/hostile.py, "{attack}", "{target}"]
params: {attack: bad_names, target: /nonexistent}
seeds: [0]
hardware: {accelerator: cpu, gpus: 0, cpus: 1, memory: 256MiB, timeout: 3m}
metrics: {primary: probe/value, tensorboard: tb}
expect: {deterministic: true}
"""


# -- fixtures -------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def host_secret(tmp_path_factory) -> Path:
    """A host file the sandbox cannot see: what an attacker wants the harness to leak."""
    folder = tmp_path_factory.mktemp("host-secret")
    secret = folder / "secret.jsonl"
    lines = [json.dumps({"name": MARKER, "step": step, "value": 1.0}) for step in range(3)]
    secret.write_text("\n".join(lines + [MARKER, f"password={MARKER}"]) + "\n")
    (folder / "events.out.tfevents.0.secret").write_text(MARKER + "\n")
    return secret


@pytest.fixture(scope="session")
def hostile_project(tmp_path_factory, noop_image) -> Path:
    """A copy of the noop project whose image also holds the hostile workload (built once)."""
    from harness.images.build import build_image

    root = noop_project(tmp_path_factory.mktemp("hostile-project"))
    shutil.copy(REPO / "tests" / "hostile_workload.py", root / "images" / "noop" / "workload" / "hostile.py")
    (root / "manifests" / "hostile.yaml").write_text(MANIFEST)
    build_image(root / "images" / "noop", root / "lockfiles" / "noop.txt")
    return root


# -- helpers --------------------------------------------------------------------------------------


def attack(
    project: Path, name: str, home: Path, target: Path, timeout: float = 600
) -> tuple[dict, subprocess.CompletedProcess]:
    """Run one attack through the real CLI into the store ``home``; (its record, the process)."""
    started = time.monotonic()
    proc = run_cli(
        "run",
        "manifests/hostile.yaml",
        "--param",
        f"attack={name}",
        "--param",
        f"target={target}",
        cwd=project,
        env={"HARNESS_HOME": str(home)},
        timeout=timeout,
    )
    assert time.monotonic() - started < timeout
    runs = [p for p in (home / "runs").iterdir() if not p.name.startswith(".")]
    assert len(runs) == 1, (proc.stdout, proc.stderr)
    record = json.loads((runs[0] / "record.json").read_text())
    assert record["status"] in FINAL_STATUSES, record
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    return record, proc


def regular_files(root: Path):
    """Every regular file under ``root``, found iteratively without following links."""
    stack = [root]
    while stack:
        folder = stack.pop()
        try:
            entries = list(os.scandir(folder))
        except OSError:
            continue
        for entry in entries:
            mode = entry.stat(follow_symlinks=False).st_mode
            if stat.S_ISDIR(mode):
                stack.append(Path(entry.path))
            elif stat.S_ISREG(mode):
                yield Path(entry.path)


def assert_nowhere(*roots: Path, texts: tuple[str, ...] = ()) -> None:
    """The marker is in no file under ``roots`` (parquet included) and in none of ``texts``."""
    needle = MARKER.encode()
    for text in texts:
        assert MARKER not in text
    for root in roots:
        for path in regular_files(root):
            with open(path, "rb") as handle:
                tail = b""
                while block := handle.read(1 << 20):
                    assert needle not in tail + block, f"the host secret leaked into {path}"
                    tail = block[-len(needle) :]


def assert_store_usable(home: Path, run_id: str | None = None) -> list[str]:
    """``harness ls``, ``show`` and ``recover`` finish, exit 0 and print no secret; their output."""
    env = {"HARNESS_HOME": str(home)}
    outputs = []
    for args in (
        ["ls"],
        ["recover"],
        ["ls", "--json"],
        *([["show", run_id], ["show", run_id, "--json"]] if run_id else []),
    ):
        proc = run_cli(*args, env=env, timeout=120)
        assert proc.returncode == 0, (args, proc.stdout[-2000:], proc.stderr[-2000:])
        assert "Traceback" not in proc.stderr
        outputs.append(proc.stdout + proc.stderr)
    assert_nowhere(texts=tuple(outputs))
    return outputs


def remove_deep(path: Path) -> None:
    """Remove a very deep chain of folders bottom-up (shutil.rmtree recurses once per level)."""
    chain = [path]
    while True:
        children = [Path(e.path) for e in os.scandir(chain[-1]) if e.is_dir(follow_symlinks=False)]
        if not children:
            break
        chain.append(children[0])
    for folder in reversed(chain):
        shutil.rmtree(folder)


def skipped_reasons(record: dict) -> str:
    return json.dumps((record.get("skipped_files") or []) + (record.get("metrics_skipped") or []))


# -- workload attacks on the real engine ----------------------------------------------------------


@pytest.mark.parametrize("name", ["link_external", "link_track", "link_tb", "flip"])
def test_links_to_a_host_file_are_never_followed(name, hostile_project, host_secret, store_home):
    record, proc = attack(hostile_project, name, store_home, host_secret)

    assert record["status"] == "completed", record["detail"]
    assert "symlink" in skipped_reasons(record) or name == "flip"
    assert MARKER not in json.dumps(record["metrics_summary"])
    assert_nowhere(store_home, texts=(proc.stdout, proc.stderr))
    assert_store_usable(store_home, record["run_id"])


def test_a_linked_metrics_file_is_not_published_or_pulled(hostile_project, host_secret, store_home, hub, tmp_path):
    record, _ = attack(hostile_project, "link_external", store_home, host_secret)
    published = run_cli("publish", record["run_id"], "--repo", HUB_REPO, env={"HARNESS_HOME": str(store_home)})
    assert published.returncode == 0, published.stderr
    pulled = run_cli("pull", HUB_REPO, env={"HARNESS_HOME": str(tmp_path / "elsewhere")})
    assert pulled.returncode == 0, pulled.stderr
    tree = hub.storage.commit(RepoRef("dataset", HUB_REPO), hub.storage.resolve(RepoRef("dataset", HUB_REPO), "main"))[
        "tree"
    ]
    assert f"runs/{record['run_id']}/out/metrics.external.jsonl" not in tree
    assert_nowhere(tmp_path / "hub", tmp_path / "elsewhere", texts=(published.stdout, published.stderr, pulled.stdout))


def test_tensorboard_folder_linked_to_root(hostile_project, host_secret, store_home):
    started = time.monotonic()
    record, proc = attack(hostile_project, "tb_root", store_home, host_secret)

    assert record["status"] == "completed", record["detail"]
    assert time.monotonic() - started < HANG  # ended: no hang on the hostile input
    assert "tb" in skipped_reasons(record) and "symlink" in skipped_reasons(record)
    assert_nowhere(store_home, texts=(proc.stdout, proc.stderr))
    assert_store_usable(store_home, record["run_id"])


def test_links_to_dev_zero_are_not_read(hostile_project, host_secret, store_home):
    record, _proc = attack(hostile_project, "dev_zero", store_home, host_secret, timeout=180)

    assert record["status"] == "completed", record["detail"]
    assert "/dev/zero" in skipped_reasons(record)
    assert "zero.bin" not in record["files"] and "out/zero.bin" not in record["files"]
    assert_store_usable(store_home, record["run_id"])


def test_fifos_named_like_metrics_files_do_not_hang(hostile_project, host_secret, store_home):
    record, _proc = attack(hostile_project, "fifo", store_home, host_secret, timeout=180)

    assert record["status"] == "completed", record["detail"]
    reasons = skipped_reasons(record)
    assert "fifo" in reasons and "metrics.external.jsonl" in reasons
    assert_store_usable(store_home, record["run_id"])


def test_a_1200_deep_tree_is_walked_with_a_limit(hostile_project, host_secret, store_home):
    record, proc = attack(hostile_project, "deep", store_home, host_secret, timeout=240)

    assert record["status"] == "completed", record["detail"]
    assert "deeper than" in skipped_reasons(record)
    assert_nowhere(store_home, texts=(proc.stdout, proc.stderr))
    assert_store_usable(store_home, record["run_id"])
    assert LocalStore(store_home).verify(record["run_id"]) == []
    remove_deep(store_home / "runs" / record["run_id"] / "out" / "d")


def test_bad_metric_lines_are_counted_and_skipped(hostile_project, host_secret, store_home):
    record, _proc = attack(hostile_project, "bad_lines", store_home, host_secret, timeout=300)

    assert record["status"] == "completed", record["detail"]
    rejected = record["metrics_rejected"]
    for reason in (
        "step_out_of_range",
        "too_deeply_nested",
        "name_not_utf8",
        "line_too_long",
        "name_too_long",
        "value_not_finite",
        "bad_value",
        "bad_name",
        "too_many_names",
        "bad_wall_time",
        "invalid_json",
    ):
        assert rejected.get(reason, 0) >= 1, (reason, rejected)
    assert 1_900 <= rejected["too_many_names"] <= 2_100
    table = pq.read_table(store_home / "runs" / record["run_id"] / "metrics.parquet")
    rows = {
        (n, s): v
        for n, s, v in zip(
            table.column("name").to_pylist(),
            table.column("step").to_pylist(),
            table.column("value").to_pylist(),
            strict=True,
        )
    }
    assert [rows[("ok/a", step)] for step in (1, 2, 3)] == [1.5, 2.5, 3.5]
    assert rows[("ok/bool", 4)] == 1.0 and rows[("ok/nan", 5)] != rows[("ok/nan", 5)]
    assert max(len(name) for name in table.column("name").to_pylist()) <= 256
    assert (store_home / "runs" / record["run_id"] / "record.json").stat().st_size < 8 << 20
    shown = assert_store_usable(store_home, record["run_id"])
    assert "rejected metrics" in shown[3] and "step_out_of_range" in shown[3]


def test_bad_file_names_are_left_out_and_the_run_still_publishes(
    hostile_project, host_secret, store_home, hub, tmp_path
):
    record, _ = attack(hostile_project, "bad_names", store_home, host_secret)

    assert record["status"] == "completed", record["detail"]
    reasons = skipped_reasons(record)
    assert "not valid UTF-8" in reasons and "backslash" in reasons and "control character" in reasons
    assert not any("\\" in path or "slash" in path for path in record["files"])
    env = {"HARNESS_HOME": str(store_home)}
    assert run_cli("publish", record["run_id"], "--repo", HUB_REPO, env=env).returncode == 0
    pulled = run_cli("pull", HUB_REPO, env={"HARNESS_HOME": str(tmp_path / "elsewhere")})
    assert pulled.returncode == 0, pulled.stderr


def test_a_huge_tensorboard_record_is_skipped_unread(hostile_project, host_secret, store_home):
    record, _ = attack(hostile_project, "tb_huge_record", store_home, host_secret, timeout=180)

    assert record["status"] == "completed", record["detail"]
    assert record["metrics_rejected"].get("tb_record_too_large") == 1
    assert "events.out.tfevents.1.huge" in skipped_reasons(record)
    assert_store_usable(store_home, record["run_id"])


def test_escape_sequences_in_output_do_not_reach_the_terminal(hostile_project, host_secret, store_home):
    record, proc = attack(hostile_project, "escapes", store_home, host_secret)

    assert record["status"] == "failed"
    assert "forged harness line" in proc.stdout  # echoed, but escaped
    shown = assert_store_usable(store_home, record["run_id"])
    for text in (proc.stdout, proc.stderr, shown[3]):
        assert "\x1b" not in text and "\x9b" not in text and "\r" not in text
    assert "forged harness line" in shown[3]


# -- the store: any record, any run folder --------------------------------------------------------


def test_ls_show_recover_survive_any_record(store_home, host_secret, tmp_path):
    import socket as _socket

    runs = store_home / "runs"
    for name in ("fifo", "link", "huge", "nested", "list", "types", "binary", "running", "noid"):
        (runs / name).mkdir(parents=True)
    os.mkfifo(runs / "fifo" / "record.json")
    os.symlink(host_secret, runs / "link" / "record.json")
    with open(runs / "huge" / "record.json", "wb") as handle:
        handle.write(b'{"run_id": "huge", "x": "' + b"a" * (40 << 20) + b'"}')
    (runs / "nested" / "record.json").write_text("[" * 100_000 + "]" * 100_000)
    (runs / "list" / "record.json").write_text("[1, 2]")
    (runs / "binary" / "record.json").write_bytes(b"\xff\xfe\x00garbage")
    (runs / "noid" / "record.json").write_text('{"status": "completed"}')
    (runs / "types" / "record.json").write_text(
        json.dumps(
            {
                "run_id": "types",
                "status": ["completed"],
                "started_at": 12,
                "duration_s": "long",
                "seed": {"a": 1},
                "metrics_summary": "nope",
                "primary_metric": 3,
                "image": "x",
                "host": [1],
                "gpu": "none",
                "files": [],
                "environment": 5,
                "detail": "\x1b[31mred",
                "exit_code": "x",
                "skipped_files": "x",
                "metrics_rejected": [1],
            }
        )
    )
    # a run whose harness died, with a hostile output folder: recover must seal it
    out = runs / "running" / "out"
    (out / "tb").mkdir(parents=True)
    os.mkfifo(out / "metrics.jsonl")
    os.symlink(host_secret, out / "metrics.external.jsonl")
    os.symlink("/", out / "tb" / "root")
    (out / "tb" / "events.out.tfevents.1.x").write_bytes(b"\xff" * 100)
    (runs / "running" / "record.json").write_text(
        json.dumps(
            {
                "run_id": "running",
                "status": "running",
                "runtime": "process",
                "started_at": "2026-01-01T00:00:00Z",
                "owner": {"pid": 2**62, "hostname": _socket.gethostname()},
                "files": {},
            }
        )
    )

    started = time.monotonic()
    outputs = assert_store_usable(store_home, "types")
    assert time.monotonic() - started < HANG  # ended: no hang on the hostile input
    recovered = json.loads((runs / "running" / "record.json").read_text())
    assert recovered["status"] in FINAL_STATUSES
    assert "symlink" in skipped_reasons(recovered)
    listed = {r["run_id"] for r in json.loads(outputs[2])}
    assert {"types", "running"} <= listed and not listed & {"fifo", "link", "huge", "nested", "list", "binary"}
    for bad in ("fifo", "link", "huge", "nested", "list", "binary"):
        proc = run_cli("show", bad, env={"HARNESS_HOME": str(store_home)}, timeout=60)
        assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert_nowhere(store_home)


def test_an_internal_error_while_finishing_is_a_final_status(noop_image, store_home, monkeypatch, tmp_path):
    import harness.capture.system as system
    from harness.manifest import load_manifest
    from harness.run.plan import expand
    from harness.run.runner import execute
    from tests.conftest import noop_variant

    def broken(*args, **kwargs):
        raise RuntimeError("simulated failure while converting system metrics")

    monkeypatch.setattr(system, "system_jsonl_to_parquet", broken)
    spec = expand(load_manifest(Path(noop_variant(tmp_path, "seconds: 5", "seconds: 0"))))[0]
    record = execute(spec, LocalStore(store_home))
    assert record["status"] == "error"
    assert "simulated failure" in record["detail"] and "completed" in record["detail"]
    assert LocalStore(store_home).load(record["run_id"])["status"] == "error"
    assert_store_usable(store_home, record["run_id"])


# -- builds have no network -----------------------------------------------------------------------


class _Recorder(http.server.BaseHTTPRequestHandler):
    hits: list[str] = []

    def do_GET(self) -> None:
        type(self).hits.append(self.path)
        body = MARKER.encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args) -> None:
        pass


def test_a_recipe_cannot_reach_a_loopback_service_at_build_time(base_image, tmp_path):
    from harness.images.build import build_image

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Recorder)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    port = server.server_address[1]
    recipe = tmp_path / "images" / "fetch"
    recipe.mkdir(parents=True)
    (recipe / "Dockerfile").write_text(
        "FROM harness/base:bookworm\n"
        f"RUN python3 -c \"import urllib.request; open('/leak', 'wb').write(urllib.request.urlopen("
        f"'http://127.0.0.1:{port}/leak', timeout=5).read())\"\n"
    )
    try:
        with pytest.raises(EngineError, match="(docker|podman) build failed"):
            build_image(recipe, None, force=True)
    finally:
        server.shutdown()
    assert _Recorder.hits == []


def test_recipe_context_with_links_or_fifos_is_refused(tmp_path, host_secret):
    from harness.errors import HarnessError
    from harness.images.build import context_files

    recipe = tmp_path / "images" / "evil"
    recipe.mkdir(parents=True)
    (recipe / "Dockerfile").write_text("FROM harness/base:bookworm\n")
    (recipe / "root").symlink_to("/")
    with pytest.raises(HarnessError, match="symlinks are not allowed"):
        context_files(recipe)
    (recipe / "root").unlink()
    os.mkfifo(recipe / "pipe")
    with pytest.raises(HarnessError, match="fifo"):
        context_files(recipe)
    (recipe / "pipe").unlink()
    with open(recipe / "big.bin", "wb") as handle:
        handle.truncate(300 << 20)
    with pytest.raises(HarnessError, match="at most"):
        context_files(recipe)


def test_reproduce_refuses_a_recipe_that_declares_build_network(hub, tmp_path):
    origin = LocalStore(tmp_path / "origin")
    record = make_run(
        origin,
        "netrecipe-aaa",
        seed=1,
        extra_files={
            "manifest.yaml": (
                b"apiVersion: harness/v1\nname: netrecipe\n"
                b"image: {build: images/rl, lockfile: lockfiles/rl.txt, network: true}\n"
                b"command: [python, /workload/train.py]\nseeds: [1]\n"
            ),
        },
    )
    assert record["files"]["manifest.yaml"]
    from harness.store.hub import publish

    publish(["netrecipe-aaa"], HUB_REPO, endpoint=hub.url, store=origin)
    proc = run_cli("reproduce", f"{HUB_REPO}/netrecipe-aaa", env={"HARNESS_HOME": str(tmp_path / "mine")})
    assert proc.returncode == 2, proc.stderr
    assert "--allow-build-network" in proc.stderr and proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr


def test_a_pulled_lockfile_cannot_point_the_host_at_a_loopback_index(hub, tmp_path):
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Recorder)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}"
    lockfile = (
        f"--extra-index-url {url}/simple\n--find-links {url}/wheels\n"
        f"numpy==2.0.0 --hash=sha256:{'0' * 64}\nevil @ {url}/evil.whl --hash=sha256:{'1' * 64}\n"
    )
    origin = LocalStore(tmp_path / "origin")
    make_run(origin, "lockfile-aaa", extra_files={"lockfile.txt": lockfile.encode()})
    from harness.store.hub import publish

    publish(["lockfile-aaa"], HUB_REPO, endpoint=hub.url, store=origin)
    try:
        proc = run_cli("reproduce", f"{HUB_REPO}/lockfile-aaa", env={"HARNESS_HOME": str(tmp_path / "mine")})
    finally:
        server.shutdown()
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    assert "not allowed" in proc.stderr or "not pinned" in proc.stderr
    assert _Recorder.hits == []


# -- publishing ------------------------------------------------------------------------------------


def test_publish_refuses_a_name_that_pull_would_refuse(hub, tmp_path):
    store = LocalStore(tmp_path / "origin")
    make_run(store, "names-aaa")
    folder = store.run_dir("names-aaa")
    (folder / "out" / "a\\b.txt").write_text("x\n")
    record = json.loads((folder / "record.json").read_text())
    record["files"]["out/a\\b.txt"] = __import__("hashlib").sha256(b"x\n").hexdigest()
    (folder / "record.json").write_text(json.dumps(record))

    proc = run_cli("publish", "names-aaa", "--repo", HUB_REPO, env={"HARNESS_HOME": str(store.root)})
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1 and "out/a\\\\b.txt" in proc.stderr and "backslash" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert (
        not hub.storage.exists(RepoRef("dataset", HUB_REPO))
        or "runs/names-aaa/record.json"
        not in hub.storage.commit(
            RepoRef("dataset", HUB_REPO), hub.storage.resolve(RepoRef("dataset", HUB_REPO), "main")
        )["tree"]
    )


def test_two_stores_cannot_replace_each_others_runs(hub, tmp_path):
    from harness.run.runner import fresh_run_id
    from harness.store.hub import publish

    first, second = LocalStore(tmp_path / "a"), LocalStore(tmp_path / "b")
    for store in (first, second):
        make_run(store, "noop-abc")
    ids = {fresh_run_id(first, "noop-abc"), fresh_run_id(second, "noop-abc"), fresh_run_id(first, "noop-abc")}
    assert len(ids) == 3 and all(i.startswith("noop-abc-r") and len(i) == len("noop-abc-r") + 8 for i in ids)
    assert fresh_run_id(first, "noop-new") == "noop-new"  # a first attempt keeps its stable id

    make_run(first, "noop-abc-r00000001", seed=1)
    make_run(second, "noop-abc-r00000001", seed=2)  # the same id made elsewhere, other content
    publish(["noop-abc-r00000001"], HUB_REPO, endpoint=hub.url, store=first)
    assert publish(["noop-abc-r00000001"], HUB_REPO, endpoint=hub.url, store=first).commit is None  # idempotent
    proc = run_cli("publish", "noop-abc-r00000001", "--repo", HUB_REPO, env={"HARNESS_HOME": str(second.root)})
    assert proc.returncode == 2
    assert "noop-abc-r00000001 is already on" in proc.stderr and "--rerun" in proc.stderr
    with pytest.raises(HubError, match="not replacing it"):
        publish(["noop-abc-r00000001"], HUB_REPO, endpoint=hub.url, store=second)


def _huge_index(rows: int) -> bytes:
    import io

    import pyarrow.compute as pc

    from harness.store.card import BASE_COLUMNS as RUNS_SCHEMA

    columns = {field.name: pa.nulls(rows, field.type) for field in RUNS_SCHEMA}
    columns["run_id"] = pc.binary_join_element_wise(
        pa.array(["old-"] * rows), pc.cast(pa.array(range(rows)), pa.string()), ""
    )
    columns["name"] = pa.array(["old"] * rows)
    buffer = io.BytesIO()
    pq.write_table(pa.table(columns, schema=RUNS_SCHEMA), buffer, row_group_size=rows)  # one huge row group
    return buffer.getvalue()


def test_publish_streams_a_huge_runs_index(hub, tmp_path):
    store = LocalStore(tmp_path / "origin")
    make_run(store, "small-aaa")
    repo = RepoRef("dataset", HUB_REPO)
    hub.storage.create_repo(repo, private=False)
    hub.storage.force_commit(repo, {"runs.parquet": _huge_index(3_000_000)})

    measure = (
        "import resource, subprocess, sys; r = subprocess.run(sys.argv[1:]); "
        "print('maxrss_kb', resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, file=sys.stderr); sys.exit(r.returncode)"
    )
    proc = subprocess.run(
        [sys.executable, "-c", measure, sys.executable, "-m", "harness", "publish", "small-aaa", "--repo", HUB_REPO],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "HARNESS_HOME": str(store.root)},
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    peak_mb = int(proc.stderr.split("maxrss_kb")[1].split()[0]) / 1024
    assert peak_mb < 500, f"publish peaked at {peak_mb:.0f} MB"
    index = hub.storage.commit(repo, hub.storage.resolve(repo, "main"))["tree"]["runs.parquet"]
    data = hub.storage.blob_path(index["sha256"]).read_bytes()
    import io

    assert pq.ParquetFile(io.BytesIO(data)).metadata.num_rows == 3_000_001


# -- host-side units: the same rules without the engine ---------------------------------------------


def test_a_scalar_tensor_claiming_a_huge_shape_is_not_materialised():
    from tensorboard.compat.proto import tensor_pb2, tensor_shape_pb2, types_pb2

    from harness.capture.metrics import _tensor_scalar

    huge = tensor_pb2.TensorProto(
        dtype=types_pb2.DT_FLOAT,
        float_val=[1.0],
        tensor_shape=tensor_shape_pb2.TensorShapeProto(dim=[tensor_shape_pb2.TensorShapeProto.Dim(size=10**12)]),
    )
    assert _tensor_scalar(huge) is None
    scalar = tensor_pb2.TensorProto(dtype=types_pb2.DT_FLOAT, float_val=[2.5])
    assert _tensor_scalar(scalar) == 2.5


def test_one_secret_filter_for_both_copies(monkeypatch):
    import subprocess

    from harness.capture.environment import ENVIRONMENT_SCRIPT
    from harness.runtime.job import JobRequest
    from harness.runtime.process import host_environment
    from harness.util.secrets import SECRET_VALUE_PATTERN, is_secret

    assert repr(SECRET_VALUE_PATTERN) in ENVIRONMENT_SCRIPT
    cases = {
        "HF_TOKEN": "x",
        "HF_ENDPOINT": "x",
        "AWS_ACCESS_KEY_ID": "x",
        "MY_API_KEY": "x",
        "DB_PASSWORD": "x",
        "GITHUB_TOKEN": "x",
        "X_AUTH": "x",
        "WANDB_API_KEY": "x",
        "PLAIN": "https://u:p@host/",
        "PLAIN2": "hf_" + "a" * 30,
        "HARNESS_LEAK": "https://user:pw@example.org/x",
    }
    for name, value in cases.items():
        assert is_secret(name, value), name
        monkeypatch.setenv(name, value)
    for name in ("PATH", "HF_HUB_OFFLINE", "OMP_NUM_THREADS", "HARNESS_SEED"):
        assert not is_secret(name, "1"), name
    environment = host_environment(
        JobRequest(
            run_id="r",
            command=["true"],
            environment={},
            out_dir=Path("/tmp"),
            log_path=Path("/tmp/log"),
            cpus=1.0,
            memory_bytes=1 << 30,
            gpus=0,
            timeout_seconds=10,
        )
    )
    assert not set(cases) & set(environment)
    captured = subprocess.run(
        [sys.executable, "-c", ENVIRONMENT_SCRIPT],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "HARNESS_SEED": "1"},
    ).stdout
    recorded = json.loads(captured)["env"]
    assert "HARNESS_SEED" in recorded and not set(cases) & set(recorded)


def test_walk_stops_at_its_entry_limit(tmp_path):
    from harness.util.safefs import walk

    for index in range(1_100):
        (tmp_path / f"f{index}").write_text("x")
    found = walk(tmp_path, max_entries=1_000)
    assert len(found.files) == 1_000
    assert any("entry limit" in s.reason for s in found.skipped)


def test_odd_metric_files_on_the_host_side(tmp_path):
    import struct

    from tensorboard.compat.tensorflow_stub.pywrap_tensorflow import masked_crc32c

    from harness.capture.metrics import MetricsIngester

    out = tmp_path / "out"
    (out / "metrics.jsonl").mkdir(parents=True)  # a folder where a file is expected
    with open(out / "metrics.external.jsonl", "wb") as handle:  # a last line of 5 MB without a newline
        handle.write(b'{"name": "ok", "step": 1, "value": 1}\n' + b"x" * (5 << 20))
    (out / "tb").mkdir()
    garbage = b"\x08\xff\xff\xff\xff\xff"
    header = struct.pack("<Q", len(garbage))
    with open(out / "tb" / "events.out.tfevents.1.bad", "wb") as handle:
        handle.write(header + struct.pack("<I", masked_crc32c(header)) + garbage + b"\0\0\0\0")
    ingester = MetricsIngester("r", out, out / "tb")
    assert ingester.poll(final=True) == 1
    assert ingester.rejected == {"line_too_long": 1, "tb_bad_record": 1}
    assert any(s.path == "out/metrics.jsonl" and "directory" in s.reason for s in ingester.skipped)


def test_publish_into_a_repo_with_a_garbage_runs_index(hub, tmp_path):
    store = LocalStore(tmp_path / "origin")
    make_run(store, "garbage-aaa")
    repo = RepoRef("dataset", HUB_REPO)
    hub.storage.create_repo(repo, private=False)
    hub.storage.force_commit(repo, {"runs.parquet": b"PAR1 this is not parquet " + MARKER.encode()})
    proc = run_cli("publish", "garbage-aaa", "--repo", HUB_REPO, env={"HARNESS_HOME": str(store.root)})
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and "runs.parquet" in proc.stderr, proc.stderr
    assert_nowhere(texts=(proc.stdout, proc.stderr))


@pytest.mark.parametrize(
    "record_bytes",
    [
        b"[" * 100_000 + b"]" * 100_000,
        b'{"run_id": "evil-aaa", "x": "' + b"a" * (40 << 20) + b'"}',
        b"\xff\xfe garbage",
    ],
    ids=["deep", "huge", "binary"],
)
def test_pull_refuses_a_hostile_record(hub, tmp_path, record_bytes):
    store = LocalStore(tmp_path / "origin")
    make_run(store, "evil-aaa")
    from harness.store.hub import publish

    publish(["evil-aaa"], HUB_REPO, endpoint=hub.url, store=store)
    hub.storage.force_commit(RepoRef("dataset", HUB_REPO), {"runs/evil-aaa/record.json": record_bytes})
    started = time.monotonic()
    proc = run_cli("pull", HUB_REPO, env={"HARNESS_HOME": str(tmp_path / "mine")})
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert time.monotonic() - started < HANG  # ended: no hang on the hostile input
    assert not (tmp_path / "mine" / "runs" / "evil-aaa").exists()


def test_pull_refuses_names_that_publish_would_refuse(hub, tmp_path):
    from harness.store.hub import publish

    store = LocalStore(tmp_path / "origin")
    make_run(store, "names-bbb")
    publish(["names-bbb"], HUB_REPO, endpoint=hub.url, store=store)
    repo = RepoRef("dataset", HUB_REPO)
    for crafted in ({"runs/names-bbb/out/a\\b.txt": b"x"}, {"runs/names-bbb/out/ctl\x1bname": b"x"}):
        hub.storage.force_commit(repo, crafted)
        proc = run_cli("pull", HUB_REPO, env={"HARNESS_HOME": str(tmp_path / "mine")})
        assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr, proc.stderr
        assert "backslash" in proc.stderr or "control character" in proc.stderr
        assert "\x1b" not in proc.stderr
        assert not (tmp_path / "mine" / "runs" / "names-bbb").exists()
    record = json.loads((store.run_dir("names-bbb") / "record.json").read_text())
    record["files"]["out/\udcffbad"] = "0" * 64  # a lone surrogate: what a non-UTF-8 name becomes
    (store.run_dir("names-bbb") / "record.json").write_text(json.dumps(record))
    proc = run_cli("publish", "names-bbb", "--repo", HUB_REPO, env={"HARNESS_HOME": str(store.root)})
    assert proc.returncode == 2 and "not valid UTF-8" in proc.stderr and proc.stderr.count("\n") == 1, proc.stderr
