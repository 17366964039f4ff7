"""Architectural constraints as measurable errors (after Gavranović et al. 2024).

Claim (categorical deep learning): an architecture is an algebra that satisfies constraints —
a set layer commutes with permutations (equivariance), a recurrent network is a fold of its cell
over a list. An implementation either satisfies the constraint it claims (up to floating-point
rounding) or it does not, and that is measurable.

Miniature, with random inputs and seeded weights, over ``--trials`` random permutations:

* permutation-equivariance error ``max|f(P x) - P f(x)| / max|f(x)|`` of a DeepSets layer
  (``x W + mean(x) V``), of self-attention without positions (a transformer encoder layer),
  of the same layer with sinusoidal positional encodings added, and with a causal mask: the
  first two are equivariant (error near float32 eps), the last two are not (error of order 1);
* the invariance error of DeepSets sum pooling;
* an RNN cell (``torch.nn.GRUCell``) folded over a list with ``functools.reduce`` vs the same
  computation written out step by step (must be exactly equal), vs the fold split at a point
  (``fold(xs ++ ys) == fold(ys, fold(xs))``, exactly equal), and vs ``torch.nn.GRU`` with the
  same weights (a different kernel of the same algebra: equal up to rounding).

Metrics (step = trial): ``constraints/<name>`` for each error above; summary (step = trials)
``constraints/<name>_max`` and ``constraints/float32_eps``. Artifacts: ``constraints.json``,
``constraints.png``.
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import os
import random
from pathlib import Path

import numpy as np
import torch

from harness import track


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--trials", type=int, default=20, help="random inputs and permutations")
    parser.add_argument("--set-size", type=int, default=32, help="elements per set / sequence length")
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--threads", type=int, default=1)
    return parser.parse_args()


def seed_everything(seed: int, threads: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(True)
    torch.set_num_threads(threads)


class DeepSetsLayer(torch.nn.Module):
    """Permutation-equivariant set layer: each element mixed with the set's mean."""

    def __init__(self, dim: int):
        super().__init__()
        self.element = torch.nn.Linear(dim, dim)
        self.context = torch.nn.Linear(dim, dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: (batch, set, dim)
        return torch.tanh(self.element(x) + self.context(x.mean(dim=1, keepdim=True)))


def sinusoidal_positions(length: int, dim: int) -> torch.Tensor:
    position = torch.arange(length).unsqueeze(1)
    frequency = torch.exp(torch.arange(0, dim, 2) * (-math.log(10000.0) / dim))
    table = torch.zeros(length, dim)
    table[:, 0::2] = torch.sin(position * frequency)
    table[:, 1::2] = torch.cos(position * frequency)
    return table


def relative_error(a: torch.Tensor, b: torch.Tensor, scale: torch.Tensor) -> float:
    return ((a - b).abs().max() / scale.abs().max()).item()


def save_figure(maxima: dict[str, float], eps: float, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    floor = 1e-12  # exact zeros are drawn on this floor
    names = list(maxima)
    fig, ax = plt.subplots(figsize=(7.5, 4.2))
    ax.barh(names, [max(maxima[n], floor) for n in names])
    ax.axvline(eps, color="red", lw=1, label="float32 eps")
    ax.set_xscale("log")
    ax.set_xlabel("largest error over trials (bars at 1e-12: exactly 0)")
    ax.set_title("How far each layer is from the constraint it claims")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


@torch.no_grad()
def main() -> None:
    args = parse_args()
    seed_everything(args.seed, args.threads)
    out = Path(os.environ.get("HARNESS_OUT", "."))
    n, dim = args.set_size, args.dim

    deepsets = DeepSetsLayer(dim).eval()
    attention = torch.nn.TransformerEncoderLayer(dim, args.heads, dim_feedforward=2 * dim, dropout=0.0, batch_first=True).eval()
    positions = sinusoidal_positions(n, dim)
    causal = torch.nn.Transformer.generate_square_subsequent_mask(n)
    cell = torch.nn.GRUCell(dim, dim).eval()
    gru = torch.nn.GRU(dim, dim, batch_first=True).eval()
    for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"):
        getattr(gru, f"{name}_l0").copy_(getattr(cell, name))

    layers = {
        "deepsets_equivariance_error": deepsets,
        "attention_nopos_equivariance_error": attention,
        "attention_pos_equivariance_error": lambda x: attention(x + positions),
        "attention_causal_equivariance_error": lambda x: attention(x, src_mask=causal, is_causal=True),
    }
    per_trial: dict[str, list[float]] = {}
    for trial in range(args.trials):
        x = torch.randn(1, n, dim)
        perm = torch.randperm(n)
        errors = {}
        for name, layer in layers.items():
            fx = layer(x)
            errors[name] = relative_error(layer(x[:, perm]), fx[:, perm], fx)
        pooled = deepsets(x).sum(dim=1)
        errors["deepsets_sum_invariance_error"] = relative_error(deepsets(x[:, perm]).sum(dim=1), pooled, pooled)

        xs = list(x[0].unsqueeze(1))  # n inputs of shape (1, dim)
        h0 = torch.zeros(1, dim)
        folded = functools.reduce(lambda h, xt: cell(xt, h), xs, h0)
        unrolled = h0
        for t in range(n):
            unrolled = cell(xs[t], unrolled)
        split = random.Random(args.seed + trial).randrange(1, n)
        two_folds = functools.reduce(lambda h, xt: cell(xt, h), xs[split:], functools.reduce(lambda h, xt: cell(xt, h), xs[:split], h0))
        fused = gru(x, h0.unsqueeze(0))[1][0]
        errors["rnn_fold_vs_unrolled_max_abs"] = (folded - unrolled).abs().max().item()
        errors["rnn_fold_concat_vs_two_folds_max_abs"] = (folded - two_folds).abs().max().item()
        errors["rnn_fold_vs_fused_gru_max_abs"] = (folded - fused).abs().max().item()

        track.log({f"constraints/{k}": v for k, v in errors.items()}, step=trial)
        for key, value in errors.items():
            per_trial.setdefault(key, []).append(value)

    eps = torch.finfo(torch.float32).eps
    maxima = {key: max(values) for key, values in per_trial.items()}
    track.log({**{f"constraints/{k}_max": v for k, v in maxima.items()}, "constraints/float32_eps": eps}, step=args.trials)
    (out / "constraints.json").write_text(json.dumps({"args": vars(args), "float32_eps": eps, "max": maxima, "trials": per_trial}, indent=1))
    save_figure(maxima, eps, out / "constraints.png")
    for key, value in maxima.items():
        print(f"{key:>40}: {value:.3e}  ({value / eps:.1f} eps)")


if __name__ == "__main__":
    main()
