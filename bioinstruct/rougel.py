"""Exact ROUGE-L near-duplicate detection: Alpaca's filter, the same decisions, far faster.

Stanford Alpaca's generate_instruction.py keeps a candidate instruction when its maximum
ROUGE-L F-measure (Google's ``rouge-score``: ``RougeScorer(["rougeL"], use_stemmer=False)``)
against the pool of seed and already accepted instructions is ``<= 0.7``; a kept candidate
joins the pool at once. In pure Python that is ~47 µs per pair, and a 25k-instruction run
is ~5e8 pairs. :class:`RougeLPool` makes the same decisions and returns the same float
scores:

* tokens become one code point each (the pool's token ids), so rapidfuzz's C++
  bit-parallel LCS compares integers instead of hashing strings;
* one ``rapidfuzz.process.cdist`` call scores a candidate against the whole pool;
  :meth:`RougeLPool.offer_many` scores blocks of candidates per call, which lets rapidfuzz
  pack several candidates into SIMD lanes and amortises the per-call cost of reading the
  pool (candidates accepted inside a block are scored against each other separately);
* F is computed from the LCS length with numpy in exactly the library's float operations,
  because at exact ties (lcs / (m + n) = 0.35) the library's rounding decides the verdict
  and an "equivalent" formula does not;
* with ``details=False`` only pool items that could exceed the threshold are scored: the
  length and multiset-overlap bounds (LCS <= shared tokens) are evaluated against the
  library's own float formula, so pruning never changes a decision.
"""

from __future__ import annotations

import math
import re
from array import array
from collections import Counter
from dataclasses import dataclass, field
from typing import Iterable, Sequence

import numpy as np
from rapidfuzz import process
from rapidfuzz.distance import LCSseq

# rouge_score.tokenize: lower(), runs of [^a-z0-9] -> " ", split, keep ^[a-z0-9]+$ tokens.
# That is exactly the maximal [a-z0-9] runs of the lowercased text. lower() runs first on
# the whole text, so e.g. "İ" (U+0130) lowercases to "i" + U+0307 and yields the token "i".
_TOKEN_RE = re.compile(r"[a-z0-9]+")

# Code point for a query token the pool has never seen: it can match no pool item, and
# real token ids start above it, so unseen tokens of rejected candidates cost no ids.
_UNSEEN = "\0"
# A length whose required LCS is unreachable.
_NEVER = np.iinfo(np.int64).max


def tokenize(text: str) -> list[str]:
    """Tokens exactly as rouge-score's default tokenizer (no stemmer) makes them."""
    return _TOKEN_RE.findall(text.lower())


def _fmeasure(lcs: int, m: int, n: int) -> float:
    # rouge_scorer._score_lcs + scoring.fmeasure, operation for operation.
    if m == 0 or n == 0:
        return 0.0
    precision = lcs / n
    recall = lcs / m
    return 2 * precision * recall / (precision + recall) if precision + recall > 0 else 0.0


def _fmeasure_array(lcs: np.ndarray, m: int, n: np.ndarray) -> np.ndarray:
    # The same float operations element-wise (IEEE division and products are correctly
    # rounded in numpy as in Python, and ints this small convert to float64 exactly).
    with np.errstate(divide="ignore", invalid="ignore"):
        precision = lcs / n
        recall = lcs / m
        f = 2 * precision * recall / (precision + recall)
    f[lcs == 0] = 0.0
    return f


def rouge_l_f(a_tokens: Sequence[str], b_tokens: Sequence[str]) -> float:
    """ROUGE-L F of two token lists, equal to ``RougeScorer(["rougeL"]).score(a, b)``.

    ``a`` is rouge-score's *target* (recall = lcs / len(a)) and ``b`` its *prediction*
    (precision = lcs / len(b)); Alpaca calls ``_score_lcs(new_instruction, pool_item)``,
    i.e. the candidate is the target. The result is symmetric anyway: ``2 * p * r`` is
    exact up to one rounding of the commuted product ``p * r``.
    """
    if not a_tokens or not b_tokens:
        return 0.0
    return _fmeasure(LCSseq.similarity(a_tokens, b_tokens), len(a_tokens), len(b_tokens))


@dataclass
class Match:
    index: int  # into the pool, in insertion order
    score: float


@dataclass
class Verdict:
    keep: bool  # max score <= threshold, or the pool is empty
    nearest: Match | None  # highest score, ties to the lowest index; None when all are 0
    top: list[Match] = field(default_factory=list)  # best top_k with score > 0, descending
    mean: float = 0.0  # mean over the whole pool (0.0 when empty; nan when details=False)


