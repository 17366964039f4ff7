"""``harness init``: a valid starting manifest (and, for a new image, its recipe) for a contributor.

Each starter runs as it is (``harness run manifests/NAME.yaml --smoke``) so a submission starts
from something green and changes one thing at a time.
"""

from __future__ import annotations

from pathlib import Path

from harness.errors import HarnessError
from harness.manifest import NAME

IMAGES = ("rl", "lm", "noop", "new")

_HEADER = """\
apiVersion: harness/v1
name: {name}
description: >-
  TODO: one paragraph: what this experiment measures and what a reproduction must show.
  {about}
"""

# The part after the header, per image: command, params, seeds, hardware, metrics, smoke.
_BODIES = {
    "rl": """\
image: {{build: images/rl, lockfile: lockfiles/rl.txt}}
command: [python, /workload/dqn.py, --env-id, "{{env_id}}", --seed, "{{seed}}",
          --total-timesteps, "{{total_timesteps}}", --learning-starts, "{{learning_starts}}"]
params: {{env_id: CartPole-v1, total_timesteps: 50000, learning_starts: 5000}}
seeds: [1, 2, 3]
hardware: {{accelerator: cpu, gpus: 0, cpus: 1, memory: 2GiB, timeout: 20m}}
metrics: {{primary: charts/episodic_return, summary_last_n: 10}}
expect: {{deterministic: true, ignore: [charts/SPS]}}
smoke: {{total_timesteps: 2000, learning_starts: 500}}
tags: [rl]
""",
    "lm": """\
image: {{build: images/lm, lockfile: lockfiles/lm.txt}}
command: [python, /workload/constraints.py, --trials, "{{trials}}", --set-size, "{{set_size}}", --dim, "{{dim}}", --seed, "{{seed}}"]
params: {{trials: 20, set_size: 32, dim: 64}}
seeds: [1]
hardware: {{accelerator: cpu, gpus: 0, cpus: 1, memory: 2GiB, timeout: 10m}}
metrics: {{primary: constraints/attention_nopos_equivariance_error_max}}
expect: {{deterministic: true}}
smoke: {{trials: 5}}
tags: [lm]
""",
    "noop": """\
image: {{build: images/noop, lockfile: lockfiles/noop.txt}}
command: [python, /workload/probe.py, --mode, "{{mode}}", --seconds, "{{seconds}}", --megabytes, "{{megabytes}}", --seed, "{{seed}}"]
params: {{mode: ok, seconds: 5, megabytes: 64}}
seeds: [0]
hardware: {{accelerator: cpu, gpus: 0, cpus: 1, memory: 256MiB, timeout: 5m}}
metrics: {{primary: probe/value}}
expect: {{deterministic: true}}
smoke: {{seconds: 1}}
tags: [example]
""",
    "new": """\
image: {{build: images/{name}, lockfile: lockfiles/{name}.txt}}
command: [python, /workload/main.py, --steps, "{{steps}}", --seed, "{{seed}}"]
params: {{steps: 1000}}
seeds: [1, 2]
hardware: {{accelerator: cpu, gpus: 0, cpus: 1, memory: 1GiB, timeout: 10m}}
metrics: {{primary: charts/mean}}
expect: {{deterministic: true}}
smoke: {{steps: 100}}
tags: [example]
""",
}

_ABOUT = {
    "rl": "Starts from images/rl/workload/dqn.py (DQN, CleanRL style); point the command at your own file there.",
    "lm": "Starts from images/lm/workload/constraints.py; point the command at your own file there.",
    "noop": "Starts from the probe of images/noop (a tiny image, seconds to run): replace it with a real workload.",
    "new": "Its own image: images/{name}/ (Dockerfile, requirements.in, workload/main.py).",
}

_RECIPE = """\
{header}
# Stage 1 installs the locked packages with hashes from wheels the harness staged under
# .harness-build/ (with pip's configuration and an extra CA bundle if one is needed);
# stage 2 copies only the virtual environment, so none of that reaches the final image.
ARG BASE={base}
FROM ${{BASE}} AS builder
COPY .harness-build/ /harness-build/
COPY lockfile.txt /harness-build/lockfile.txt
ENV PIP_CONFIG_FILE=/harness-build/pip.conf PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
RUN python3 -m venv /opt/venv \\
 && /opt/venv/bin/pip install --no-compile --no-index --find-links /harness-build/wheels \\
      --require-hashes --no-deps -r /harness-build/lockfile.txt \\
 && find /opt/venv -name '__pycache__' -prune -exec rm -rf {{}} +

FROM ${{BASE}}
COPY --from=builder /opt/venv /opt/venv
COPY workload/ /workload/
ENV PATH=/opt/venv/bin:/usr/sbin:/usr/bin:/sbin:/bin PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1
WORKDIR {workdir}
"""


