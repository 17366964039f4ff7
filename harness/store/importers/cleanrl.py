"""CleanRL's Hub model repos (``{entity}/{env_id}-{exp_name}-seed{seed}``, ``library_name: cleanrl``).

What CleanRL's ``push_to_hub`` writes: ``README.md`` (metadata with the evaluation
``mean_reward: "mean +/- std"``, a "Command to reproduce the training" block, the
hyper-parameters), the training script, ``pyproject.toml`` and ``poetry.lock``, the TensorBoard
events file of the training run, the weights (``*.cleanrl_model``, a torch pickle: never
downloaded) and videos.

The command becomes an argument list without a shell: ``--seed`` becomes ``{seed}``, every other
``--flag value`` a param, and the flags that track, upload, record videos or call CleanRL's own
evaluation package (``cleanrl_utils``, which the repo does not carry) are dropped and listed.
"""

from __future__ import annotations

import ast
import hashlib
import re
import shlex
from collections.abc import Mapping
from typing import Any

import yaml

from harness.errors import HarnessError
from harness.store.importers.base import ImportedRun, RepoFile, RepoImportError, RepoSnapshot
from harness.store.importers.poetry import Target, lockfile_for_script, python_requirement
from harness.store.importers.script import MAX_SCRIPT_BYTES, script_imports
from harness.util.safefs import printable

CARD = "README.md"
PYPROJECT = "pyproject.toml"
LOCK = "poetry.lock"
MAX_CARD_BYTES = 1 << 20
MAX_PYPROJECT_BYTES = 1 << 20
MAX_LOCK_BYTES = 32 << 20
MAX_EVENTS_BYTES = 512 << 20
COMMAND_HEADING = "## Command to reproduce the training"
BASE_IMAGE = "harness/base:bullseye"
PYTHON = "3.9"  # Debian bullseye's; CleanRL's lock allows >=3.8,<3.11
TENSORBOARD = "runs"  # CleanRL scripts write SummaryWriter(f"runs/{run_name}") in their working folder
# flags that reach outside the sandbox, record video or need cleanrl_utils (not in the repo)
DROPPED_SWITCHES = ("--track", "--upload-model", "--capture-video", "--save-model")
DROPPED_WITH_VALUE = ("--hf-entity", "--wandb-project-name", "--wandb-entity")
EVALUATION = re.compile(r"^\s*(-?\d+(?:\.\d+)?(?:[eE][-+]?\d+)?)\s*\+/-\s*(\d+(?:\.\d+)?(?:[eE][-+]?\d+)?)\s*$")
SEED_SUFFIX = re.compile(r"-seed(\d{1,9})$")
BOOL_WORDS = {"true", "false"}


class NoAliasLoader(yaml.SafeLoader):
    """Safe YAML without anchors or aliases (a card's metadata cannot expand)."""

    def compose_node(self, parent, index):  # type: ignore[no-untyped-def]
        if self.check_event(yaml.AliasEvent):
            raise yaml.YAMLError("anchors and aliases are not allowed")
        return super().compose_node(parent, index)


def card_metadata(card: str) -> dict[str, Any]:
    """The YAML front matter of a model card ({} when it has none)."""
    if not card.startswith("---"):
        return {}
    end = card.find("\n---", 3)
    if end < 0:
        return {}
    try:
        data = yaml.load(card[3:end], Loader=NoAliasLoader)  # a safe loader
    except yaml.YAMLError:
        return {}
    return data if isinstance(data, dict) else {}


def evaluation_of(metadata: Mapping[str, Any]) -> tuple[float, float] | None:
    """(mean, std) of the card's ``mean_reward`` evaluation, if it states one."""
    for model in metadata.get("model-index") or []:
        for result in (model.get("results") or []) if isinstance(model, dict) else []:
            for metric in (result.get("metrics") or []) if isinstance(result, dict) else []:
                if isinstance(metric, dict) and metric.get("type") == "mean_reward":
                    match = EVALUATION.match(str(metric.get("value", ""))[:100])
                    if match:
                        return float(match.group(1)), float(match.group(2))
    return None


def fenced_block_after(card: str, heading: str) -> str | None:
    """The first fenced code block after ``heading`` (None when there is none)."""
    at = card.find(heading)
    if at < 0:
        return None
    start = card.find("```", at)
    if start < 0:
        return None
    body_start = card.find("\n", start)
    end = card.find("```", body_start + 1) if body_start >= 0 else -1
    if end < 0:
        return None
    return card[body_start + 1 : end]


