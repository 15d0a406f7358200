"""Metrics of the evaluation tasks, computed from predictions.jsonl rows.

Accuracy and macro-F1 for multiple choice, precision / recall / F1 of extracted items,
ROUGE-1/2/L and embedding similarity for generated text, each with a percentile bootstrap
confidence interval over examples (seeded, so the same predictions give the same interval;
numpy's generator draws the resamples, all at once).
"""

from __future__ import annotations

import functools
import re
import unicodedata
from typing import Sequence

import numpy as np

BOOTSTRAP = 1000


def _resampled_sums(columns: np.ndarray, seed: int) -> np.ndarray:
    """The column sums of BOOTSTRAP resamples of the rows (examples), drawn with replacement:
    shape (BOOTSTRAP, columns). One array operation per column, so intervals cost
    milliseconds at n in the thousands rather than seconds inside a GPU job."""
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(columns), size=(BOOTSTRAP, len(columns)))
    return np.stack([columns[:, j][idx].sum(axis=1) for j in range(columns.shape[1])], axis=1)


def _interval(draws: np.ndarray, level: float) -> tuple[float, float]:
    draws = np.sort(draws)
    return (float(draws[int((1 - level) / 2 * BOOTSTRAP)]),
            float(draws[min(BOOTSTRAP - 1, int((1 + level) / 2 * BOOTSTRAP))]))


def bootstrap_ci(values: Sequence[float], seed: int = 0, level: float = 0.95) -> tuple[float, float] | None:
    """A percentile bootstrap interval of the mean over examples (seeded: the same values
    give the same interval)."""
    if len(values) < 2:
        return None
    column = np.asarray(values, dtype=float)[:, None]
    return _interval(_resampled_sums(column, seed)[:, 0] / len(values), level)


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


def item_counts(pred_items: Sequence[Sequence[str]], gold_items: Sequence[Sequence[str]]) -> np.ndarray:
    """Per example, the (true positive, false positive, false negative) counts of its
    normalised item sets: shape (examples, 3). Computed once; totals and intervals are sums."""
    counts = np.zeros((len(pred_items), 3))
    for i, (pred, gold) in enumerate(zip(pred_items, gold_items)):
        p = {normalize_item(x) for x in pred} - {""}
        g = {normalize_item(x) for x in gold} - {""}
        counts[i] = (len(p & g), len(p - g), len(g - p))
    return counts


def _f1(tp, fp, fn):
    """Micro F1 = 2PR / (P + R) = 2tp / (2tp + fp + fn); 0 without a true positive."""
    return np.where(tp > 0, 2 * tp / np.maximum(2 * tp + fp + fn, 1), 0.0)


def prf(pred_items: Sequence[Sequence[str]], gold_items: Sequence[Sequence[str]]) -> dict:
    """Micro precision / recall / F1 of normalised item sets, summed over examples, and a
    bootstrap interval of F1 over examples."""
    counts = item_counts(pred_items, gold_items)
    tp, fp, fn = counts.sum(axis=0)
    out = {"precision": tp / (tp + fp) if tp + fp else 0.0, "recall": tp / (tp + fn) if tp + fn else 0.0,
           "f1": float(_f1(tp, fp, fn))}
    out["f1_ci95"] = _interval(_f1(*_resampled_sums(counts, 0).T), 0.95) if len(counts) >= 2 else None
    return out


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
