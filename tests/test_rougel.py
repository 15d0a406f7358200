"""bioinstruct.similarity.rougel against rouge-score itself: tokenizer, scores, exact ties, Alpaca's loop."""

from __future__ import annotations

import json
import math
import random

import numpy as np
import pytest
from rouge_score.rouge_scorer import _score_lcs as rouge_lcs

from bioinstruct.modeling.metrics import rouge_scorer
from bioinstruct.similarity.rougel import Match, RougeLPool, Verdict, rouge_l_f, tokenize

pytestmark = pytest.mark.unit

SCORER = rouge_scorer(("rougeL",), False)
rs_tokenize = SCORER._tokenizer.tokenize


def alpaca_loop(seeds: list[str], candidates: list[str], threshold: float = 0.7,
                top_k: int = 10) -> list[tuple]:
    """Stanford Alpaca's filter loop, calling rouge-score as generate_instruction.py does.

    One (keep, nearest, top, mean, scores) per candidate; nearest is (index, score) of the
    first maximum, top the best top_k (index, score) with score > 0, ties by index.
    """
    pool = [rs_tokenize(s) for s in seeds]
    out = []
    for text in candidates:
        tokens = rs_tokenize(text)
        scores = [rouge_lcs(tokens, p).fmeasure for p in pool]
        best = max(scores) if scores else 0.0
        keep = best <= threshold
        nearest = (scores.index(best), best) if best > 0 else None
        top = [(i, -s) for s, i in sorted((-s, i) for i, s in enumerate(scores) if s > 0)][:top_k]
        out.append((keep, nearest, top, float(np.mean(scores)) if scores else 0.0, scores))
        if keep:
            pool.append(tokens)
    return out


def pool_of(seeds: list[str], **kwargs) -> RougeLPool:
    pool = RougeLPool(**kwargs)
    for s in seeds:
        pool.add(s)
    return pool


def assert_same(expected: list[tuple], verdicts: list[Verdict], details: bool) -> None:
    assert [v.keep for v in verdicts] == [e[0] for e in expected]
    for i, (e, v) in enumerate(zip(expected, verdicts)):
        keep, nearest, top, mean, scores = e
        if details:
            assert ((v.nearest.index, v.nearest.score) if v.nearest else None) == nearest, i
            assert [(m.index, m.score) for m in v.top] == top, i
            assert abs(v.mean - mean) <= 1e-12, i
        else:
            assert math.isnan(v.mean) and v.top == []
            # A rejection names a pool item over the threshold, with its exact score.
            assert (v.nearest is None) == keep, i
            if v.nearest:
                assert v.nearest.score == scores[v.nearest.index] > 0.7, i


TRICKY = [
    "IL-6 and TNF-α levels", "β-blockers in heart failure", "Café naïve résumé Ångström",
    "αβγ δέλτα", "—", "", "   \n\t ", "COVID_19 under_score __init__", "line1\nline2\r\nline3",
    "123 4.5 6,7 1e-3 0x1F", "İstanbul KELVIN \u212a", "don't e.g. U.S.A.", "a--b//c",
    "ＦＵＬＬwidth １２３", "ﬁle ligature", "MiXeD CaSe WORDS", "tab\tseparated\vvertical",
    "emoji 🧬 DNA", "日本語 text", "x" * 300,
]


@pytest.mark.parametrize("text", TRICKY)
def test_tokenize_matches_rouge_score(text):
    assert tokenize(text) == rs_tokenize(text)


def test_tokenize_matches_rouge_score_on_random_unicode():
    rng = random.Random(0)
    alphabet = "aZ09 _-.,;:!?'\"\n\t()/" + "βΩéÅİıſK\u212a\u0307ﬁ１２日🧬\u00a0\u2028"
    for _ in range(2000):
        text = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 30)))
        assert tokenize(text) == rs_tokenize(text), repr(text)


def test_rouge_l_f_matches_scorer():
    rng = random.Random(1)
    vocab = "a b c d e f g".split()
    for _ in range(1000):
        a = [rng.choice(vocab) for _ in range(rng.randint(0, 25))]
        b = [rng.choice(vocab) for _ in range(rng.randint(0, 25))]
        # score(target, prediction): a is the target, b the prediction.
        expected = SCORER.score(" ".join(a), " ".join(b))["rougeL"].fmeasure
        assert rouge_l_f(a, b) == expected
        assert rouge_l_f(b, a) == expected  # 2 * p * r / (p + r) is symmetric in floats too


def tie(m: int, n: int, lcs: int) -> tuple[str, str]:
    """Texts of m and n tokens whose LCS is exactly lcs."""
    common = [f"c{i}" for i in range(lcs)]
    return (" ".join(common + [f"a{i}" for i in range(m - lcs)]),
            " ".join(common + [f"b{i}" for i in range(n - lcs)]))


