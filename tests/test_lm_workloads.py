"""The LM workloads (images/lm/workload/) run with their manifests' smoke params show each paper's
effect in direction, write their figure, and give bit-identical metrics on a second run.

Each workload runs on the host exactly as its manifest's smoke command says (the image's
/workload/ path mapped to images/lm/workload/), twice at once, with ``from harness import track``
writing ``$HARNESS_OUT/metrics.jsonl``.
"""

from __future__ import annotations

import itertools
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from harness.manifest import load_manifest
from harness.run.plan import expand
from tests.conftest import HUB_TOKEN

ROOT = Path(__file__).resolve().parents[1]
WORKLOADS = ROOT / "images" / "lm" / "workload"
RUN_TIMEOUT_S = 240
FLOAT32_EPS = 2.0**-23

# Metrics that measure time or memory: they differ between runs by nature.
TIMING = ("_tokens_per_s", "_step_time_s", "_mfu", "_peak_memory_mb", "ddp_speedup")


def smoke_command(manifest: str) -> list[str]:
    """The manifest's smoke command for its first seed, pointed at the workloads in this checkout."""
    (spec,) = expand(load_manifest(ROOT / "manifests" / manifest), smoke=True)[:1]
    command = spec.command()
    assert command[0] == "python" and command[1].startswith("/workload/")
    return [sys.executable, str(WORKLOADS / command[1].removeprefix("/workload/")), *command[2:]]


def read_metrics(out: Path) -> dict[str, dict[int, float]]:
    """metrics.jsonl as {name: {step: value}}."""
    metrics: dict[str, dict[int, float]] = {}
    for line in (out / "metrics.jsonl").read_text().splitlines():
        point = json.loads(line)
        metrics.setdefault(point["name"], {})[point["step"]] = point["value"]
    return metrics


def run_twice(manifest: str, tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, dict, Path]:
    """Run a manifest's smoke command twice at once; both runs' metrics and the first run's output."""
    command = smoke_command(manifest)
    outs = [tmp_path_factory.mktemp(manifest.removesuffix(".yaml")) for _ in range(2)]
    processes = []
    for out in outs:
        env = {
            **os.environ,
            "HARNESS_OUT": str(out),
            "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
            "MPLCONFIGDIR": str(out.parent / f"{out.name}-mpl"),
        }
        processes.append(
            subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        )
    for process in processes:
        output, _ = process.communicate(timeout=RUN_TIMEOUT_S)
        assert process.returncode == 0, f"{' '.join(command)} failed:\n{output[-3000:]}"
    return read_metrics(outs[0]), read_metrics(outs[1]), outs[0]


def assert_identical(first: dict, second: dict, skip: tuple[str, ...] = ()) -> None:
    """Same metric names, steps and values, bit for bit (NaN equal to NaN), except ``skip`` suffixes."""
    assert first.keys() == second.keys()
    for name in first:
        if name.endswith(skip):
            continue
        a, b = first[name], second[name]
        assert a.keys() == b.keys(), name
        for step in a:
            same = a[step] == b[step] or (math.isnan(a[step]) and math.isnan(b[step]))
            assert same, f"{name} at step {step}: {a[step]!r} != {b[step]!r}"


@pytest.fixture(scope="module")
def collapse(tmp_path_factory):
    return run_twice("lm-collapse.yaml", tmp_path_factory)


@pytest.fixture(scope="module")
def filtration(tmp_path_factory):
    return run_twice("lm-filtration.yaml", tmp_path_factory)


@pytest.fixture(scope="module")
def temporal_shift(tmp_path_factory):
    if not list(Path("/usr/share/doc").glob("*/changelog.Debian.gz")):
        pytest.skip("no Debian changelogs on this host (the image has them)")
    return run_twice("lm-temporal-shift.yaml", tmp_path_factory)


@pytest.fixture(scope="module")
def throughput(tmp_path_factory):
    return run_twice("lm-throughput.yaml", tmp_path_factory)


@pytest.fixture(scope="module")
def constraints(tmp_path_factory):
    return run_twice("lm-constraints.yaml", tmp_path_factory)