def hyperparameters(card: str) -> dict[str, Any]:
    """The card's ``# Hyperparameters`` dict, read as a literal (never evaluated); {} when unreadable."""
    block = fenced_block_after(card, "# Hyperparameters")
    if block is None or len(block) > 64 << 10:
        return {}
    try:
        value = ast.literal_eval(block.strip())
    except (ValueError, SyntaxError, RecursionError, MemoryError, TypeError):
        return {}
    return value if isinstance(value, dict) else {}


def _scalar(text: str) -> Any:
    """A command-line value as a param: an int or float when it prints back the same, else text."""
    try:
        if str(int(text)) == text:
            return int(text)
    except ValueError:
        pass
    try:
        if repr(float(text)) == text:
            return float(text)
    except ValueError:
        pass
    return text


def _literal(text: str) -> str:
    return text.replace("{", "{{").replace("}", "}}")


def command_of(line: str, shown: str) -> tuple[str, list[str], dict[str, Any], list[str], int | None]:
    """(script, command with placeholders, params, dropped flags, seed) of ``python script.py ARGS``."""
    try:
        words = shlex.split(line)
    except ValueError as exc:
        raise RepoImportError(f"{shown}: the training command cannot be split into arguments ({exc})") from None
    if len(words) < 2 or words[0] not in ("python", "python3") or not words[1].endswith(".py"):
        raise RepoImportError(f"{shown}: the training command {printable(line, 120)!r} is not `python <script>.py ...`")
    script = words[1]
    if "/" in script or script.startswith("."):
        raise RepoImportError(f"{shown}: the training script {printable(script)!r} is not a file at the repo's root")
    command = ["python", f"/workload/{script}"]
    params: dict[str, Any] = {}
    dropped: list[str] = []
    seed: int | None = None
    rest = words[2:]
    index = 0
    while index < len(rest):
        word = rest[index]
        if not word.startswith("--") or len(word) < 3:
            command.append(_literal(word))
            index += 1
            continue
        flag, has_inline, inline = word.partition("=")
        following = rest[index + 1] if index + 1 < len(rest) else None
        takes_value = has_inline or (following is not None and not following.startswith("--"))
        value = inline if has_inline else following if takes_value else None
        index += 1 if has_inline or not takes_value else 2
        if flag in DROPPED_SWITCHES:
            if value is not None and value.lower() not in BOOL_WORDS:
                index -= 0 if has_inline else 1  # the next word was not this switch's value
                value = None
            dropped.append(flag if value is None else f"{flag} {value}")
            continue
        if flag in DROPPED_WITH_VALUE:
            dropped.append(flag if value is None else f"{flag} {value}")
            continue
        if flag == "--seed" and value is not None:
            try:
                seed = int(value)
            except ValueError:
                raise RepoImportError(f"{shown}: --seed {printable(value)!r} is not a number") from None
            command += ["--seed", "{seed}"]
            continue
        name = flag[2:].replace("-", "_")
        if value is None or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]{0,63}", name) or name in params:
            command.append(_literal(word))
            if value is not None and not has_inline:
                command.append(_literal(value))
            continue
        params[name] = _scalar(value)
        command += [flag, f"{{{name}}}"]
    if seed is None:
        command += ["--seed", "{seed}"]
    return script, command, params, dropped, seed