class RougeLPool:
    """A pool of instructions that answers "is this candidate a near-duplicate?".

    ``threshold``: reject when the maximum ROUGE-L F against the pool is strictly greater.
    ``top_k``: how many of the most similar pool items a verdict lists.
    ``details=False`` skips ``top`` and ``mean`` and scores only the pool items that could
    exceed the threshold; ``keep`` is the same, and a rejection's ``nearest`` is then the
    lowest-index item over the threshold rather than the most similar one.
    """

    def __init__(self, threshold: float = 0.7, top_k: int = 10, details: bool = True,
                 block: int = 64):
        if not 0.0 <= threshold <= 1.0:
            # Outside [0, 1] a pair with no common token (F = 0) could decide the verdict,
            # which the pruning below assumes it cannot.
            raise ValueError(f"threshold must be within [0, 1], got {threshold}")
        self.threshold = threshold
        self.top_k = top_k
        self.details = details
        self.block = block
        self._chars: dict[str, str] = {}  # token -> its code point
        self._codes: list[str] = []  # pool items as code-point strings
        self._lens = array("q")  # token counts of the pool items
        self._postings: dict[str, array] = {}  # code point -> pool indices holding it
        self._need: dict[int, np.ndarray] = {}  # m -> minimum LCS to reject, by pool length

    def __len__(self) -> int:
        return len(self._codes)

    def add(self, text: str) -> int:
        """Add ``text`` to the pool unconditionally (seed tasks); return its index."""
        return self._add(tokenize(text))

    def check(self, text: str) -> Verdict:
        """The verdict for ``text`` against the current pool; the pool is unchanged."""
        tokens = tokenize(text)
        return self._verdict(self._query(tokens), len(tokens))

    def offer(self, text: str) -> Verdict:
        """Check ``text`` and add it to the pool when kept (one step of Alpaca's loop)."""
        tokens = tokenize(text)
        verdict = self._verdict(self._query(tokens), len(tokens))
        if verdict.keep:
            self._add(tokens)
        return verdict

    # -- internals ------------------------------------------------------------------

    def _query(self, tokens: list[str]) -> str:
        chars = self._chars
        return "".join([chars.get(t, _UNSEEN) for t in tokens])

    def _add(self, tokens: list[str]) -> int:
        chars = self._chars
        for t in tokens:
            if t not in chars:
                # +1 keeps _UNSEEN free; chr() raises past 0x10FFFF distinct tokens.
                chars[t] = chr(len(chars) + 1)
        code = "".join([chars[t] for t in tokens])
        index = len(self._codes)
        self._codes.append(code)
        self._lens.append(len(code))
        for c in set(code):
            self._postings.setdefault(c, array("q")).append(index)
        return index

    def _verdict(self, query: str, m: int) -> Verdict:
        if not self._codes or m == 0:
            # Empty tokens score 0 against everything (rouge-score returns 0 early).
            return Verdict(keep=True, nearest=None, top=[],
                           mean=0.0 if self.details else math.nan)
        if self.details:
            return self._detailed(query, m)
        return self._fast(query, m)

    def _detailed(self, query: str, m: int) -> Verdict:
        lcs = process.cdist([query], self._codes, scorer=LCSseq.similarity,
                            dtype=np.int32, workers=1)[0]
        lens = np.frombuffer(self._lens, dtype=np.int64)
        f = _fmeasure_array(lcs, m, lens)
        return self._summarise(f)

    def _summarise(self, f: np.ndarray) -> Verdict:
        best = int(np.argmax(f))  # first maximum: ties go to the lowest index
        top_score = float(f[best])
        nearest = Match(best, top_score) if top_score > 0 else None
        hits = np.flatnonzero(f)
        if len(hits) > self.top_k:
            kth = np.partition(f[hits], len(hits) - self.top_k)[len(hits) - self.top_k]
            hits = hits[f[hits] >= kth]
        order = hits[np.lexsort((hits, -f[hits]))][: self.top_k]
        # np.mean over the pool in insertion order: bit-identical to Alpaca's np.mean.
        return Verdict(keep=top_score <= self.threshold, nearest=nearest,
                       top=[Match(int(i), float(f[i])) for i in order], mean=float(np.mean(f)))

    def _need_by_length(self, m: int) -> np.ndarray:
        """Minimum LCS with F > threshold, per pool length n (``_NEVER`` if none)."""
        max_len = max(self._lens)
        need = self._need.get(m)
        if need is None or len(need) <= max_len:
            need = np.full(max_len + 1, _NEVER, dtype=np.int64)
            for n in range(1, max_len + 1):
                # F(l) is 2l/(m+n) up to a few ulps and consecutive l differ by 2/(m+n),
                # so F is increasing in l and the float F at l = bound - 1 is below the
                # threshold: start there and step with the library's own arithmetic.
                lcs = max(1, math.floor(self.threshold * (m + n) / 2) - 1)
                while lcs <= min(m, n) and _fmeasure(lcs, m, n) <= self.threshold:
                    lcs += 1
                if lcs <= min(m, n):
                    need[n] = lcs
            self._need[m] = need
        return need

    def _fast(self, query: str, m: int) -> Verdict:
        need = self._need_by_length(m)
        least = int(need.min())
        if least == _NEVER:
            return Verdict(keep=True, nearest=None, mean=math.nan)
        # A pool item with LCS >= least shares >= least tokens (as a multiset) with the
        # query, so it holds at least one token of any set of query tokens whose counts add
        # up to m - least + 1 (prefix filtering). Taking the rarest tokens keeps the set of
        # pool items to score small.
        postings = self._postings
        empty = array("q")
        counts = sorted(Counter(query).items(), key=lambda kv: len(postings.get(kv[0], empty)))
        lists, covered = [], 0
        for c, k in counts:
            lists.append(np.frombuffer(postings.get(c, empty), dtype=np.int64))
            covered += k
            if covered >= m - least + 1:
                break
        candidates = np.unique(np.concatenate(lists))
        lens = np.frombuffer(self._lens, dtype=np.int64)
        required = need[lens[candidates]]
        candidates = candidates[required < _NEVER]
        if len(candidates) == 0:
            return Verdict(keep=True, nearest=None, mean=math.nan)
        codes = self._codes
        lcs = process.cdist([query], [codes[i] for i in candidates], scorer=LCSseq.similarity,
                            dtype=np.int32, workers=1, score_cutoff=least)[0]
        over = np.flatnonzero(lcs >= need[lens[candidates]])
        if len(over) == 0:
            return Verdict(keep=True, nearest=None, mean=math.nan)
        i = int(candidates[over[0]])
        return Verdict(keep=False, nearest=Match(i, _fmeasure(int(lcs[over[0]]), m, int(lens[i]))),
                       mean=math.nan)