def test_collapse_bf16_collapses_before_fp32_and_separators_stay_apart(collapse):
    metrics, again, out = collapse
    first_bf16 = metrics["collapse/first_equal_n_bf16"]
    (bf16_n,) = first_bf16.values()
    assert bf16_n > 0, "bf16 representations never became identical"
    fp32_n = next(iter(metrics["collapse/first_equal_n_fp32"].values()))
    assert fp32_n == 0 or fp32_n > bf16_n, "fp32 collapsed no later than bf16"
    # Past the collapse point bf16 cannot tell n from n+1 while fp32 and the separated sequences can.
    linf_bf16 = metrics["collapse/linf_bf16"]
    assert linf_bf16[bf16_n] == 0.0
    assert metrics["collapse/linf_fp32"][bf16_n] > 0.0
    assert metrics["collapse/sep_linf_bf16"][bf16_n] > 0.0
    assert metrics["collapse/sep_l2_fp32"][bf16_n] > metrics["collapse/l2_fp32"][bf16_n]
    # In fp32 the distance shrinks as n grows (attention averages over more identical tokens).
    l2 = metrics["collapse/l2_fp32"]
    steps = sorted(l2)
    assert l2[steps[-1]] < l2[steps[0]] / 100
    assert (out / "collapse.png").stat().st_size > 0
    assert_identical(metrics, again)


def test_filtration_separates_labels_and_removal_falls_with_threshold(filtration):
    metrics, again, out = filtration
    # The max over triggers is the score the workload filters by; the mean is recorded beside it.
    assert metrics["filtration/auroc_max"][0] > 0.6
    assert 0.0 <= metrics["filtration/auroc_mean"][0] <= 1.0
    thresholds = metrics["filtration/threshold"]
    removed = metrics["filtration/removed_fraction"]
    steps = sorted(thresholds)
    assert [thresholds[s] for s in steps] == sorted(thresholds[s] for s in steps)
    assert all(removed[a] >= removed[b] for a, b in itertools.pairwise(steps))
    assert removed[steps[0]] == 1.0 and removed[steps[-1]] < 0.1
    # At every threshold the score removes undesirable documents at least as readily as benign ones.
    recall, benign = metrics["filtration/removed_undesirable_fraction"], metrics["filtration/removed_benign_fraction"]
    assert sum(recall.values()) > sum(benign.values())
    losses = metrics["losses/train_loss"]
    assert losses[max(losses)] < losses[min(losses)] / 2
    assert (out / "filtration.png").stat().st_size > 0
    assert_identical(metrics, again)


def test_temporal_shift_perplexity_rises_with_gap(temporal_shift):
    metrics, again, out = temporal_shift
    perplexity, gap = metrics["temporal/perplexity"], metrics["temporal/gap_years"]
    steps = sorted(perplexity)
    assert len(steps) >= 3
    assert [gap[s] for s in steps] == sorted(gap[s] for s in steps)
    assert perplexity[steps[-1]] > perplexity[steps[0]] * 1.3
    assert all(perplexity[s] > perplexity[steps[0]] for s in steps[1:])
    assert next(iter(metrics["temporal/perplexity_slope_per_year"].values())) > 0
    assert json.loads((out / "temporal_shift.json").read_text())["corpus_sha256"]
    assert (out / "temporal_shift.png").stat().st_size > 0
    assert_identical(metrics, again)


def test_throughput_records_both_modes_with_matching_losses(throughput):
    metrics, again, out = throughput
    for mode in ("single", "ddp"):
        for name in ("tokens_per_s", "step_time_s", "mfu", "peak_memory_mb"):
            (value,) = metrics[f"throughput/{mode}_{name}"].values()
            assert value > 0, f"{mode} {name} = {value}"
    assert metrics["throughput/world_size"][0] == 2
    # Same global batches: data-parallel computes the single-process updates, up to rounding.
    single, ddp = metrics["losses/single_loss"], metrics["losses/ddp_loss"]
    assert single.keys() == ddp.keys()
    assert all(abs(single[s] - ddp[s]) < 1e-4 * abs(single[s]) for s in single)
    assert single[max(single)] < single[0]
    assert (out / "throughput.png").stat().st_size > 0
    assert_identical(metrics, again, skip=TIMING)


