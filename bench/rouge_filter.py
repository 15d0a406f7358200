"""ROUGE-L near-duplicate filter: bioinstruct.rougel against Alpaca's rouge-score loop.

    python bench/rouge_filter.py --pool 25000      # the full benchmark (a few minutes)
    python bench/rouge_filter.py --quick           # small sizes, seconds (CI)

One candidate stream: real instruction-like text from ../shared/data (Self-Instruct seed
tasks, the Alpaca prompt's lines, PubMedQA questions, MedMCQA questions) interleaved with
synthetic near-duplicates of it (word drops, swaps, replacements, splices, case changes,
text without a single ASCII letter), so that many pairs sit near the 0.7 threshold. The
seed tasks start the pool; candidates are offered in order until the pool holds --pool
instructions.

In one run it
  * times Alpaca's loop (rouge-score, one process) on a sample of pairs and extrapolates
    the cost per pair to every pair of the full run;
  * runs the full stream through RougeLPool with details=True and details=False;
  * runs the first --verify candidates through both the reference loop and RougeLPool and
    counts identical decisions (and, with details, identical nearest/top/mean);
  * prints a table and the speed-up.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path
from typing import Iterator

import numpy as np
from rouge_score import rouge_scorer

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bioinstruct.rougel import RougeLPool  # noqa: E402
from bioinstruct.table import format_table  # noqa: E402

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
# Text that rouge-score turns into no tokens at all (no [a-z0-9] after lower()).
NO_TOKENS = ["β-αδρενεργικός", "—", "", "；。", "Ωμέγα ζήτα"]


def real_texts(data: Path) -> tuple[list[str], list[str]]:
    """(seed instructions, other real instruction-like texts) from ../shared/data."""
    seeds = [json.loads(line)["instruction"]
             for line in (data / "self_instruct" / "seed_tasks.jsonl").open() if line.strip()]
    prompt = [line.strip() for line in (data / "stanford_alpaca" / "prompt.txt").open()
              if line.strip()]
    pubmedqa = [r["QUESTION"] for r in json.loads((data / "pubmedqa" / "ori_pqal.json").read_text()).values()]
    medmcqa = [json.loads(line)["question"]
               for line in (data / "medmcqa" / "dev.json").open() if line.strip()]
    return seeds, prompt + pubmedqa + medmcqa


def synthetic_texts(rng: random.Random, n: int) -> list[str]:
    words = ("patient drug dose renal acute chronic which following most likely diagnosis "
             "treatment explain summarize classify describe list the of in a is with").split()
    return [" ".join(rng.choice(words) for _ in range(rng.randint(4, 25))).capitalize()
            for _ in range(n)]


def perturb(rng: random.Random, text: str, other: str, vocab: list[str]) -> str:
    """A near-duplicate of ``text``: its strength is random, so both verdicts occur."""
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
        if len(out) > 1:
            i = rng.randrange(len(out) - 1)
            out[i], out[i + 1] = out[i + 1], out[i]
    return " ".join(out)


def candidate_stream(real: list[str], seed: int = 0) -> Iterator[str]:
    """Real texts in a random order, each followed by near-duplicates of random texts."""
    rng = random.Random(seed)
    real = real[:]
    rng.shuffle(real)
    vocab = sorted({w for t in real for w in t.split()})
    for i in range(10**9):
        if i < len(real):
            yield real[i]
        for _ in range(rng.choice((1, 2, 3)) if i < len(real) else 1):
            yield perturb(rng, rng.choice(real), rng.choice(real), vocab)


class AlpacaReference:
    """Stanford Alpaca's filter loop, rouge-score and numpy only (the ground truth)."""

    def __init__(self, seeds: list[str], threshold: float = 0.7, top_k: int = 10):
        self.scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)
        self.pool = [self.scorer._tokenizer.tokenize(s) for s in seeds]
        self.threshold, self.top_k = threshold, top_k

    def scores(self, text: str) -> tuple[list[str], list[float]]:
        tokens = self.scorer._tokenizer.tokenize(text)
        return tokens, [rouge_scorer._score_lcs(tokens, p).fmeasure for p in self.pool]

    def offer(self, text: str) -> tuple[bool, tuple[int, float] | None, list[tuple[int, float]], float]:
        tokens, scores = self.scores(text)
        best = max(scores)
        keep = best <= self.threshold
        nearest = (scores.index(best), best) if best > 0 else None
        top = sorted(((-s, i) for i, s in enumerate(scores) if s > 0))[: self.top_k]
        mean = float(np.mean(scores))
        if keep:
            self.pool.append(tokens)
        return keep, nearest, [(i, -s) for s, i in top], mean


