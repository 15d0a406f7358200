"""Metrics of the evaluation tasks, computed from predictions.jsonl rows.

Accuracy and macro-F1 for multiple choice, precision / recall / F1 of extracted items,
ROUGE-1/2/L and embedding similarity for generated text, each with a percentile bootstrap
confidence interval over examples (seeded, so the same predictions give the same interval).
"""

from __future__ import annotations

import functools
import random
import re
import unicodedata
from typing import Callable, Sequence

BOOTSTRAP = 1000


def bootstrap_ci(values: Sequence[float], statistic: Callable[[Sequence[float]], float] | None = None,
                 seed: int = 0, level: float = 0.95) -> tuple[float, float] | None:
    """A percentile bootstrap interval of ``statistic`` (default: the mean) over examples."""
    if len(values) < 2:
        return None
    stat = statistic or (lambda v: sum(v) / len(v))
    rng = random.Random(seed)
    n = len(values)
    draws = sorted(stat([values[rng.randrange(n)] for _ in range(n)]) for _ in range(BOOTSTRAP))
    lo = draws[int((1 - level) / 2 * BOOTSTRAP)]
    hi = draws[min(BOOTSTRAP - 1, int((1 + level) / 2 * BOOTSTRAP))]
    return (lo, hi)


def summarize(values: Sequence[float]) -> dict:
    return {"value": sum(values) / len(values) if values else None, "n": len(values), "ci95": bootstrap_ci(values)}


def macro_f1(gold: Sequence[int], pred: Sequence[int | None], labels: Sequence[int]) -> float:
    """Macro-averaged F1 over ``labels``; a prediction of None (unparseable) is wrong for all."""
    f1s = []
    for label in labels:
        tp = sum(g == label and p == label for g, p in zip(gold, pred))
        fp = sum(g != label and p == label for g, p in zip(gold, pred))
        fn = sum(g == label and p != label for g, p in zip(gold, pred))
        f1s.append(2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 0.0)
    return sum(f1s) / len(f1s)


def normalize_item(text: str) -> str:
    """The normalisation extraction items are matched under (gold and predicted alike).

    Unicode NFKC, lowercase, every punctuation character (Unicode category P*: hyphens,
    slashes, brackets, quotes, periods, commas, ...) replaced by a space, whitespace
    collapsed to single spaces and stripped. ``"Metoprolol (Active)."`` and
    ``"metoprolol active"`` are the same item; ``"beta-blocker"`` becomes ``"beta blocker"``.
    Symbols (``+``, ``<``, ``=``, ``°``; not ``%``, ``#``, ``&``, which are punctuation) and
    digits are kept.
    """
    text = unicodedata.normalize("NFKC", text).lower()
    text = "".join(" " if unicodedata.category(ch).startswith("P") else ch for ch in text)
    return " ".join(text.split())


def split_items(output: str) -> list[str]:
    """A model's list answer as items: one per line, bullet, comma or semicolon."""
    parts = re.split(r"[\n;,]|^\s*[-*\u2022]\s*|\s\d+[.)]\s", output, flags=re.M)
    return [p.strip(" -*\u2022\t") for p in parts if p and p.strip(" -*\u2022\t")]


def prf(pred_items: Sequence[Sequence[str]], gold_items: Sequence[Sequence[str]]) -> dict:
    """Micro precision / recall / F1 of normalised item sets, summed over examples."""
    tp = fp = fn = 0
    for pred, gold in zip(pred_items, gold_items):
        p = {normalize_item(x) for x in pred} - {""}
        g = {normalize_item(x) for x in gold} - {""}
        tp, fp, fn = tp + len(p & g), fp + len(p - g), fn + len(g - p)
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"precision": precision, "recall": recall, "f1": f1}


@functools.cache
def rouge_scorer(types: tuple[str, ...], use_stemmer: bool):
    """rouge-score's scorer, built once per process. Its tokenizer is passed in because
    ``RougeScorer`` otherwise logs "Using default tokenizer." through absl, and absl calls
    ``logging.basicConfig()`` when the root logger has no handler: a library must never
    configure its caller's root logger (under pytest it bound the root handler to one
    test's captured stream, and later tests wrote to a closed file)."""
    from rouge_score import rouge_scorer as rs, tokenizers

    return rs.RougeScorer(list(types), tokenizer=tokenizers.DefaultTokenizer(use_stemmer))


def rouge(outputs: Sequence[str], references: Sequence[str]) -> dict[str, list[float]]:
    """Per-example ROUGE-1/2/L F-measures (rouge-score, with Porter stemming as usual)."""
    scorer = rouge_scorer(("rouge1", "rouge2", "rougeL"), True)
    scores = [scorer.score(ref, out) for out, ref in zip(outputs, references)]
    return {k: [s[k].fmeasure for s in scores] for k in ("rouge1", "rouge2", "rougeL")}


def extract_choice(text: str, labels: Sequence[str], option_texts: Sequence[str] = ()) -> int | None:
    """Which option a generated answer names: a label on its own ("B", "B.", "(B)", "Answer: B",
    "yes"), else the one option text it contains; None when it names none or several."""
    head = text.strip()
    lowered = head.lower()
    for pattern in (r"^\(?([A-Za-z]+)\)?(?:[.):,\s]|$)", r"answer(?: is)?\s*[:\-]?\s*\(?([A-Za-z]+)\)?\b"):
        m = re.search(pattern, head, flags=re.I)
        if m:
            word = m.group(1).lower()
            hits = [i for i, label in enumerate(labels) if label.lower() == word]
            if len(hits) == 1:
                return hits[0]
    found = [i for i, option in enumerate(option_texts) if option and option.lower() in lowered]
    return found[0] if len(found) == 1 else None