def test_constraints_equivariant_layers_at_eps_and_positional_ones_far(constraints):
    metrics, again, out = constraints
    final = {name: values[max(values)] for name, values in metrics.items() if name.endswith("_max")}
    assert final["constraints/deepsets_equivariance_error_max"] < 16 * FLOAT32_EPS
    assert final["constraints/attention_nopos_equivariance_error_max"] < 16 * FLOAT32_EPS
    assert final["constraints/deepsets_sum_invariance_error_max"] < 16 * FLOAT32_EPS
    assert final["constraints/attention_pos_equivariance_error_max"] > 1e-2
    assert final["constraints/attention_causal_equivariance_error_max"] > 1e-2
    assert final["constraints/rnn_fold_vs_unrolled_max_abs_max"] == 0.0
    assert final["constraints/rnn_fold_concat_vs_two_folds_max_abs_max"] == 0.0
    assert final["constraints/rnn_fold_vs_fused_gru_max_abs_max"] < 16 * FLOAT32_EPS
    assert (out / "constraints.png").stat().st_size > 0
    assert_identical(metrics, again)


def test_pretrained_variant_loads_a_pinned_model_from_the_hub(tmp_path, monkeypatch, hub):
    """The ``--model-repo``/``--model-revision`` path (the pretrained manifests) against the test hub:
    a small GPT-2 and word-level tokenizer are published as a model repo, and the workloads load
    them by commit (safetensors only), measure, and log."""
    import torch
    from huggingface_hub import HfApi
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

    # The vocabulary comes from the workload's own templates; no __pycache__ in the image context.
    sys.path.insert(0, str(WORKLOADS))
    monkeypatch.setattr(sys, "dont_write_bytecode", True)
    try:
        import filtration
    finally:
        sys.path.remove(str(WORKLOADS))
    texts = filtration.BENIGN + filtration.UNDESIRABLE + filtration.TRIGGERS
    words = sorted(
        {w for t in texts for w in t.split()} | {w for v in filtration.SLOTS.values() for p in v for w in p.split()}
    )
    vocab = {w: i for i, w in enumerate(["<unk>", "1", "0", ",", "."] + [w for w in words if w not in "10,."])}
    word_level = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    word_level.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    model_dir = tmp_path / "model"
    PreTrainedTokenizerFast(tokenizer_object=word_level, unk_token="<unk>").save_pretrained(model_dir)
    torch.manual_seed(0)
    config = GPT2Config(
        vocab_size=len(vocab), n_positions=512, n_embd=32, n_layer=2, n_head=2, bos_token_id=0, eos_token_id=0
    )
    GPT2LMHeadModel(config).save_pretrained(model_dir, safe_serialization=True)

    api = HfApi(endpoint=hub.url, token=HUB_TOKEN)
    api.create_repo("lab/tiny-gpt2")
    revision = api.upload_folder(repo_id="lab/tiny-gpt2", folder_path=model_dir).oid
    assert len(revision) == 40
    env = {
        **os.environ,
        "HF_ENDPOINT": hub.url,
        "HF_HOME": str(tmp_path / "hf"),
        "HF_HUB_DISABLE_XET": "1",
        "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
    }
    pin = ["--model-repo", "lab/tiny-gpt2", "--model-revision", revision]
    runs = {
        "collapse": [str(WORKLOADS / "collapse.py"), "--max-n", "64", *pin],
        "filtration": [str(WORKLOADS / "filtration.py"), "--eval-docs", "20", *pin],
    }
    for name, args in runs.items():
        out = tmp_path / name
        out.mkdir()
        result = subprocess.run(
            [sys.executable, *args],
            env={**env, "HARNESS_OUT": str(out), "MPLCONFIGDIR": str(tmp_path / "mpl")},
            capture_output=True,
            text=True,
            timeout=RUN_TIMEOUT_S,
        )
        assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
        metrics = read_metrics(out)
        if name == "collapse":
            l2 = metrics["collapse/l2_fp32"]
            assert min(l2) == 2 and max(l2) == 64 and all(v >= 0 for v in l2.values())
        else:
            assert 0.0 <= metrics["filtration/auroc_max"][0] <= 1.0
            assert "losses/train_loss" not in metrics  # scored by the pinned model, not trained here
