"""Representational collapse (Barbero et al. 2024, "Transformers need glasses!"), in miniature.

Claim: in a decoder-only transformer the final-layer representation of the last token of
``1 1 ... 1 0`` (n ones) and of the same sequence with n+1 ones converge as n grows, because
attention averages over ever more identical tokens; in low precision (bfloat16) they become
exactly equal at a finite n, so no readout can tell the two sequences apart. Separators between
the ones (the paper's remedy, ``1 1 1 , 1 1 1 , ... 0``) keep the representations further apart.

Miniature: an untrained Llama-style decoder built from a transformers config with a fixed seed
(small init, so attention is close to uniform averaging: the paper's argument), or a pinned
pretrained model when ``--model-repo`` is given. For n on a geometric grid up to ``--max-n`` we
log the L1, L2 and L-infinity distances between the two last-token representations, in float32
and bfloat16, with and without separators, and the first n at which they are exactly equal.

Metrics (step = n): ``collapse/{l1,l2,linf}_{fp32,bf16}`` and ``collapse/sep_{l1,l2,linf}_{fp32,bf16}``;
summary: ``collapse/first_equal_n_{fp32,bf16}`` and ``collapse/sep_first_equal_n_{fp32,bf16}``
(0 = never equal up to max n). Artifacts: ``collapse.json``, ``collapse.png``.
"""

from __future__ import annotations

import argparse
import json
import os
import random
from pathlib import Path

import numpy as np
import torch

from harness import track


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--max-n", type=int, default=4096, help="largest number of ones")
    parser.add_argument("--min-n", type=int, default=2, help="smallest number of ones")
    parser.add_argument("--points-per-octave", type=int, default=4, help="grid density of n (geometric)")
    parser.add_argument("--separator-every", type=int, default=3, help="a separator after every k ones")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--hidden-size", type=int, default=64)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--model-repo", default="", help="pretrained causal LM on the Hub (empty: untrained config model)")
    parser.add_argument("--model-revision", default="", help="40-hex commit of --model-repo")
    parser.add_argument("--threads", type=int, default=1)
    return parser.parse_args()


def seed_everything(seed: int, threads: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(True)
    torch.set_num_threads(threads)


def n_grid(min_n: int, max_n: int, per_octave: int) -> list[int]:
    """Geometric grid of n from min_n to max_n, both included."""
    count = int(np.ceil(np.log2(max_n / min_n) * per_octave)) + 1
    return sorted({int(round(v)) for v in np.geomspace(min_n, max_n, count)})


def build_models(args: argparse.Namespace) -> tuple[torch.nn.Module, torch.nn.Module, dict[str, int]]:
    """The float32 and bfloat16 copies of one decoder, and the ids of the tokens "1", "0", ","."""
    if args.model_repo:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        pin = dict(revision=args.model_revision, trust_remote_code=False)
        tokenizer = AutoTokenizer.from_pretrained(args.model_repo, **pin)
        tokens = {}
        for name, text in (("one", "1"), ("zero", "0"), ("sep", ",")):
            ids = tokenizer.encode(text, add_special_tokens=False)
            if len(ids) != 1:
                raise SystemExit(f"{args.model_repo}: {text!r} is not a single token ({ids})")
            tokens[name] = ids[0]
        models = [
            AutoModelForCausalLM.from_pretrained(args.model_repo, dtype=dtype, use_safetensors=True, attn_implementation="sdpa", **pin)
            for dtype in (torch.float32, torch.bfloat16)
        ]
        return models[0].eval(), models[1].eval(), tokens
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=8,
        hidden_size=args.hidden_size,
        intermediate_size=4 * args.hidden_size,
        num_hidden_layers=args.layers,
        num_attention_heads=args.heads,
        num_key_value_heads=args.heads,
        max_position_embeddings=2 * args.max_n + 16,
        attn_implementation="sdpa",
    )
    fp32 = LlamaForCausalLM(config).eval()
    bf16 = LlamaForCausalLM(config).eval()
    bf16.load_state_dict(fp32.state_dict())
    return fp32, bf16.to(torch.bfloat16), {"one": 1, "zero": 0, "sep": 2}


def sequence(n: int, tokens: dict[str, int], separator_every: int) -> list[int]:
    """n ones then a zero; with separator_every > 0, a separator after every k ones."""
    ids: list[int] = []
    for index in range(n):
        if separator_every and index and index % separator_every == 0:
            ids.append(tokens["sep"])
        ids.append(tokens["one"])
    return ids + [tokens["zero"]]


@torch.no_grad()
def last_token_representation(model: torch.nn.Module, ids: list[int]) -> torch.Tensor:
    """Final-layer hidden state (after the final norm) of the last token, as float32."""
    # base_model skips the LM head (a vocab-sized output per position is not needed)
    output = model.base_model(input_ids=torch.tensor([ids]))
    return output.last_hidden_state[0, -1].float()


def distances(a: torch.Tensor, b: torch.Tensor) -> dict[str, float]:
    diff = (a - b).double()
    return {"l1": diff.abs().sum().item(), "l2": diff.norm().item(), "linf": diff.abs().max().item()}


def save_figure(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    floor = 1e-9  # exact zeros (collapse) are drawn on this floor
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for prefix, label in (("", "1…1 0"), ("sep_", "1 1 1 , … 0")):
        for dtype, style in (("fp32", "-"), ("bf16", "--")):
            ns = [r["n"] for r in rows]
            ys = [max(r[f"{prefix}l2_{dtype}"], floor) for r in rows]
            ax.plot(ns, ys, style, marker=".", label=f"{label}, {dtype}")
    ax.axhline(floor, color="grey", lw=0.5)
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("n (number of ones)")
    ax.set_ylabel("L2 distance, last token, n vs n+1")
    ax.set_title("Representational collapse (points on the floor: identical)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    args = parse_args()
    seed_everything(args.seed, args.threads)
    out = Path(os.environ.get("HARNESS_OUT", "."))
    fp32, bf16, tokens = build_models(args)
    models = {"fp32": fp32, "bf16": bf16}

    rows = []
    first_equal: dict[str, int] = {}
    for n in n_grid(args.min_n, args.max_n, args.points_per_octave):
        row: dict = {"n": n}
        for prefix, every in (("", 0), ("sep_", args.separator_every)):
            short, long = sequence(n, tokens, every), sequence(n + 1, tokens, every)
            for dtype, model in models.items():
                d = distances(last_token_representation(model, short), last_token_representation(model, long))
                for kind, value in d.items():
                    row[f"{prefix}{kind}_{dtype}"] = value
                if d["linf"] == 0.0:
                    first_equal.setdefault(f"{prefix}{dtype}", n)
        rows.append(row)
        track.log({f"collapse/{k}": v for k, v in row.items() if k != "n"}, step=n)

    summary = {
        f"collapse/{prefix}first_equal_n_{dtype}": first_equal.get(f"{prefix}{dtype}", 0)
        for prefix in ("", "sep_")
        for dtype in ("fp32", "bf16")
    }
    track.log(summary, step=args.max_n)
    (out / "collapse.json").write_text(json.dumps({"args": vars(args), "summary": summary, "rows": rows}, indent=1))
    save_figure(rows, out / "collapse.png")
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
