"""Temporal shift ("No News is Good News", Ngo et al. 2021), in miniature.

Claim: a language model trained on text of one period models later text worse, and the
perplexity grows with the gap between the training period and the test period.

Miniature: the corpus is the dated entries of the Debian package changelogs that ship inside the
image (``/usr/share/doc/*/changelog.Debian.gz``; one entry = the change lines of one upload, dated
by its trailer line; identical entries of packages built from one source are kept once). The
image pins the corpus: it is whatever the image's Debian packages carry. A character-level
n-gram model with Witten-Bell interpolation is trained on the entries of the first period (minus
a random held-out tenth); its perplexity per character is measured on the held-out tenth (gap 0)
and on each later period, on the same number of characters per period, taken as the first
``--entry-chars`` characters of as many shuffled entries as that needs: a sample of whole entries
is only a handful of them at smoke size, and one long odd entry (a list of CVE ids, a pasted log)
then decides a period's perplexity, enough to reverse the ordering on some corpora and seeds.

Metrics (step = index of the period, 0 = held-out part of the training period):
``temporal/perplexity``, ``temporal/gap_years`` (from the middle of the training period),
``temporal/eval_chars``, ``temporal/unknown_char_rate``; summary ``temporal/perplexity_slope_per_year``
(least-squares slope of perplexity on gap) and ``temporal/train_chars``.
Artifacts: ``temporal_shift.json`` (periods, counts, corpus sha256), ``temporal_shift.png``.
"""

from __future__ import annotations

import argparse
import collections
import email.utils
import glob
import gzip
import hashlib
import json
import math
import os
import random
import re
from pathlib import Path

import numpy as np

from harness import track

