"""Whether the Debian mirror still serves a base image's package files (harness.images.mirror),
with a real base image carrying a recorded list, the host's real apt index, and `harness doctor`."""

from __future__ import annotations

import json
import uuid

import pytest

from harness.images.build import BASE_IMAGE
from harness.images.mirror import DebFile, check_mirror, image_debs, parse_debs_list, served_versions
from tests.conftest import run_cli


@pytest.fixture
def base_with_list(base_image, docker_engine, tmp_path):
    """A real base image whose /etc/harness-debs.sha256 lists its packages as the mirror serves them,
    except one altered to an old version that no mirror serves now; yields (tag, altered package)."""
    listed = docker_engine.containers.run(
        BASE_IMAGE, ["dpkg-query", "-W", "-f", "${Package}=${Version}\\n"], remove=True, network_mode="none"
    )
    wanted = dict(line.split("=", 1) for line in listed.decode().split())
    served = served_versions(sorted(wanted))
    if served is None:
        pytest.skip("no apt package index on this host to compare with")
    lines = [
        f"{sha}  {name}_{version.replace(':', '%3a')}_amd64.deb"
        for name, version in sorted(wanted.items())
        for v, sha in served.get(name, [])
        if v == version and sha
    ]
    assert len(lines) > 20, "the host's apt index should serve most of the base's package versions"
    altered = "python3"
    lines = [line for line in lines if not line.endswith(f"  {altered}_{wanted[altered]}_amd64.deb")]
    lines.append(f"{'0' * 64}  {altered}_3.11.2-0+old1_amd64.deb")  # an older point release's file
    (tmp_path / "harness-debs.sha256").write_text("\n".join(lines) + "\n")
    (tmp_path / "Dockerfile").write_text(f"FROM {BASE_IMAGE}\nCOPY harness-debs.sha256 /etc/harness-debs.sha256\n")
    tag = f"harness-test/base-mirror:{uuid.uuid4().hex[:12]}"
    docker_engine.images.build(path=str(tmp_path), tag=tag, network_mode="none", rm=True)
    try:
        yield tag, altered, len(lines)
    finally:
        docker_engine.images.remove(tag, force=True)


@pytest.mark.docker
def test_a_moved_mirror_is_said_plainly(base_with_list):
    tag, altered, count = base_with_list
    debs = image_debs(tag)
    assert debs is not None and len(debs) == count
    check = check_mirror(debs)
    assert check.state == "moved"
    assert [d.name for d in check.gone] == [altered]
    assert check.served_now[altered] and "3.11.2-0+old1" not in check.served_now[altered]
    assert f"1 of {count} package files are no longer served" in check.detail
    assert "cannot be made again" in check.detail and "python3 3.11.2-0+old1 (now " in check.detail

    current = check_mirror([d for d in debs if d.name != altered])
    assert (current.state, current.gone) == ("current", [])
    assert current.detail.startswith(f"all {count - 1} package files are still served")


@pytest.mark.docker
def test_an_image_without_a_list_and_a_host_without_apt_are_unknown(
    docker_engine, base_with_list, monkeypatch, tmp_path
):
    tag, _, _ = base_with_list
    debs = image_debs(tag)
    monkeypatch.setenv("PATH", str(tmp_path))  # apt-cache is not there: no index, no answer
    assert check_mirror(debs).state == "unknown"
    monkeypatch.undo()
    docker_engine.images.get(BASE_IMAGE)
    nothing = check_mirror(image_debs("harness-test/no-such-image:none"))
    assert nothing.state == "unknown" and "records no package files" in nothing.detail


def test_hostile_list_lines_are_left_out():
    text = "\n".join(
        [
            f"{'a' * 64}  libc6_2.36-9+deb12u7_amd64.deb",
            f"{'b' * 64}  dpkg_1%3a1.21.22_amd64.deb",  # an epoch, escaped as apt writes it
            f"{'c' * 63}  short_1.0_amd64.deb",  # not a sha256
            f"{'d' * 64}  no-deb-suffix_1.0_amd64.tar",
            f"{'e' * 64}  too_many_parts_here_amd64.deb",
            f"{'f' * 64}  bad\x1bname_1.0_amd64.deb",
            "garbage",
            "",
        ]
        + [f"{'0' * 64}  p{i}_1_amd64.deb" for i in range(5000)]
    )
    debs = parse_debs_list(text)
    assert debs[:2] == [DebFile("libc6", "2.36-9+deb12u7", "a" * 64), DebFile("dpkg", "1:1.21.22", "b" * 64)]
    assert len(debs) < 2000  # bounded


@pytest.mark.docker
def test_doctor_reports_the_base_mirror(base_image):
    result = run_cli("doctor", "--json")
    checks = {c["name"]: c for c in json.loads(result.stdout)["checks"]}
    detail = checks["base mirror"]["detail"]
    assert checks["base mirror"]["ok"]
    assert detail.startswith(("all ", "the Debian mirror has moved on", "unknown: "))
