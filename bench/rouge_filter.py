"""ROUGE-L near-duplicate filter: bioinstruct.similarity.rougel against Alpaca's rouge-score loop.

    python bench/rouge_filter.py --pool 25000      # the full benchmark (~2 minutes)
    python bench/rouge_filter.py --quick           # small sizes, seconds (CI)

One candidate stream: real instruction-like text from ../shared/data (PubMedQA and MedMCQA
questions, the Alpaca prompt's lines) interleaved with synthetic near-duplicates of it and
of the Self-Instruct seed tasks (word drops, swaps, replacements, splices, case changes,
text without a single [a-z0-9] character), so that many pairs sit near the 0.7 threshold.
The seed tasks start the pool; candidates are offered in order until the pool holds
--pool instructions. In one run it

  * runs the full stream through RougeLPool with details=False (offer, one at a time) and
    details=True (offer_many), and checks that the two agree on every decision;
  * runs the first --verify candidates through Alpaca's loop (rouge-score, one process)
    and compares every decision, and with details also nearest, top-10 and mean;
  * times rouge-score's _score_lcs, as Alpaca calls it, on --sample pairs drawn uniformly
    from the full run's pairs and extrapolates the cost per pair to all of them;
  * prints a table and the speed-up.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import random
import sys
import time
from pathlib import Path
from typing import Iterator

import numpy as np
from rouge_score.rouge_scorer import _score_lcs as rouge_lcs

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bioinstruct.modeling.metrics import rouge_scorer  # noqa: E402
from bioinstruct.similarity.rougel import RougeLPool, Verdict  # noqa: E402
from bioinstruct.reporting.tables import format_table  # noqa: E402

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
# Texts with no [a-z0-9] after lower(): rouge-score gives them no tokens and scores them 0.
NO_TOKENS = ["β-αδρενεργικός", "—", "", "；。", "Ωμέγα ζήτα"]


def real_texts(data: Path) -> tuple[list[str], list[str]]:
    """(seed instructions, other real instruction-like texts) from ../shared/data."""
    def jsonl(path: Path, key: str) -> list[str]:
        return [json.loads(line)[key] for line in path.open(encoding="utf-8") if line.strip()]

    seeds = jsonl(data / "self_instruct" / "seed_tasks.jsonl", "instruction")
    prompt = [line.strip() for line in (data / "stanford_alpaca" / "prompt.txt").open(encoding="utf-8")
              if line.strip()]
    pubmedqa = json.loads((data / "pubmedqa" / "ori_pqal.json").read_text(encoding="utf-8"))
    medmcqa = jsonl(data / "medmcqa" / "dev.json", "question")  # JSON Lines despite the name
    return seeds, prompt + [r["QUESTION"] for r in pubmedqa.values()] + medmcqa


def synthetic_texts(rng: random.Random, n: int) -> list[str]:
    words = ("patient drug dose renal acute chronic which following most likely diagnosis "
             "treatment explain summarize classify describe list the of in a is with").split()
    return [" ".join(rng.choice(words) for _ in range(rng.randint(4, 25))).capitalize()
            for _ in range(n)]


def perturb(rng: random.Random, text: str, other: str, vocab: list[str]) -> str:
    """A near-duplicate of ``text`` of random strength, so that both verdicts occur."""
    if rng.random() < 0.01:
        return rng.choice(NO_TOKENS)
    words, strength = text.split(), rng.uniform(0.0, 0.6)
    if rng.random() < 0.3:  # splice: the head of one text, the tail of another
        tail = other.split()
        words = words[: rng.randint(0, len(words))] + tail[rng.randint(0, len(tail)):]
    out = []
    for w in words:
        r = rng.random()
        if r < strength / 3:
            continue
        if r < 2 * strength / 3:
            w = rng.choice(vocab)
        if rng.random() < 0.05:
            w = w.upper() if rng.random() < 0.5 else w.title()
        out.append(w)
    for _ in range(int(strength * len(out) / 3)):
        i = rng.randrange(len(out) - 1)
        out[i], out[i + 1] = out[i + 1], out[i]
    return " ".join(out)


def candidate_stream(seeds: list[str], real: list[str], seed: int = 0) -> Iterator[str]:
    """Real texts in a random order, each followed by 1-3 near-duplicates of random texts;
    near-duplicates only once the real texts run out."""
    rng = random.Random(seed)
    real = real[:]
    rng.shuffle(real)
    bases = seeds + real
    vocab = sorted({w for t in bases for w in t.split()})
    for i in itertools.count():
        if i < len(real):
            yield real[i]
        for _ in range(rng.randint(1, 3) if i < len(real) else 1):
            yield perturb(rng, rng.choice(bases), rng.choice(bases), vocab)


class AlpacaReference:
    """Stanford Alpaca's filter loop with rouge-score and numpy only: the ground truth."""

    def __init__(self, seeds: list[str], threshold: float = 0.7, top_k: int = 10):
        self.scorer = rouge_scorer(("rougeL",), False)
        self.pool = [self.scorer._tokenizer.tokenize(s) for s in seeds]
        self.threshold, self.top_k = threshold, top_k

    def offer(self, text: str) -> tuple:
        """(keep, nearest (index, score) or None, top [(index, score)], mean), as summary()."""
        tokens = self.scorer._tokenizer.tokenize(text)
        scores = [rouge_lcs(tokens, p).fmeasure for p in self.pool]
        best = max(scores)
        nearest = (scores.index(best), best) if best > 0 else None
        top = sorted((-s, i) for i, s in enumerate(scores) if s > 0)[: self.top_k]
        mean = float(np.mean(scores))
        if best <= self.threshold:
            self.pool.append(tokens)
        return best <= self.threshold, nearest, [(i, -s) for s, i in top], mean