TRAILER = re.compile(r"^ -- .*?>\s+(\S.*)$")
UNKNOWN = "\x00"


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--corpus-glob", default="/usr/share/doc/*/changelog.Debian.gz")
    parser.add_argument(
        "--periods", default="1995-2008,2009-2014,2015-2020,2021-2026",
        help="comma-separated year ranges; the model is trained on the first",
    )
    parser.add_argument("--order", type=int, default=5, help="n-gram order (characters of context + 1)")
    parser.add_argument("--eval-chars", type=int, default=20000, help="characters evaluated per period (at most)")
    parser.add_argument(
        "--entry-chars", type=int, default=300, help="characters of one entry at most in an evaluation sample"
    )
    parser.add_argument("--heldout", type=float, default=0.1, help="share of training-period entries held out")
    parser.add_argument("--seed", type=int, default=1)
    return parser.parse_args()


def read_entries(pattern: str) -> tuple[list[tuple[int, str]], list[str], str]:
    """(year, text) of each distinct changelog entry, the files read, and the corpus sha256."""
    entries: dict[str, int] = {}
    files = sorted(glob.glob(pattern))
    for path in files:
        with gzip.open(path, "rt", encoding="utf-8", errors="replace") as handle:
            body: list[str] = []
            for line in handle:
                line = line.rstrip("\n")
                match = TRAILER.match(line)
                if match:
                    try:
                        year = email.utils.parsedate_to_datetime(match.group(1)).year
                    except (TypeError, ValueError):
                        body = []
                        continue
                    text = "\n".join(body).strip()
                    if text:
                        entries.setdefault(text, year)
                    body = []
                elif line.startswith("  "):
                    body.append(line.strip())
    ordered = sorted((year, text) for text, year in entries.items())
    digest = hashlib.sha256("\x1e".join(f"{y}\x1f{t}" for y, t in ordered).encode()).hexdigest()
    return ordered, files, digest


def parse_periods(text: str) -> list[tuple[int, int]]:
    periods = []
    for part in text.split(","):
        first, _, last = part.strip().partition("-")
        periods.append((int(first), int(last or first)))
    return periods


class CharNgram:
    """Character n-gram model, Witten-Bell interpolated down to a uniform distribution."""

    def __init__(self, text: str, order: int):
        self.order = order
        self.alphabet = sorted(set(text)) + [UNKNOWN]
        self.known = set(self.alphabet)
        self.counts: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)
        padded = "\n" * (order - 1) + text
        for i in range(order - 1, len(padded)):
            for k in range(order):
                self.counts[padded[i - k : i]][padded[i]] += 1
        self.totals = {h: sum(c.values()) for h, c in self.counts.items()}

    def prob(self, history: str, char: str) -> float:
        p = 1.0 / len(self.alphabet)
        for k in range(0, self.order):  # from the empty context up to order-1 characters
            h = history[len(history) - k :] if k else ""
            counter = self.counts.get(h)
            if counter is None:
                break
            types, total = len(counter), self.totals[h]
            p = (counter.get(char, 0) + types * p) / (total + types)
        return p

    def perplexity(self, text: str) -> tuple[float, float]:
        """Per-character perplexity of ``text`` and its rate of characters unseen in training."""
        text = "".join(c if c in self.known else UNKNOWN for c in text)
        padded = "\n" * (self.order - 1) + text
        nll = 0.0
        for i in range(self.order - 1, len(padded)):
            nll -= math.log(self.prob(padded[i - self.order + 1 : i], padded[i]))
        return math.exp(nll / max(len(text), 1)), text.count(UNKNOWN) / max(len(text), 1)


def take_chars(entries: list[str], limit: int, per_entry: int) -> str:
    """The first ``per_entry`` characters of each entry, joined by blank lines, up to ``limit``."""
    parts, size = [], 0
    for text in entries:
        if size >= limit:
            break
        text = text[:per_entry]
        parts.append(text)
        size += len(text) + 2
    return "\n\n".join(parts)[:limit]


def save_figure(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    ax.plot([r["gap_years"] for r in rows], [r["perplexity"] for r in rows], marker="o")
    for r in rows:
        ax.annotate(r["label"], (r["gap_years"], r["perplexity"]), fontsize=8, textcoords="offset points", xytext=(4, 4))
    ax.set_xlabel("gap from the training period (years)")
    ax.set_ylabel("perplexity per character")
    ax.set_title("Temporal shift on Debian changelog entries")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    args = parse_args()
    random.seed(args.seed)
    out = Path(os.environ.get("HARNESS_OUT", "."))
    entries, files, digest = read_entries(args.corpus_glob)
    if not entries:
        raise SystemExit(f"no dated changelog entries under {args.corpus_glob}")
    periods = parse_periods(args.periods)
    by_period = [[t for y, t in entries if first <= y <= last] for first, last in periods]

    train_period = by_period[0][:]
    random.Random(args.seed).shuffle(train_period)
    cut = max(1, int(len(train_period) * args.heldout))
    heldout, train = train_period[:cut], train_period[cut:]
    train_text = "\n\n".join(train)
    model = CharNgram(train_text, args.order)
    track.log({"temporal/train_chars": len(train_text), "temporal/train_entries": len(train)}, step=0)

    middle = (periods[0][0] + periods[0][1]) / 2
    sets = [(f"{periods[0][0]}-{periods[0][1]} held out", 0.0, heldout)]
    for (first, last), texts in zip(periods[1:], by_period[1:]):
        shuffled = texts[:]
        random.Random(args.seed).shuffle(shuffled)
        sets.append((f"{first}-{last}", (first + last) / 2 - middle, shuffled))

    rows = []
    for index, (label, gap, texts) in enumerate(sets):
        sample = take_chars(texts, args.eval_chars, args.entry_chars)
        if not sample:
            print(f"period {label}: no entries, skipped")
            continue
        perplexity, unknown = model.perplexity(sample)
        row = {"label": label, "gap_years": gap, "perplexity": perplexity, "eval_chars": len(sample),
               "entries": len(texts), "unknown_char_rate": unknown}
        rows.append(row)
        track.log({"temporal/perplexity": perplexity, "temporal/gap_years": gap,
                   "temporal/eval_chars": len(sample), "temporal/unknown_char_rate": unknown}, step=index)
        print(f"{label:>24}  gap {gap:5.1f} y  perplexity {perplexity:.3f}  ({len(sample)} chars, {len(texts)} entries)")

    slope = float(np.polyfit([r["gap_years"] for r in rows], [r["perplexity"] for r in rows], 1)[0]) if len(rows) > 1 else 0.0
    track.log({"temporal/perplexity_slope_per_year": slope}, step=len(sets))
    result = {"args": vars(args), "corpus_sha256": digest, "files": len(files), "entries": len(entries),
              "rows": rows, "perplexity_slope_per_year": slope}
    (out / "temporal_shift.json").write_text(json.dumps(result, indent=1))
    save_figure(rows, out / "temporal_shift.png")


if __name__ == "__main__":
    main()
