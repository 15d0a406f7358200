"""Exact ROUGE-L near-duplicate detection: Alpaca's filter, the same decisions, far faster.

Stanford Alpaca's generate_instruction.py keeps a candidate instruction when its maximum
ROUGE-L F-measure (Google's ``rouge-score``: ``RougeScorer(["rougeL"], use_stemmer=False)``)
against the pool of seed and already kept instructions is ``<= 0.7``; a kept candidate
joins the pool at once. In pure Python that is ~47 µs per pair, and a 25k-instruction run
is ~5e8 pairs. :class:`RougeLPool` makes the same decisions and reports the same float
scores (and the same ``np.mean``), over a thousand times faster
(``python bench/rouge_filter.py``):

* tokens become one code point each, so rapidfuzz's C++ bit-parallel LCS compares integers
  instead of hashing strings. Ids are handed out by document frequency (re-ranked as the
  pool doubles) because rapidfuzz looks code points below 256 up in a table, others in a
  hash map;
* one ``rapidfuzz.process.cdist`` call scores a whole block of candidates against the whole
  pool (:meth:`RougeLPool.offer_many`): rapidfuzz packs candidates into SIMD lanes and runs
  on every core, and reads the pool once per block instead of once per candidate.
  Candidates kept inside a block are then scored against each other;
* scores come from the LCS length through the library's own float arithmetic (tabulated
  per query length), because at exact ties (lcs / (m + n) = 0.35) its rounding decides
  the verdict and an "equivalent" formula does not;
* with ``details=False`` only pool items that could exceed the threshold are scored: a
  length bound and a multiset-overlap bound (LCS <= shared tokens, used as a prefix filter
  on the pool's inverted index), both checked with the library's float formula, so pruning
  never changes a decision.
"""

from __future__ import annotations

import math
import os
import re
import sys
from array import array
from collections import Counter
from dataclasses import dataclass, field
from typing import Callable, Iterable, Sequence

import numpy as np
from rapidfuzz import process
from rapidfuzz.distance import LCSseq

# rouge_score.tokenize: lower(), runs of [^a-z0-9] -> " ", split, keep ^[a-z0-9]+$ tokens.
# That is exactly the maximal [a-z0-9] runs of the lowercased text. lower() runs first on
# the whole text, so e.g. "İ" (U+0130) lowercases to "i" + U+0307 and yields the token "i".
_TOKEN_RE = re.compile(r"[a-z0-9]+")

# Code point for a query token the pool has never seen: it can match no pool item, and
# real ids start above it, so the new words of rejected candidates take no ids.
_UNSEEN = "\0"
# Required LCS for a pool length at which F can never exceed the threshold.
_NEVER = np.iinfo(np.int64).max
# Score tables hold (m + 1) * width floats each; one very long pool item makes the width
# large, so the cache is dropped past this many entries (64 MiB) rather than kept growing.
_TABLE_BUDGET = 1 << 23


def _cpus() -> int:
    # The CPUs this process may use (a Slurm allocation), not all of the node's.
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS
        return os.cpu_count() or 1


def tokenize(text: str) -> list[str]:
    """Tokens exactly as rouge-score's default tokenizer (no stemmer) makes them."""
    return _TOKEN_RE.findall(text.lower())


def tokenize_unicode(text: str) -> list[str]:
    """Lowercased runs of Unicode letters and digits: unlike rouge-score's tokenizer it keeps
    Greek letters and accented words ("β-blocker" -> ["β", "blocker"]), which biomedical
    text is full of. Not the reference: decisions differ from Alpaca's where such text is."""
    return _UNICODE_TOKEN_RE.findall(text.lower())


_UNICODE_TOKEN_RE = re.compile(r"[^\W_]+")
TOKENIZERS = {"rouge-score": tokenize, "unicode": tokenize_unicode}


def _fmeasure(lcs: int, m: int, n: int) -> float:
    # rouge_scorer._score_lcs + scoring.fmeasure, operation for operation, with
    # precision = lcs / len(prediction) = lcs / n and recall = lcs / len(target) = lcs / m.
    if m == 0 or n == 0:
        return 0.0
    precision = lcs / n
    recall = lcs / m
    return 2 * precision * recall / (precision + recall) if precision + recall > 0 else 0.0


