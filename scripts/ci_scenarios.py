#!/usr/bin/env python3
"""Run the verify-manifests workflow on a simulated GitHub runner, on scenario branches.

Each scenario is a branch made in a scratch clone of this checkout, on top of a base branch at
HEAD, and runs `.github/workflows/verify-manifests.yml` as a pull request through
`../shared/ci-sim/run-workflow.sh --fresh-engine` (act in self-hosted mode as an unprivileged
runner user, against a new, empty Docker engine). The log must show what the scenario states:

  new-manifest   a new manifest on an existing image passes (its smoke run is in the summary)
  rl-change      a change to images/rl rebuilds the image and passes
  bad-manifest   a manifest with an error fails, with an annotation naming its file and line
  stale-lock     a lockfile made stale fails, with a message saying how to fix it

Usage: scripts/ci_scenarios.py [SCENARIO ...]   (as root; exit 0 when every scenario behaved as
stated, 1 otherwise; skipped with a message when the simulator is not beside this checkout)
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SIMULATOR = REPO.parent / "shared" / "ci-sim" / "run-workflow.sh"
WORKFLOW = ".github/workflows/verify-manifests.yml"
BASE = "scenario-base"
ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
SCENARIO_TIMEOUT_S = 900  # one scenario takes 1-2 minutes; a hang must not hold CI
SPINNER = re.compile("[⠋⠙⠹⠸⠼⠴⠦⠧⠇⠏]")  # rich's "dots" spinner: a redraw that CI must not get


def stop_group(process: subprocess.Popen[str]) -> str:
    """End a process group: SIGTERM (the simulator's traps stop its engine), SIGKILL after 60 s; its stderr."""
    for sig, grace in ((signal.SIGTERM, 60), (signal.SIGKILL, 30)):
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:
            break
        try:
            return process.communicate(timeout=grace)[1]
        except subprocess.TimeoutExpired:
            continue
    return ""


def git(cwd: Path, *args: str) -> str:
    done = subprocess.run(
        ["git", "-c", "user.name=ci-scenarios", "-c", "user.email=ci-scenarios@localhost", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        raise SystemExit(f"ci-scenarios: git {' '.join(args)} failed: {done.stderr.strip()}")
    return done.stdout


@dataclass
class Scenario:
    """A branch to make, how the workflow must end, and what its log must show."""

    name: str
    title: str
    change: Callable[[Path], None]
    exit_status: int
    expected: list[str | re.Pattern[str]] = field(default_factory=list)


def add_manifest(clone: Path) -> None:
    text = (clone / "manifests/noop.yaml").read_text().replace("name: noop", "name: scenario-probe")
    (clone / "manifests/scenario-probe.yaml").write_text(text)


def change_rl(clone: Path) -> None:
    with open(clone / "images/rl/workload/dqn.py", "a") as handle:
        handle.write("# scenario rl-change: the recipe changed, so the image is rebuilt\n")


def add_bad_manifest(clone: Path) -> None:
    text = (clone / "manifests/noop.yaml").read_text().replace("name: noop", "name: scenario-bad")
    (clone / "manifests/scenario-bad.yaml").write_text(text.replace("seeds: [0]", "seeds: [-1]"))


def bad_manifest_line(clone: Path) -> int:
    return (clone / "manifests/noop.yaml").read_text().splitlines().index("seeds: [0]") + 1


def stale_lockfile(clone: Path) -> None:
    with open(clone / "images/noop/requirements.in", "a") as handle:
        handle.write("idna\n")


def scenarios(clone: Path) -> list[Scenario]:
    return [
        Scenario(
            "new-manifest",
            "a new manifest on an existing image passes",
            add_manifest,
            0,
            [
                "verify: smoke run of manifests/scenario-probe.yaml (manifest changed)",
                re.compile(
                    r"\| `manifests/scenario-probe\.yaml` \| `scenario-probe-[0-9a-f]+` \| completed \| probe/value = "
                ),
                "Job succeeded",
            ],
        ),
        Scenario(
            "rl-change",
            "a change to images/rl rebuilds and passes",
            change_rl,
            0,
            [
                "verify: smoke run of manifests/dqn-cartpole.yaml (images/rl/ changed)",
                re.compile(r"Successfully tagged harness/rl:[0-9a-f]{16}"),
                re.compile(
                    r"\| `manifests/dqn-cartpole\.yaml` \| `dqn-cartpole-[0-9a-f]+` \| completed \| charts/episodic_return = "
                ),
                "verify: SKIP manifests/gpu-matmul.yaml",
                "Job succeeded",
            ],
        ),
        Scenario(
            "bad-manifest",
            "a manifest with an error fails with an annotation naming its file and line",
            add_bad_manifest,
            1,
            [
                f"::error file=manifests/scenario-bad.yaml,line={bad_manifest_line(clone)}::seeds: seed -1 must be",
                "Job failed",
            ],
        ),
        Scenario(
            "stale-lock",
            "a stale lockfile fails with a message saying how to fix it",
            stale_lockfile,
            1,
            [
                "::error file=lockfiles/noop.txt,line=2::stale lockfile: noop: requirements.in changed",
                "run `harness lock images/noop` and commit lockfiles/noop.txt",
                "Job failed",
            ],
        ),
    ]


def run_scenario(clone: Path, scenario: Scenario, logs: Path) -> tuple[bool, str, float]:
    """Make the scenario's branch, run the workflow on it, and check its exit status and log."""
    git(clone, "checkout", "-q", "-B", f"scenario-{scenario.name}", BASE)
    scenario.change(clone)
    git(clone, "add", "-A")
    git(clone, "commit", "-q", "-m", f"scenario {scenario.name}: {scenario.title}")
    log = logs / f"{scenario.name}.log"
    started = time.monotonic()
    command = [
        str(SIMULATOR),
        "--fresh-engine",
        "--workflow",
        WORKFLOW,
        "--base",
        BASE,
        "--head",
        f"scenario-{scenario.name}",
        "--log",
        str(log),
        str(clone),
    ]
    # its own process group, so that a scenario past its time is stopped whole (act, the engine)
    runner = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True
    )
    try:
        _, stderr = runner.communicate(timeout=SCENARIO_TIMEOUT_S)
        timed_out = False
    except subprocess.TimeoutExpired:
        stderr = stop_group(runner)
        timed_out = True
    seconds = time.monotonic() - started
    text = ANSI.sub("", log.read_text(errors="replace")) if log.is_file() else ""
    problems = []
    if timed_out:
        problems.append(f"did not end within {SCENARIO_TIMEOUT_S} s (stopped)")
    elif runner.returncode == 2:
        problems.append(f"the simulator could not run it: {stderr.strip().splitlines()[-1:]}")
    elif runner.returncode != scenario.exit_status:
        problems.append(f"exit status {runner.returncode}, expected {scenario.exit_status}")
    for expected in scenario.expected:
        found = expected.search(text) if isinstance(expected, re.Pattern) else expected in text
        if not found:
            problems.append(f"log lacks {expected.pattern if isinstance(expected, re.Pattern) else expected!r}")
    if SPINNER.search(text):
        problems.append("log has spinner frames (CI output must be plain lines)")
    return not problems, "; ".join(problems), seconds


def main(argv: list[str]) -> int:
    if not SIMULATOR.is_file():
        print(
            f"ci-scenarios: SKIP: no simulated GitHub runner at ../shared/ci-sim/run-workflow.sh "
            f"(looked for {SIMULATOR}); the workflow scenarios did not run"
        )
        return 0
    if os.geteuid() != 0:
        print(
            "ci-scenarios: needs root (the simulator adds the runner user and starts a Docker engine)", file=sys.stderr
        )
        return 2
    state = Path(os.environ.get("CI_SCENARIOS_HOME", "/var/tmp/harness-ci-scenarios"))
    state.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix="run-", dir=state))
    clone = scratch / "project"
    # a clone of what is committed here: the scenarios are branches on top of HEAD
    subprocess.run(["git", "clone", "-q", "--no-local", str(REPO), str(clone)], check=True)
    git(clone, "checkout", "-q", "-B", BASE, git(REPO, "rev-parse", "HEAD").strip())
    chosen = [s for s in scenarios(clone) if not argv or s.name in argv]
    unknown = set(argv) - {s.name for s in scenarios(clone)}
    if unknown:
        print(f"ci-scenarios: unknown scenario(s) {', '.join(sorted(unknown))}", file=sys.stderr)
        return 2
    results = []
    for scenario in chosen:
        print(f"ci-scenarios: {scenario.name}: {scenario.title} ...", flush=True)
        ok, why, seconds = run_scenario(clone, scenario, scratch)
        results.append((scenario, ok, why, seconds))
        print(
            f"ci-scenarios: {'PASS' if ok else 'FAIL'} {scenario.name} ({seconds:.0f} s){': ' + why if why else ''}",
            flush=True,
        )
    shutil.rmtree(clone, ignore_errors=True)
    total = sum(seconds for *_, seconds in results)
    failed = [scenario.name for scenario, ok, *_ in results if not ok]
    print(
        f"ci-scenarios: {len(results) - len(failed)} of {len(results)} behaved as stated in {total:.0f} s; "
        f"logs in {scratch}"
    )
    # keep the logs of the last few runs only
    for old in sorted(state.glob("run-*"), key=lambda p: p.stat().st_mtime)[:-5]:
        shutil.rmtree(old, ignore_errors=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