# (threshold, the smallest m + n with an integer tie LCS, the largest m + n tried)
@pytest.mark.parametrize("threshold,step,largest", [(0.7, 20, 240), (0.5, 4, 80), (0.6, 10, 120)])
def test_exact_ties_decide_like_rouge_score(threshold, step, largest):
    """At lcs / (m + n) = threshold / 2 the float F lands on either side of the threshold."""
    outcomes = set()
    for total in range(step, largest + 1, step):
        lcs = round(threshold * total / 2)
        for m in range(lcs, total - lcs + 1):
            candidate, item = tie(m, total - m, lcs)
            expected = SCORER.score(candidate, item)["rougeL"].fmeasure
            outcomes.add(expected > threshold)
            for details in (True, False):
                verdict = pool_of([item], threshold=threshold, details=details).check(candidate)
                assert verdict.keep == (expected <= threshold), (m, total - m, lcs, details)
                if details or not verdict.keep:
                    assert verdict.nearest == Match(0, expected)
    assert outcomes == {True, False}  # the case is adversarial only if both happen


def synthetic_candidates(rng: random.Random, bases: list[str], n: int) -> list[str]:
    """Near-duplicates of the bases (drops, swaps, replacements, case), random texts,
    token-less texts and a few long ones."""
    vocab = sorted({w for b in bases for w in b.split()}) + ["IL-6", "β-blocker", "naïve"]
    out = []
    for _ in range(n):
        r = rng.random()
        if r < 0.05:
            out.append(rng.choice(["αβγ", "—", "", "日本語"]))
        elif r < 0.08:
            out.append(" ".join(rng.choice(vocab) for _ in range(rng.randint(70, 300))))
        elif r < 0.25:
            out.append(" ".join(rng.choice(vocab) for _ in range(rng.randint(1, 20))))
        else:
            out.append(perturb(rng, rng.choice(bases + out[-20:]), vocab))
    return out


def perturb(rng: random.Random, text: str, vocab: list[str]) -> str:
    words, strength = text.split(), rng.uniform(0.0, 0.5)
    words = [w for w in words if rng.random() >= strength / 2] or words
    words = [rng.choice(vocab) if rng.random() < strength / 2 else w for w in words]
    for _ in range(rng.randint(0, 2)):
        if len(words) > 1:
            i = rng.randrange(len(words) - 1)
            words[i], words[i + 1] = words[i + 1], words[i]
    return " ".join(w.upper() if rng.random() < 0.1 else w for w in words)


def test_alpaca_loop_identical():
    rng = random.Random(2)
    words = "the of a patient drug dose list explain classify summarize renal acute risk".split()
    # 120 seeds: the pool passes 256 items, where code points are re-ranked.
    seeds = [" ".join(rng.choice(words) for _ in range(rng.randint(3, 15))) for _ in range(120)]
    candidates = synthetic_candidates(rng, seeds, 300)
    expected = alpaca_loop(seeds, candidates)
    assert 0.2 < sum(e[0] for e in expected) / len(expected) < 0.8  # both verdicts are common

    one_at_a_time = pool_of(seeds)
    assert_same(expected, [one_at_a_time.offer(t) for t in candidates], details=True)
    for block in (1, 7, 256):  # blocks: kept candidates must meet the rest of their block
        assert_same(expected, pool_of(seeds, block=block).offer_many(candidates), details=True)
    fast = pool_of(seeds, details=False)
    assert_same(expected, [fast.offer(t) for t in candidates], details=False)
    assert len(fast) == len(one_at_a_time) == len(seeds) + sum(e[0] for e in expected)


def test_real_seed_tasks(shared_data):
    lines = (shared_data / "self_instruct" / "seed_tasks.jsonl").read_text(encoding="utf-8").splitlines()
    instructions = [json.loads(line)["instruction"] for line in lines if line.strip()]
    assert len(instructions) == 175
    rng = random.Random(3)
    vocab = sorted({w for t in instructions for w in t.split()})
    candidates = instructions[60:] + [perturb(rng, rng.choice(instructions), vocab) for _ in range(200)]
    rng.shuffle(candidates)
    expected = alpaca_loop(instructions[:60], candidates)
    assert_same(expected, pool_of(instructions[:60]).offer_many(candidates), details=True)
    fast = pool_of(instructions[:60], details=False)
    assert_same(expected, [fast.offer(t) for t in candidates], details=False)


def test_check_leaves_the_pool_unchanged():
    pool = pool_of(["explain the renal dose", "list the risks"])
    verdict = pool.check("explain the renal dose")
    assert not verdict.keep and verdict.nearest == Match(0, 1.0) and len(pool) == 2
    assert pool.offer("something else entirely").keep and len(pool) == 3
    assert pool.add("explain the renal dose") == 3  # add() does not filter


def test_empty_pool_and_tokenless_text():
    assert RougeLPool().check("anything") == Verdict(keep=True, nearest=None, top=[], mean=0.0)
    pool = pool_of(["explain the renal dose"])
    assert pool.check("αβγ —") == Verdict(keep=True, nearest=None, top=[], mean=0.0)
    assert pool.check("unrelated words") == Verdict(keep=True, nearest=None, top=[], mean=0.0)
    fast = pool_of(["explain the renal dose"], details=False).check("")
    assert fast.keep and fast.nearest is None and math.isnan(fast.mean)


def test_threshold_outside_unit_interval_is_refused():
    with pytest.raises(ValueError, match="threshold"):
        RougeLPool(threshold=1.5)