def rouge_l_f(a_tokens: Sequence[str], b_tokens: Sequence[str]) -> float:
    """ROUGE-L F of two token lists, equal to ``RougeScorer(["rougeL"]).score(a, b)``.

    ``a`` is rouge-score's *target* (recall = lcs / len(a)) and ``b`` its *prediction*
    (precision = lcs / len(b)); Alpaca calls ``_score_lcs(new_instruction, pool_item)``, so
    the candidate is the target. The value is symmetric anyway: ``2 * p * r`` is exact up to
    one rounding of ``p * r``, and float products and sums commute.
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
    mean: float = 0.0  # mean over the whole pool; 0.0 when empty, nan when details=False


class RougeLPool:
    """A pool of instructions that answers "is this candidate a near-duplicate?".

    ``threshold``: reject when the maximum ROUGE-L F against the pool is strictly greater.
    ``top_k``: how many of the most similar pool items a verdict lists.
    ``details=False`` skips ``top`` and ``mean`` and scores only the pool items that could
    exceed the threshold; ``keep`` is the same, and a rejection's ``nearest`` is then the
    lowest-index item over the threshold rather than the most similar one.
    ``block``: candidates scored per rapidfuzz call by :meth:`offer_many`.
    ``workers``: rapidfuzz threads (default: the CPUs this process may run on).
    ``tokenizer``: text -> tokens (default: rouge-score's, see :data:`TOKENIZERS`).

    With details, :meth:`check` and :meth:`offer` cost one rapidfuzz call each (~5 ms
    against 25k items); :meth:`offer_many` gives the same verdicts for ~0.5 ms a candidate,
    so filter a stream through it. ``details=False`` works one candidate at a time anyway
    (~0.4 ms against 25k items).
    """

    def __init__(self, threshold: float = 0.7, top_k: int = 10, details: bool = True,
                 block: int = 256, workers: int | None = None,
                 tokenizer: Callable[[str], list[str]] = tokenize):
        if not 0.0 <= threshold <= 1.0:
            # Outside [0, 1] a pair without a common token (F = 0) could decide a verdict,
            # which the pruning assumes it never does.
            raise ValueError(f"threshold must be within [0, 1], got {threshold}")
        self.threshold = threshold
        self.top_k = top_k
        self.details = details
        self.block = block
        self.workers = workers or _cpus()
        self.tokenizer = tokenizer
        self._chars: dict[str, str] = {}  # token -> its code point
        self._codes: list[str] = []  # pool items as code-point strings
        self._lens = array("i")  # token counts of the pool items
        self._max_len = 0
        # Scores are looked up by lcs * width + n (width > every length), per query length.
        self._width = 64
        self._tables: dict[int, np.ndarray] = {}
        self._postings: dict[str, array] = {}  # code point -> indices of items holding it
        self._need: dict[int, np.ndarray] = {}  # m -> minimum LCS to reject, by length n
        self._rerank_at = 256

    def __len__(self) -> int:
        return len(self._codes)

    def add(self, text: str) -> int:
        """Add ``text`` to the pool unconditionally (seed tasks); return its index."""
        return self._add(self.tokenizer(text))

    def check(self, text: str) -> Verdict:
        """The verdict for ``text`` against the current pool; the pool is unchanged."""
        return self._run([self.tokenizer(text)], add=False)[0]

    def offer(self, text: str) -> Verdict:
        """Check ``text`` and add it to the pool when kept (one step of Alpaca's loop)."""
        return self._run([self.tokenizer(text)], add=True)[0]

    def offer_many(self, texts: Iterable[str]) -> list[Verdict]:
        """``[self.offer(t) for t in texts]``, computed a block of candidates at a time."""
        token_lists = [self.tokenizer(t) for t in texts]
        verdicts: list[Verdict] = []
        for start in range(0, len(token_lists), self.block):
            verdicts += self._run(token_lists[start:start + self.block], add=True)
        return verdicts

    # -- pool ---------------------------------------------------------------------

    def _query(self, tokens: list[str]) -> str:
        chars = self._chars
        return "".join([chars.get(t, _UNSEEN) for t in tokens])

    def _add(self, tokens: list[str]) -> int:
        chars = self._chars
        for t in tokens:
            if t not in chars:
                if len(chars) + 1 > sys.maxunicode:
                    raise ValueError(f"the pool has more than {sys.maxunicode:,} distinct tokens")
                chars[t] = chr(len(chars) + 1)  # +1 keeps _UNSEEN free
        code = "".join([chars[t] for t in tokens])
        index = len(self._codes)
        self._codes.append(code)
        self._lens.append(len(code))
        self._max_len = max(self._max_len, len(code))
        if self._max_len >= self._width:
            self._width = 2 ** self._max_len.bit_length()
            self._tables.clear()
        for c in set(code):
            self._postings.setdefault(c, array("q")).append(index)
        if len(self._codes) >= self._rerank_at:
            self._rerank()
        return index

    def _rerank(self) -> None:
        """Give the most frequent tokens the smallest code points (see the module doc)."""
        order = sorted(self._postings, key=lambda c: -len(self._postings[c]))
        table = {ord(old): chr(new) for new, old in enumerate(order, start=1)}
        self._codes = [code.translate(table) for code in self._codes]
        self._chars = {t: table[ord(c)] for t, c in self._chars.items()}
        self._postings = {table[ord(c)]: ids for c, ids in self._postings.items()}
        self._rerank_at *= 2

    def _lengths(self) -> np.ndarray:
        return np.frombuffer(self._lens, dtype=np.int32)

    # -- verdicts -----------------------------------------------------------------

    def _run(self, token_lists: list[list[str]], add: bool) -> list[Verdict]:
        """Verdicts for candidates taken in order, each added when kept if ``add``."""
        if not self.details:
            verdicts = []
            for tokens in token_lists:
                verdicts.append(self._fast(self._query(tokens), len(tokens)))
                if add and verdicts[-1].keep:
                    self._add(tokens)
            return verdicts
        return self._detailed(token_lists, add)

    def _detailed(self, token_lists: list[list[str]], add: bool) -> list[Verdict]:
        start = len(self._codes)
        lcs = np.zeros((len(token_lists), start), dtype=np.int32)
        if start:
            lcs = process.cdist([self._query(t) for t in token_lists], self._codes,
                                scorer=LCSseq.similarity, dtype=np.int32, workers=self.workers)
        inner = lcs[:, :0]
        if add and len(token_lists) > 1:
            # Candidates kept inside this block are not in ``lcs``: score the block against
            # itself, in a code of its own (their new tokens have no pool ids yet).
            local: dict[str, str] = {}
            codes = ["".join([local.setdefault(t, chr(len(local) + 1)) for t in tokens])
                     for tokens in token_lists]
            inner = process.cdist(codes, codes, scorer=LCSseq.similarity, dtype=np.int32,
                                  workers=self.workers)
        kept: list[int] = []  # block positions of the candidates added so far
        verdicts = []
        for j, tokens in enumerate(token_lists):
            verdict = self._summarise(np.concatenate((lcs[j], inner[j, kept])), len(tokens))
            if add and verdict.keep:
                self._add(tokens)
                kept.append(j)
            verdicts.append(verdict)
        return verdicts

    def _scores_table(self, m: int) -> np.ndarray:
        """The library's F for a query of m tokens, at ``lcs * width + n``."""
        table = self._tables.get(m)
        if table is None:
            if sum(map(len, self._tables.values())) > _TABLE_BUDGET:
                self._tables.clear()
            lcs = np.arange(m + 1)[:, None]
            n = np.arange(self._width)[None, :]
            # _fmeasure element-wise: numpy's float64 division and products are correctly
            # rounded like Python's, and these small ints convert to float exactly.
            with np.errstate(divide="ignore", invalid="ignore"):
                precision = lcs / n
                recall = lcs / m
                table = 2 * precision * recall / (precision + recall)
            table[(lcs == 0) | (n == 0) | (lcs > n)] = 0.0
            table = self._tables[m] = table.ravel()
        return table

    def _summarise(self, lcs: np.ndarray, m: int) -> Verdict:
        """The detailed verdict from the LCS lengths against every pool item."""
        if len(lcs) == 0 or m == 0:
            # rouge-score returns 0 early when either side has no tokens.
            return Verdict(keep=True, nearest=None, mean=0.0)
        scores = self._scores_table(m).take(lcs * self._width + self._lengths())
        best = int(np.argmax(scores))  # the first maximum: ties go to the lowest index
        # np.mean of the scores in pool order, as Alpaca computes it: bit-identical.
        mean = float(np.mean(scores))
        if scores[best] == 0.0:
            return Verdict(keep=True, nearest=None, mean=mean)
        # The best k: shortlist the items within a fraction of the best score (one pass
        # is enough for most candidates), keep those tied with or above the k-th best of
        # the shortlist, and order them.
        k = self.top_k
        for fraction in (0.5, 0.25, 0.0):
            short = np.flatnonzero(scores >= scores[best] * fraction)
            if len(short) >= k:
                break
        if len(short) > k > 0:
            kth = np.partition(scores[short], len(short) - k)[len(short) - k]
            short = short[scores[short] >= kth]
        short = short[scores[short] > 0]
        top = short[np.lexsort((short, -scores[short]))][:k]
        return Verdict(keep=bool(scores[best] <= self.threshold),
                       nearest=Match(best, float(scores[best])),
                       top=[Match(i, s) for i, s in zip(top.tolist(), scores[top].tolist())],
                       mean=mean)

    def _need_by_length(self, m: int) -> np.ndarray:
        """Minimum LCS with F > threshold, per pool length n (``_NEVER`` if none)."""
        need = self._need.get(m)
        if need is None or len(need) <= self._max_len:
            need = np.full(self._max_len + 1, _NEVER, dtype=np.int64)
            for n in range(1, self._max_len + 1):
                # F(l) is 2l/(m+n) to a few ulps and consecutive l differ by 2/(m+n), so F
                # increases with l and is below the threshold at l = bound - 1: start there
                # and step up with the library's own arithmetic.
                lcs = max(1, math.floor(self.threshold * (m + n) / 2) - 1)
                while lcs <= min(m, n) and _fmeasure(lcs, m, n) <= self.threshold:
                    lcs += 1
                if lcs <= min(m, n):
                    need[n] = lcs
            self._need[m] = need
        return need

    def _fast(self, query: str, m: int) -> Verdict:
        """Keep or reject, scoring only the pool items that could exceed the threshold."""
        keep = Verdict(keep=True, nearest=None, mean=math.nan)
        if not self._codes or m == 0:
            return keep
        need = self._need_by_length(m)
        least = int(need.min())
        if least == _NEVER:
            return keep
        # An item with LCS >= least shares >= least tokens (as multisets) with the query,
        # so it holds one of any query tokens whose counts add up to m - least + 1 (prefix
        # filtering); the rarest tokens leave the fewest items to score.
        postings, empty = self._postings, array("q")
        counts = sorted(Counter(query).items(), key=lambda kv: len(postings.get(kv[0], empty)))
        lists, covered = [], 0
        for c, count in counts:
            lists.append(np.frombuffer(postings.get(c, empty), dtype=np.int64))
            covered += count
            if covered >= m - least + 1:
                break
        candidates = np.unique(np.concatenate(lists))
        lens = self._lengths()
        required = need[lens[candidates]]
        feasible = required < _NEVER
        candidates, required = candidates[feasible], required[feasible]
        if len(candidates) == 0:
            return keep
        codes = self._codes
        lcs = process.cdist([query], [codes[i] for i in candidates], scorer=LCSseq.similarity,
                            dtype=np.int32, workers=1, score_cutoff=least)[0]
        over = np.flatnonzero(lcs >= required)
        if len(over) == 0:
            return keep
        i = int(candidates[over[0]])
        score = _fmeasure(int(lcs[over[0]]), m, int(lens[i]))
        return Verdict(keep=False, nearest=Match(i, score), mean=math.nan)
