"""A long image build is never silent: the progress line names the build step (harness.run.build_progress),
fed by a real Docker build's own log lines."""

from __future__ import annotations

import threading
import uuid

import pytest

from harness.images.build import BASE_IMAGE
from harness.run.build_progress import BuildHeartbeat


@pytest.mark.docker
def test_a_build_says_its_step_every_few_seconds(base_image, docker_engine, tmp_path):
    (tmp_path / "Dockerfile").write_text(f"FROM {BASE_IMAGE}\nRUN sleep 3\nRUN true\n")
    lines: list[str] = []
    lock = threading.Lock()

    def echo(line: str) -> None:
        with lock:
            lines.append(line)

    heartbeat = BuildHeartbeat(echo, interval=0.3, what="image noop").start()
    heartbeat.log("downloading locked packages into /tmp/x")
    tag = f"harness-test/build-progress:{uuid.uuid4().hex[:12]}"
    try:
        for chunk in docker_engine.api.build(
            path=str(tmp_path), tag=tag, network_mode="none", rm=True, forcerm=True, decode=True
        ):
            heartbeat.log(str(chunk.get("stream") or ""))
    finally:
        heartbeat.stop()
        docker_engine.images.remove(tag, force=True)
    stopped_at = len(lines)
    with lock:
        shown = list(lines)
    assert any("building image noop: step 2/3 (RUN sleep 3), 0:0" in line for line in shown), shown
    assert all(line.startswith("building image noop: ") and " elapsed" in line for line in shown)
    heartbeat.stop()  # twice is fine, and nothing more is said
    assert len(lines) == stopped_at


def test_before_the_first_step_it_says_what_is_being_prepared():
    heartbeat = BuildHeartbeat(lambda line: None)
    assert heartbeat.line().startswith("building image: starting, 0:00 elapsed")
    heartbeat.log("copying harness/base:bookworm from Docker into the reproducible build store")
    assert "copying harness/base:bookworm" in heartbeat.line()
    heartbeat.log("Step 1/2 : FROM harness/base:bookworm")
    heartbeat.log(" ---> 1234")
    heartbeat.log("STEP 2/2: RUN " + "x" * 200)  # buildah's form, a long instruction cut
    assert "step 2/2 (RUN xxx" in heartbeat.line() and "...)" in heartbeat.line()
    heartbeat.log("[2/2] STEP 3/4: COPY workload/ /workload/")  # buildah's multi-stage form
    heartbeat.log("--> 5f0e1d2c3b4a")
    assert "step 3/4 of stage 2/2 (COPY workload/ /workload/)" in heartbeat.line()