class CleanRLImporter:
    """CleanRL's model repos (see the module docstring)."""

    format = "cleanrl"

    def detect(self, files: Mapping[str, RepoFile], card: bytes | None) -> bool:
        """A repo with a poetry.lock and a card that says ``library_name: cleanrl``."""
        if LOCK not in files or card is None:
            return False
        return card_metadata(card.decode("utf-8", errors="replace")).get("library_name") == "cleanrl"

    def wanted(self, files: Mapping[str, RepoFile]) -> list[str]:
        """The card, pyproject, lock, root-level scripts and the events files; never weights or videos."""
        return sorted(
            path
            for path in files
            if path in (CARD, PYPROJECT, LOCK)
            or ("/" not in path and path.endswith(".py"))
            or ("tfevents" in path.rsplit("/", 1)[-1] and not path.startswith("videos/"))
        )

    def read(self, snapshot: RepoSnapshot) -> ImportedRun:
        """One seed repo as an ImportedRun."""
        shown = f"{snapshot.repo}@{snapshot.revision[:12]}"
        card = snapshot.read(CARD, MAX_CARD_BYTES).decode("utf-8", errors="replace")
        metadata = card_metadata(card)
        block = fenced_block_after(card, COMMAND_HEADING)
        if block is None:
            raise RepoImportError(f"{shown}: {CARD} has no {COMMAND_HEADING!r} block; nothing says how it was trained")
        lines = [line.strip() for line in block.splitlines() if line.strip().startswith(("python ", "python3 "))]
        if not lines:
            raise RepoImportError(f"{shown}: {CARD}'s {COMMAND_HEADING!r} block has no `python <script>.py` line")
        script, command, params, dropped, seed = command_of(lines[-1], f"{shown}: {CARD}")
        hyper = hyperparameters(card)
        if seed is None:
            seed = hyper.get("seed") if isinstance(hyper.get("seed"), int) else None
        if seed is None:
            match = SEED_SUFFIX.search(snapshot.repo)
            seed = int(match.group(1)) if match else None
        if seed is None:
            raise RepoImportError(f"{shown}: no seed in the command, the hyper-parameters or the repo name")
        if script not in snapshot.files:
            raise RepoImportError(f"{shown}: the card trains with {printable(script)} but the repo has no such file")
        source = snapshot.read(script, MAX_SCRIPT_BYTES)
        for required in (PYPROJECT, LOCK):
            if required not in snapshot.files:
                raise RepoImportError(f"{shown}: no {required}: the environment it trained in is not pinned")
        pyproject = snapshot.read(PYPROJECT, MAX_PYPROJECT_BYTES)
        lock = snapshot.read(LOCK, MAX_LOCK_BYTES)
        try:
            locked = lockfile_for_script(
                lock, pyproject, script_imports(source, f"{shown}: {script}"), Target(python=PYTHON)
            )
        except HarnessError as exc:
            raise RepoImportError(f"{shown}: {exc}") from None
        events = sorted(p for p in self.wanted(snapshot.files) if "tfevents" in p.rsplit("/", 1)[-1])
        if not events:
            raise RepoImportError(f"{shown}: no TensorBoard events file: the published curves are missing")
        for path in events:
            if snapshot.files[path].size > MAX_EVENTS_BYTES:
                raise RepoImportError(f"{shown}: {printable(path)} is larger than {MAX_EVENTS_BYTES} bytes")
        evaluation: dict[str, float] = {}
        stated = evaluation_of(metadata)
        if stated is not None:
            evaluation = {"eval/mean_reward": stated[0], "eval/std_reward": stated[1]}
        env_id = str(params.get("env_id") or hyper.get("env_id") or "")
        exp_name = str(params.get("exp_name") or hyper.get("exp_name") or script[: -len(".py")])
        base = SEED_SUFFIX.sub("", snapshot.repo.split("/")[-1]) or f"{env_id}-{exp_name}"
        name = re.sub(r"[^a-z0-9._-]+", "-", base.lower()).strip("-._")[:63] or "cleanrl-import"
        notes = []
        if locked.unresolved_imports:
            notes.append(f"imports not in the lock: {', '.join(locked.unresolved_imports)}")
        header = [
            f"Imported by `harness import` from a CleanRL repo's {LOCK} (sha256 {hashlib.sha256(lock).hexdigest()}); do not edit.",
            f"harness: python {PYTHON}",
            f"{len(locked.packages)} of the lock's {locked.locked_total} packages: what {script} imports "
            f"({', '.join(locked.roots)}) and their dependencies on Python {PYTHON}, Linux x86_64.",
        ]
        requirement = python_requirement_of(pyproject)
        return ImportedRun(
            format=self.format,
            repo=snapshot.repo,
            revision=snapshot.revision,
            name=name,
            seed=seed,
            command=command,
            params=params,
            dropped=dropped,
            workload={script: source},
            lockfile=locked.text(header),
            base_image=BASE_IMAGE,
            python=PYTHON,
            tensorboard=TENSORBOARD,
            events=events,
            evaluation=evaluation,
            # the lock's pins only: which CPU, GPU, CUDA build and Python ran it, a CleanRL repo does not say
            environment={"packages": locked.pins, "python_requirement": requirement},
            notes=notes,
            sources={CARD: card.encode(), PYPROJECT: pyproject, LOCK: lock},
        )


def python_requirement_of(pyproject: bytes) -> str | None:
    """The pyproject's Python constraint, or None when it cannot be read."""
    from harness.store.importers.poetry import parse_toml

    try:
        return python_requirement(parse_toml(pyproject, PYPROJECT))
    except HarnessError:
        return None