def summary(v: Verdict) -> tuple:
    nearest = (v.nearest.index, v.nearest.score) if v.nearest else None
    return v.keep, nearest, [(m.index, m.score) for m in v.top], v.mean


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pool", type=int, default=25000, help="pool size to reach (25000)")
    parser.add_argument("--verify", type=int, default=1500,
                        help="first candidates run through both implementations (1500)")
    parser.add_argument("--sample", type=int, default=20000,
                        help="pairs timed with rouge-score for the extrapolation (20000)")
    parser.add_argument("--quick", action="store_true", help="--pool 2000 --verify 150 --sample 2000")
    args = parser.parse_args()
    if args.quick:
        args.pool, args.verify, args.sample = 2000, 150, 2000

    if DATA.is_dir():
        seeds, real = real_texts(DATA)
        print(f"data: {len(seeds)} seed tasks + {len(real)} real texts from {DATA}")
    else:
        rng = random.Random(1)
        seeds, real = synthetic_texts(rng, 175), synthetic_texts(rng, 5000)
        print(f"data: {DATA} not found, synthetic text only (timings are not comparable)")

    # details=False, one candidate at a time, until the pool is full: fixes the stream.
    fast = RougeLPool(details=False)
    for s in seeds:
        fast.add(s)
    stream = candidate_stream(seeds, real)
    texts, fast_verdicts, sizes = [], [], []  # sizes: the pool size each candidate met
    start = time.perf_counter()
    while len(fast) < args.pool:
        texts.append(next(stream))
        sizes.append(len(fast))
        fast_verdicts.append(fast.offer(texts[-1]))
    fast_s = time.perf_counter() - start
    pairs = sum(sizes)

    detail = RougeLPool(details=True)
    for s in seeds:
        detail.add(s)
    start = time.perf_counter()
    verdicts = detail.offer_many(texts)
    detail_s = time.perf_counter() - start
    agree = [v.keep for v in verdicts] == [v.keep for v in fast_verdicts]
    print(f"stream: {len(texts):,} candidates, {sum(v.keep for v in verdicts):,} kept, pool "
          f"{len(seeds)} -> {len(detail):,}, {pairs:,} pairs; details and fast agree on every "
          f"decision: {agree}")

    reference = AlpacaReference(seeds)
    head = texts[: args.verify]
    start = time.perf_counter()
    expected = [reference.offer(t) for t in head]
    verify_s = time.perf_counter() - start
    same_detail = sum(e[:3] == summary(v)[:3] and e[3] == v.mean
                      for e, v in zip(expected, verdicts))
    same_fast = sum(e[0] == v.keep for e, v in zip(expected, fast_verdicts))
    verify_pairs = sum(sizes[: len(head)])
    print(f"reference: the first {len(head):,} candidates, {verify_pairs:,} pairs, in "
          f"{verify_s:.0f} s ({verify_s / verify_pairs * 1e6:.1f} µs/pair with np.mean and top-k)")

    # A uniform sample of the full run's pairs: (candidate, pool item it was scored against).
    rng = np.random.default_rng(2)
    tokenize = reference.scorer._tokenizer.tokenize
    pool_tokens = [tokenize(t) for t in seeds] + [tokenize(t) for t, v in zip(texts, verdicts) if v.keep]
    ends = np.cumsum(sizes)
    draws = rng.integers(0, pairs, args.sample)
    rows_i = np.searchsorted(ends, draws, side="right")
    sample = [(tokenize(texts[i]), pool_tokens[d - ends[i] + sizes[i]]) for i, d in zip(rows_i, draws)]
    start = time.perf_counter()
    for a, b in sample:
        rouge_lcs(a, b)
    ref_us = (time.perf_counter() - start) / len(sample) * 1e6
    ref_s = ref_us * pairs / 1e6

    n = len(head)
    rows = [["reference (extrapolated)", f"{pairs:,}", f"{ref_s:,.0f}", f"{ref_us:.2f}", "1x", "-"],
            ["bioinstruct details", f"{pairs:,}", f"{detail_s:.1f}", f"{detail_s / pairs * 1e6:.4f}",
             f"{ref_s / detail_s:,.0f}x", f"{same_detail}/{n} (+nearest, top, mean)"],
            ["bioinstruct fast", f"{pairs:,}", f"{fast_s:.1f}", f"{fast_s / pairs * 1e6:.4f}",
             f"{ref_s / fast_s:,.0f}x", f"{same_fast}/{n}"]]
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    print(f"\n{cpus} CPUs, reference single-process, cost per pair from "
          f"{len(sample):,} sampled pairs\n")
    print(format_table(["", "pairs", "seconds", "µs/pair", "speed-up", "decisions identical"], rows))
    print(f"\nspeed-up over rouge-score: {ref_s / detail_s:,.0f}x (details), {ref_s / fast_s:,.0f}x (fast)")
    if not agree or same_detail != n or same_fast != n:
        sys.exit("MISMATCH against the reference")


if __name__ == "__main__":
    main()
