"""`harness verify`: annotations on file and line, a job summary, and which manifests a change runs."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from types import SimpleNamespace

import pytest

from harness.project import ci
from tests.conftest import REPO


def test_annotation_escapes_and_pins_file_and_line(tmp_path):
    problem = f"{tmp_path}/manifests/x.yaml:7: seeds: 100%, a, b: bad\nsecond line"
    annotation = ci.annotation_for(problem, tmp_path)
    assert (annotation.file, annotation.line) == ("manifests/x.yaml", 7)
    assert (
        annotation.workflow_command() == "::error file=manifests/x.yaml,line=7::seeds: 100%25, a, b: bad%0Asecond line"
    )
    assert ci.Annotation("a, b", "odd:name,x.yaml").workflow_command() == "::error file=odd%3Aname%2Cx.yaml::a, b"
    assert ci.annotation_for("no file here", tmp_path).workflow_command() == "::error::no file here"


def loaded(path: str, build: str, lockfile: str, gpus: int = 0) -> SimpleNamespace:
    image = SimpleNamespace(build=build, lockfile=lockfile)
    return SimpleNamespace(
        path=Path("/p") / path,
        root=Path("/p"),
        manifest=SimpleNamespace(image=image, hardware=SimpleNamespace(gpus=gpus), seeds=[3, 4]),
    )


def test_a_change_runs_the_manifests_it_touches_and_a_harness_change_runs_all():
    manifests = [
        loaded("manifests/a.yaml", "images/rl", "lockfiles/rl.txt"),
        loaded("manifests/b.yaml", "images/noop", "lockfiles/noop.txt"),
        loaded("manifests/g.yaml", "images/rl", "lockfiles/rl.txt", gpus=1),
    ]

    def names(chosen):
        return [c.path.name for c in chosen]

    assert names(ci.choose_manifests(manifests, ["manifests/b.yaml"])) == ["b.yaml"]
    assert names(ci.choose_manifests(manifests, ["images/rl/workload/dqn.py"])) == ["a.yaml", "g.yaml"]
    assert names(ci.choose_manifests(manifests, ["lockfiles/noop.txt"])) == ["b.yaml"]
    assert names(ci.choose_manifests(manifests, ["README.md", "images/rlx/Dockerfile"])) == []
    for shared in ("harness/run/runner.py", "pyproject.toml", "scripts/setup.sh"):
        chosen = ci.choose_manifests(manifests, [shared])
        assert names(chosen) == ["a.yaml", "b.yaml", "g.yaml"] and shared in chosen[0].reason
    assert [(c.gpus, c.first_seed) for c in ci.choose_manifests(manifests, None)] == [(0, 3), (0, 3), (1, 3)]


def test_summary_table_has_manifest_run_status_metric_duration():
    record = {
        "run_id": "noop-abc",
        "status": "completed",
        "primary_metric": "probe/value",
        "metrics_summary": {"probe/value": {"last": 2.0}},
        "duration_s": 1.25,
    }
    markdown = ci.summary_markdown([ci.row_from_record("manifests/noop.yaml", record)], [], "passed")
    assert "| manifest | run id | status | primary metric | duration |" in markdown
    assert "| `manifests/noop.yaml` | `noop-abc` | completed | probe/value = 2 | 1.2 s |" in markdown


def git(cwd: Path, *args: str) -> None:
    subprocess.run(
        ["git", "-c", "user.name=t", "-c", "user.email=t@example.org", *args], cwd=cwd, check=True, capture_output=True
    )


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """A git project with the noop image and manifest on `main`, and a branch `change` checked out."""
    for part in ("images/noop", "lockfiles/noop.txt", "manifests/noop.yaml"):
        source, target = REPO / part, tmp_path / part
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copytree(source, target) if source.is_dir() else shutil.copy(source, target)
    git(tmp_path, "init", "-q", "-b", "main")
    git(tmp_path, "add", "-A")
    git(tmp_path, "commit", "-qm", "base")
    git(tmp_path, "checkout", "-qb", "change")
    return tmp_path


def verify(project: Path, cli, tmp_path_factory) -> tuple[object, str]:
    summary = tmp_path_factory.mktemp("summary") / "summary.md"
    env = {
        "GITHUB_ACTIONS": "true",
        "GITHUB_STEP_SUMMARY": str(summary),
        "HARNESS_HOME": str(tmp_path_factory.mktemp("store")),
    }
    result = cli("verify", "main", env=env, cwd=project)
    return result, summary.read_text() if summary.exists() else ""


@pytest.mark.docker
def test_verify_smoke_runs_a_new_manifest_and_writes_the_summary(noop_image, project, cli, tmp_path_factory):
    text = (project / "manifests/noop.yaml").read_text().replace("name: noop", "name: probe-new")
    (project / "manifests/probe-new.yaml").write_text(text)
    git(project, "add", "-A")
    git(project, "commit", "-qm", "a new manifest")
    result, summary = verify(project, cli, tmp_path_factory)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "smoke run of manifests/probe-new.yaml (manifest changed)" in result.stdout
    assert "manifests/noop.yaml" not in result.stdout  # untouched: not run
    assert "| `manifests/probe-new.yaml` | `probe-new-" in summary and "| completed | probe/value = " in summary


def test_verify_annotates_a_bad_manifest_and_a_stale_lockfile(project, cli, tmp_path_factory):
    text = (project / "manifests/noop.yaml").read_text().replace("seeds: [0]", "seeds: [-1]")
    (project / "manifests/bad.yaml").write_text(text.replace("name: noop", "name: bad"))
    line = text.splitlines().index("seeds: [-1]") + 1
    (project / "images/noop/requirements.in").write_text("six==1.16.0\nidna\n")
    git(project, "add", "-A")
    git(project, "commit", "-qm", "broken")
    result, summary = verify(project, cli, tmp_path_factory)
    assert result.returncode == 1
    assert f"::error file=manifests/bad.yaml,line={line}::seeds: seed -1 must be" in result.stdout
    stale = [row for row in result.stdout.splitlines() if row.startswith("::error file=lockfiles/noop.txt,line=2::")]
    assert stale and "run `harness lock images/noop` and commit lockfiles/noop.txt" in stale[0]
    assert "| `manifests/bad.yaml` | " in summary and "problem" in summary


def test_verify_with_an_unknown_base_is_one_line_and_exit_2(project, cli):
    result = cli("verify", "no-such-branch", cwd=project)
    assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1 and "no-such-branch" in result.stderr
