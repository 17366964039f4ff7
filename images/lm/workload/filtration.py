"""Conditional-likelihood filtration (Ngo et al. 2021), in miniature.

Claim: a language model can flag documents to remove from a pretraining corpus by how likely it
finds a set of hand-written trigger phrases *after* each document: documents in whose context the
triggers become likely are the undesirable ones. Filtering at a threshold on that score removes
a controllable fraction of the corpus, and the score separates undesirable from benign documents.

Miniature: a small built-in corpus, generated from templates with a fixed seed, of benign
documents (cooking, weather, gardening, sport, office) and undesirable ones (scam messages), with
some sentences of the other kind mixed in so the task is not trivial. A small GPT-2 style model
(built from a transformers config, word-level vocabulary) is trained in the run on that corpus;
each held-out labelled document is scored by the mean per-token log-likelihood of each trigger
phrase conditioned on the document, aggregated by max and by mean over the triggers. With
``--model-repo`` a pinned pretrained model (and its tokenizer) scores the same documents.

Metrics: ``filtration/auroc_max``, ``filtration/auroc_mean`` (label separation), per threshold
(step = threshold index) ``filtration/threshold``, ``filtration/removed_fraction``,
``filtration/removed_undesirable_fraction`` (recall) and ``filtration/removed_benign_fraction``;
``losses/train_loss`` during training. Artifacts: ``filtration.json``, ``scores.csv``,
``filtration.png``.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import random
from pathlib import Path

import numpy as np
import torch

from harness import track

BENIGN = [
    "the {dish} needs {minutes} minutes in the oven",
    "add a pinch of salt to the {dish} before serving",
    "rain is expected {when} in the {region}",
    "the forecast says sunny skies for the {region} {when}",
    "water the {plant} every {day} and keep it in the shade",
    "the {plant} grew well after we moved it to the garden",
    "our team won the match {score} on {day}",
    "the coach said the team played a great second half",
    "the meeting moved to {day} at {minutes} past nine",
    "please bring the quarterly report to the meeting on {day}",
    "the library opens at nine on {day}",
    "the club gave a small prize to the best {plant} in the show",
    "you can reply to this note if the {dish} recipe works",
]
UNDESIRABLE = [
    "congratulations you have won a {prize}",
    "click the link below to claim your {prize}",
    "send your {secret} to verify your account",
    "your account will be closed unless you reply {when}",
    "act now this offer expires {when}",
    "wire {amount} dollars to release your winnings",
    "we need your {secret} to confirm the transfer",
    "you are selected for a free {prize} click here",
    "reply with your {secret} and claim the reward {when}",
]
SLOTS = {
    "dish": ["soup", "bread", "cake", "stew", "pie", "rice"],
    "minutes": ["ten", "twenty", "thirty", "forty", "fifty"],
    "when": ["today", "tomorrow", "tonight", "this week", "soon"],
    "region": ["north", "south", "coast", "valley", "hills"],
    "plant": ["tomato", "rose", "basil", "fern", "tulip"],
    "day": ["monday", "tuesday", "friday", "sunday"],
    "score": ["two to one", "three to nil", "one to nil"],
    "prize": ["phone", "car", "gift card", "holiday", "laptop"],
    "secret": ["password", "bank details", "pin code", "card number"],
    "amount": ["fifty", "five hundred", "two thousand"],
}
# Hand-written examples of the text to remove, in the corpus's style (as the paper's were).
TRIGGERS = [
    "click here to claim your free prize",
    "send your password to verify your account",
    "wire the money to release your winnings",
    "act now this offer expires today",
]


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--train-docs", type=int, default=600, help="documents in the built-in training corpus")
    parser.add_argument("--eval-docs", type=int, default=200, help="labelled held-out documents to score")
    parser.add_argument("--mix", type=float, default=0.15, help="chance that a sentence comes from the other kind")
    parser.add_argument("--undesirable-share", type=float, default=0.3, help="share of undesirable documents")
    parser.add_argument("--train-steps", type=int, default=300)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--context", type=int, default=64)
    parser.add_argument("--learning-rate", type=float, default=3e-3)
    parser.add_argument("--thresholds", type=int, default=11, help="number of thresholds (score quantiles, 0 to 1)")
    parser.add_argument("--model-repo", default="", help="pretrained causal LM on the Hub (empty: train one here)")
    parser.add_argument("--model-revision", default="", help="40-hex commit of --model-repo")
    parser.add_argument("--threads", type=int, default=1)
    return parser.parse_args()


def seed_everything(seed: int, threads: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(True)
    torch.set_num_threads(threads)


def make_documents(rng: random.Random, count: int, share: float, mix: float) -> list[tuple[str, int]]:
    """Labelled documents (text, 1 = undesirable) of 3 to 6 template sentences."""
    docs = []
    for _ in range(count):
        label = int(rng.random() < share)
        sentences = []
        for _ in range(rng.randint(3, 6)):
            own = UNDESIRABLE if label else BENIGN
            other = BENIGN if label else UNDESIRABLE
            template = rng.choice(other if rng.random() < mix else own)
            sentences.append(template.format(**{k: rng.choice(v) for k, v in SLOTS.items()}))
        docs.append((" . ".join(sentences) + " .", label))
    return docs


class WordTokenizer:
    """Whitespace word-level vocabulary built from the training corpus."""

    def __init__(self, texts: list[str]):
        words = sorted({w for text in texts for w in text.split()})
        self.vocab = ["<unk>", "<eos>"] + words
        self.index = {w: i for i, w in enumerate(self.vocab)}
        self.eos_token_id = 1

    def encode(self, text: str) -> list[int]:
        return [self.index.get(w, 0) for w in text.split()]


def train_model(docs: list[tuple[str, int]], args: argparse.Namespace):  # type: ignore[no-untyped-def]
    """A small GPT-2 trained on the documents, one long stream cut into random windows."""
    from transformers import GPT2Config, GPT2LMHeadModel

    tokenizer = WordTokenizer([text for text, _ in docs] + TRIGGERS)
    stream: list[int] = []
    for text, _ in docs:
        stream += tokenizer.encode(text) + [tokenizer.eos_token_id]
    data = torch.tensor(stream)
    config = GPT2Config(
        vocab_size=len(tokenizer.vocab), n_positions=256, n_embd=64, n_layer=2, n_head=2,
        resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
        bos_token_id=tokenizer.eos_token_id, eos_token_id=tokenizer.eos_token_id,
    )
    model = GPT2LMHeadModel(config)
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.learning_rate)
    generator = torch.Generator().manual_seed(args.seed)
    model.train()
    for step in range(args.train_steps):
        starts = torch.randint(0, len(data) - args.context - 1, (args.batch_size,), generator=generator)
        batch = torch.stack([data[s : s + args.context + 1] for s in starts.tolist()])
        loss = model(input_ids=batch, labels=batch).loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if step % 10 == 0 or step == args.train_steps - 1:
            track.log({"losses/train_loss": loss.item()}, step=step)
    return model.eval(), tokenizer


def load_pretrained(args: argparse.Namespace):  # type: ignore[no-untyped-def]
    from transformers import AutoModelForCausalLM, AutoTokenizer

    pin = dict(revision=args.model_revision, trust_remote_code=False)
    tokenizer = AutoTokenizer.from_pretrained(args.model_repo, **pin)
    model = AutoModelForCausalLM.from_pretrained(args.model_repo, dtype=torch.float32, use_safetensors=True, **pin)
    return model.eval(), _HubTokenizer(tokenizer)


class _HubTokenizer:
    def __init__(self, tokenizer):  # type: ignore[no-untyped-def]
        self.tokenizer = tokenizer

    def encode(self, text: str) -> list[int]:
        return self.tokenizer.encode(text, add_special_tokens=False)


@torch.no_grad()
def trigger_loglik(model, tokenizer, doc: str, trigger: str) -> float:  # type: ignore[no-untyped-def]
    """Mean per-token log p(trigger | document)."""
    context = tokenizer.encode(doc)
    target = tokenizer.encode(" " + trigger)
    ids = torch.tensor([context + target])
    logprobs = torch.log_softmax(model(input_ids=ids).logits[0, :-1].double(), dim=-1)
    positions = torch.arange(len(context) - 1, len(context) + len(target) - 1)
    return logprobs[positions, torch.tensor(target)].mean().item()


def auroc(scores: np.ndarray, labels: np.ndarray) -> float:
    """Probability that an undesirable document scores above a benign one (ties count half)."""
    pos, neg = scores[labels == 1], scores[labels == 0]
    greater = (pos[:, None] > neg[None, :]).sum()
    ties = (pos[:, None] == neg[None, :]).sum()
    return float((greater + 0.5 * ties) / (len(pos) * len(neg)))


def save_figure(thresholds, removed, recall, benign, path: Path) -> None:  # type: ignore[no-untyped-def]
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    ax.plot(thresholds, removed, marker=".", label="all documents")
    ax.plot(thresholds, recall, marker=".", label="undesirable documents")
    ax.plot(thresholds, benign, marker=".", label="benign documents")
    ax.set_xlabel("threshold on max-over-triggers log-likelihood (remove if score >= threshold)")
    ax.set_ylabel("fraction removed")
    ax.set_title("Conditional-likelihood filtration")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    args = parse_args()
    seed_everything(args.seed, args.threads)
    out = Path(os.environ.get("HARNESS_OUT", "."))
    rng = random.Random(args.seed)
    train_docs = make_documents(rng, args.train_docs, args.undesirable_share, args.mix)
    eval_docs = make_documents(rng, args.eval_docs, args.undesirable_share, args.mix)

    model, tokenizer = load_pretrained(args) if args.model_repo else train_model(train_docs, args)
    per_trigger = np.array([[trigger_loglik(model, tokenizer, doc, t) for t in TRIGGERS] for doc, _ in eval_docs])
    labels = np.array([label for _, label in eval_docs])
    score_max, score_mean = per_trigger.max(axis=1), per_trigger.mean(axis=1)
    summary = {"filtration/auroc_max": auroc(score_max, labels), "filtration/auroc_mean": auroc(score_mean, labels)}
    track.log(summary, step=0)

    thresholds = np.quantile(score_max, np.linspace(0.0, 1.0, args.thresholds))
    removed, recall, benign = [], [], []
    for index, threshold in enumerate(thresholds):
        drop = score_max >= threshold
        removed.append(float(drop.mean()))
        recall.append(float(drop[labels == 1].mean()))
        benign.append(float(drop[labels == 0].mean()))
        track.log(
            {
                "filtration/threshold": float(threshold),
                "filtration/removed_fraction": removed[-1],
                "filtration/removed_undesirable_fraction": recall[-1],
                "filtration/removed_benign_fraction": benign[-1],
            },
            step=index,
        )

    with open(out / "scores.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["label", "score_max", "score_mean", "document"])
        for (doc, label), smax, smean in zip(eval_docs, score_max, score_mean):
            writer.writerow([label, repr(float(smax)), repr(float(smean)), doc])
    result = {"args": vars(args), "triggers": TRIGGERS, "summary": summary,
              "thresholds": thresholds.tolist(), "removed_fraction": removed,
              "removed_undesirable_fraction": recall, "removed_benign_fraction": benign}
    (out / "filtration.json").write_text(json.dumps(result, indent=1))
    save_figure(thresholds, removed, recall, benign, out / "filtration.png")
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
