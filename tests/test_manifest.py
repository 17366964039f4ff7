"""Manifest validation through the real CLI: every bad input is one line, exit 2, nothing written."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import REPO, noop_project

GOOD = """\
apiVersion: harness/v1
name: probe
image: {build: images/noop, lockfile: lockfiles/noop.txt}
command: [python, /workload/probe.py, --mode, "{mode}", --seed, "{seed}"]
params: {mode: ok, lr: 0.1}
seeds: [1, 2]
hardware: {cpus: 1, memory: 256MiB, timeout: 2m}
"""


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """A project folder with the noop image recipe and its lockfile."""
    return noop_project(tmp_path)


def write(project: Path, text: str, name: str = "m.yaml") -> Path:
    path = project / "manifests" / name
    path.write_text(text)
    return path


def assert_one_line_error(result, *fragments: str) -> str:
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return lines[0]


def test_good_manifest_validates(project, cli):
    result = cli("validate", str(write(project, GOOD)))
    assert result.returncode == 0, result.stderr
    assert "2 runs" in result.stdout


def test_shipped_manifests_validate(cli):
    manifests = sorted(str(p) for p in (REPO / "manifests").glob("*.yaml"))
    result = cli("validate", *manifests)
    assert result.returncode == 0, result.stderr


def test_missing_file(project, cli):
    assert_one_line_error(cli("validate", str(project / "manifests" / "nope.yaml")), "nope.yaml", "no such manifest")


def test_yaml_syntax_error_names_the_line(project, cli):
    text = GOOD.replace("seeds: [1, 2]", "seeds: [1, 2")
    line = assert_one_line_error(cli("validate", str(write(project, text))), "m.yaml:", "YAML syntax error")
    assert ":7:" in line or ":8:" in line


def test_unknown_key_suggests_the_close_one(project, cli):
    text = GOOD.replace("hardware: {cpus: 1,", "hardware: {cpu: 1,")
    assert_one_line_error(cli("validate", str(write(project, text))), "m.yaml:7: hardware.cpu", "unknown key", "'cpus'")


def test_image_tag_without_digest_is_refused(project, cli):
    text = GOOD.replace("image: {build: images/noop, lockfile: lockfiles/noop.txt}", "image: {ref: 'python:3.11'}")
    assert_one_line_error(cli("validate", str(write(project, text))), "m.yaml:3: image", "not pinned", "@sha256")


def test_lockfile_missing_unpinned_unhashed(project, cli):
    missing = GOOD.replace("lockfiles/noop.txt", "lockfiles/gone.txt")
    assert_one_line_error(
        cli("validate", str(write(project, missing))), "image.lockfile", "does not exist", "harness lock"
    )
    (project / "lockfiles" / "noop.txt").write_text("six>=1.0 --hash=sha256:" + "a" * 64 + "\n")
    assert_one_line_error(cli("validate", str(write(project, GOOD))), "image.lockfile", "not pinned")
    (project / "lockfiles" / "noop.txt").write_text("six==1.16.0\n")
    assert_one_line_error(cli("validate", str(write(project, GOOD))), "image.lockfile", "no --hash")


def test_placeholder_without_param(project, cli):
    text = GOOD.replace('"{mode}"', '"{mod}"')
    assert_one_line_error(cli("validate", str(write(project, text))), "m.yaml:", "{mod}", "did you mean {mode}")


@pytest.mark.parametrize(
    "seeds,fragment", [("[-1]", "seeds"), ("[1.5]", "seeds.0"), ("[]", "seeds"), ('["a"]', "seeds.0")]
)
def test_bad_seeds(project, cli, seeds, fragment):
    text = GOOD.replace("seeds: [1, 2]", f"seeds: {seeds}")
    assert_one_line_error(cli("validate", str(write(project, text))), "m.yaml:6:", fragment)


def test_seeds_are_required(project, cli):
    text = GOOD.replace("seeds: [1, 2]\n", "")
    assert_one_line_error(cli("validate", str(write(project, text))), "seeds", "required")


@pytest.mark.parametrize("field,value,fragment", [("memory", "lots", "memory"), ("timeout", "soon", "timeout")])
def test_unparsable_memory_and_timeout(project, cli, field, value, fragment):
    text = GOOD.replace("memory: 256MiB" if field == "memory" else "timeout: 2m", f"{field}: {value}")
    assert_one_line_error(
        cli("validate", str(write(project, text))), "m.yaml:7:", f"hardware.{fragment}", "cannot read"
    )


def test_build_folder_without_dockerfile(project, cli):
    (project / "images" / "empty").mkdir()
    text = GOOD.replace("build: images/noop", "build: images/empty")
    assert_one_line_error(cli("validate", str(write(project, text))), "image.build", "no Dockerfile")


def test_paths_outside_the_project_are_refused(project, cli):
    text = GOOD.replace("build: images/noop", "build: ../../etc")
    assert_one_line_error(cli("validate", str(write(project, text))), "image.build", "inside the project")


def test_aliases_are_refused(project, cli):
    bomb = GOOD + 'a: &a ["x","x"]\nb: &b [*a,*a]\n'
    assert_one_line_error(cli("validate", str(write(project, bomb))), "aliases are not allowed")


def test_oversized_manifest_is_refused(project, cli):
    path = write(project, GOOD + "#" * (1 << 20))
    assert_one_line_error(cli("validate", str(path)), "larger than")


def test_sweep_key_must_be_a_param(project, cli):
    text = GOOD + "sweep: {gamma: [0.9, 0.99]}\n"
    assert_one_line_error(cli("validate", str(write(project, text))), "sweep key 'gamma' is not a param")
    empty = GOOD + "sweep: {lr: []}\n"
    assert_one_line_error(cli("validate", str(write(project, empty))), "empty list")


def test_hub_pins_need_commit_revisions(project, cli):
    text = GOOD + "model: {repo: gpt2, revision: main}\n"
    assert_one_line_error(cli("validate", str(write(project, text))), "model.revision", "40-hex")
    pinned = GOOD + "model: {repo: gpt2, revision: " + "a" * 40 + "}\n"
    assert cli("validate", str(write(project, pinned))).returncode == 0


def test_all_errors_are_reported(project, cli):
    text = GOOD.replace("hardware: {cpus: 1,", "hardware: {cpu: 1,").replace("name: probe", "name: Bad Name!")
    result = cli("validate", str(write(project, text)))
    assert result.returncode == 2
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert (
        len(lines) == 2 and any("hardware.cpu" in line for line in lines) and any(":2: name" in line for line in lines)
    )


def test_schema_is_json_schema(cli):
    result = cli("schema")
    assert result.returncode == 0
    schema = json.loads(result.stdout)
    assert "seeds" in schema["required"] and schema["additionalProperties"] is False


def test_bad_param_override(project, cli, tmp_path):
    result = cli("run", str(write(project, GOOD)), "--param", "nope=1", env={"HARNESS_HOME": str(tmp_path / "s")})
    assert_one_line_error(result, "--param nope", "no param")
    result = cli("run", str(write(project, GOOD)), "--param", "lr=fast", env={"HARNESS_HOME": str(tmp_path / "s")})
    assert_one_line_error(result, "--param lr=fast", "float")
    assert not (tmp_path / "s").exists()