def run_pool(seeds: list[str], stream: Iterator[str], pool_size: int, details: bool,
             limit: int | None = None) -> tuple[list, int, float]:
    """Offer candidates until the pool holds ``pool_size`` (or ``limit`` candidates)."""
    pool = RougeLPool(details=details)
    for s in seeds:
        pool.add(s)
    verdicts, pairs = [], 0
    start = time.perf_counter()
    for text in stream:
        if len(pool) >= pool_size or (limit is not None and len(verdicts) >= limit):
            break
        pairs += len(pool)
        verdicts.append(pool.offer(text))
    return verdicts, pairs, time.perf_counter() - start


def summary(v) -> tuple:
    nearest = (v.nearest.index, v.nearest.score) if v.nearest else None
    return v.keep, nearest, [(m.index, m.score) for m in v.top], v.mean


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pool", type=int, default=25000, help="pool size to reach (25000)")
    parser.add_argument("--verify", type=int, default=1500,
                        help="candidates run through both implementations (1500)")
    parser.add_argument("--sample", type=int, default=20000, help="reference pairs to time (20000)")
    parser.add_argument("--quick", action="store_true", help="pool 2000, verify 150, sample 3000")
    args = parser.parse_args()
    if args.quick:
        args.pool, args.verify, args.sample = 2000, 150, 3000

    if DATA.is_dir():
        seeds, real = real_texts(DATA)
        print(f"data: {len(seeds)} seed tasks + {len(real)} real texts from {DATA}")
    else:
        rng = random.Random(1)
        seeds, real = synthetic_texts(rng, 175), synthetic_texts(rng, 5000)
        print(f"data: {DATA} not found; synthetic text only (numbers are not comparable)")

    # Full runs through RougeLPool, both modes: identical decisions are required.
    fast, fast_pairs, fast_s = run_pool(seeds, candidate_stream(real), args.pool, details=False)
    detail, detail_pairs, detail_s = run_pool(seeds, candidate_stream(real), args.pool, details=True)
    n = len(detail)
    assert fast_pairs == detail_pairs and [v.keep for v in fast] == [v.keep for v in detail], \
        "details=True and details=False disagree"
    kept = sum(v.keep for v in detail)
    print(f"stream: {n} candidates, {kept} kept, pool {len(seeds)} -> {len(seeds) + kept}, "
          f"{detail_pairs:,} pairs")

    # The reference on the first --verify candidates, compared verdict by verdict.
    reference = AlpacaReference(seeds)
    head = list(zip(range(args.verify), candidate_stream(real)))
    same = sum(reference.offer(text) == summary(detail[i]) for i, text in head)
    same_fast = sum(reference_keep == v.keep for reference_keep, v in
                    zip((summary(detail[i])[0] for i, _ in head), fast))
    verified = f"{same}/{len(head)}"

    # The reference's cost per pair, on pairs drawn from the whole run's pool.
    rng = random.Random(2)
    pool_texts = seeds + [t for t, v in zip(candidate_stream(real), detail) if v.keep]
    texts = [rng.choice(pool_texts) for _ in range(200)]
    scorer = AlpacaReference(rng.sample(pool_texts, min(len(pool_texts), args.sample // 200)))
    start = time.perf_counter()
    for text in texts:
        scorer.scores(text)
    ref_us = (time.perf_counter() - start) / (len(texts) * len(scorer.pool)) * 1e6
    ref_s = ref_us * detail_pairs / 1e6

    rows = [["reference (extrapolated)", f"{detail_pairs:,}", f"{ref_s:,.0f}", f"{ref_us:.2f}",
             "1x", "-"]]
    for name, secs, ok in (("bioinstruct details", detail_s, verified),
                           ("bioinstruct fast", fast_s, f"{same_fast}/{len(head)}")):
        rows.append([name, f"{detail_pairs:,}", f"{secs:.1f}", f"{secs / detail_pairs * 1e6:.3f}",
                     f"{ref_s / secs:,.0f}x", ok])
    print(format_table(["", "pairs", "seconds", "µs/pair", "speed-up", "decisions identical"], rows))
    print(f"speed-up: {ref_s / detail_s:,.0f}x with details, {ref_s / fast_s:,.0f}x fast")
    if same != len(head) or same_fast != len(head):
        sys.exit("MISMATCH against the reference")


if __name__ == "__main__":
    main()