def recipe_dockerfile(header: str, base: str = "harness/base:bookworm", workdir: str = "/workload") -> str:
    """The two-stage Dockerfile of a locked recipe (``harness init --image new``, ``harness import``):
    ``header`` (comment lines) first, then the hashed install from staged wheels on ``base``."""
    return _RECIPE.format(header=header, base=base, workdir=workdir)


_REQUIREMENTS = """\
# Direct dependencies of the {name} image; `harness lock images/{name}` pins them with hashes
# into lockfiles/{name}.txt. A wheel that PyPI lacks needs its public index named here, e.g.
#   --extra-index-url https://download.pytorch.org/whl/cpu     (torch==X.Y.Z+cpu)
numpy
"""

_WORKLOAD = '''\
"""The {name} workload: one readable file, arguments at the top, metrics as charts/... and losses/...

Replace the loop with the experiment. It runs in the sandbox: no network, a read-only root,
$HARNESS_OUT for files; `track.log` writes metrics that the harness records while it runs.
"""

import argparse

import numpy as np

from harness import track


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()

    rng = np.random.default_rng(args.seed)
    total = 0.0
    for step in range(1, args.steps + 1):
        total += float(rng.normal())
        if step % 10 == 0:
            track.log({{"charts/mean": total / step}}, step=step)
    print(f"mean of {{args.steps}} normal draws: {{total / args.steps:.6f}}")


if __name__ == "__main__":
    main()
'''


def manifest_text(name: str, image: str) -> str:
    """The starter manifest of ``name`` on ``image`` (one of IMAGES)."""
    return _HEADER.format(name=name, about=_ABOUT[image].format(name=name)) + _BODIES[image].format(name=name)


def scaffold(root: Path, name: str, image: str, force: bool = False) -> list[Path]:
    """Write ``manifests/NAME.yaml`` (and for ``new``, ``images/NAME/``) under ``root``.

    Returns the files written. Refuses a bad name, an unknown image or existing files
    (``force`` overwrites the manifest only; an image folder is never overwritten)."""
    if not NAME.match(name) or ".." in name:
        raise HarnessError(
            f"NAME {name!r}: use lower-case letters, digits, '.', '_' or '-' (at most 63), starting with a letter or digit"
        )
    if image not in IMAGES:
        raise HarnessError(f"--image {image!r}: one of {', '.join(IMAGES)}")
    manifest = root / "manifests" / f"{name}.yaml"
    if manifest.exists() and not force:
        raise HarnessError(f"{manifest.relative_to(root)}: exists (choose another NAME, or --force to overwrite)")
    written: list[Path] = []
    if image == "new":
        image_dir = root / "images" / name
        if image_dir.exists():
            raise HarnessError(
                f"images/{name}: exists (use --image {name if name in IMAGES else 'rl|lm|noop'} "
                "for an existing image, or choose another NAME)"
            )
        if (root / "lockfiles" / f"{name}.txt").exists():
            raise HarnessError(f"lockfiles/{name}.txt: exists without images/{name}; remove it or choose another NAME")
        (image_dir / "workload").mkdir(parents=True)
        header = f"# The {name} image. The base image comes from `harness image bootstrap` (or a registry)."
        for relative, text in (
            ("Dockerfile", recipe_dockerfile(header)),
            ("requirements.in", _REQUIREMENTS.format(name=name)),
            ("workload/main.py", _WORKLOAD.format(name=name)),
        ):
            path = image_dir / relative
            path.write_text(text, encoding="utf-8")
            written.append(path)
    else:
        recipe = root / "images" / image
        if not (recipe / "Dockerfile").is_file():
            raise HarnessError(f"images/{image}: no such image recipe here (run `harness init` in the project's root)")
    manifest.parent.mkdir(parents=True, exist_ok=True)
    manifest.write_text(manifest_text(name, image), encoding="utf-8")
    written.append(manifest)
    return written
