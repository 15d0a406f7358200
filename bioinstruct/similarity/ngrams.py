"""Evaluation items against many instructions: word n-grams and distinctive shingles of
normalised text, hashed with numpy (a polynomial hash over word ids) and checked word by
word, so a hash collision never makes a hit. Used by the decontaminate stage, whose config
(``cfg``: ngram, min_ngram, shingle, common_items, containment, near_duplicate) sets the
windows and thresholds."""

from __future__ import annotations

import dataclasses
import re
import unicodedata

import numpy as np

_WORD = re.compile(r"\w+")
_MULT = np.uint64(0x9E3779B97F4A7C15)  # odd: a polynomial hash over word ids, mod 2**64
_SALT = np.uint64(0xC2B2AE3D27D4EB4F)  # separates windows of different lengths


def words(text: str) -> list[str]:
    """Normalised words: NFKC, lowercase, punctuation and whitespace as separators."""
    return _WORD.findall(unicodedata.normalize("NFKC", text).lower())


def record_text(record: dict) -> str:
    return "\n".join(t for t in (record["instruction"], record.get("input", ""), record["output"]) if t)


@dataclasses.dataclass
class Item:
    """One evaluation example as decontamination sees it: named text fields."""
    task: str
    id: str
    fields: list[tuple[str, str]]  # (question | option | context | reference | input, text)
    answer: str | None = None

    def text(self) -> str:
        lines = [text for name, text in self.fields if name != "option"]
        options = [text for name, text in self.fields if name == "option"]
        lines += [f"{chr(65 + i)}. {t}" for i, t in enumerate(options)]
        return "\n".join(lines) + (f"\nAnswer: {self.answer}" if self.answer else "")


class _Vocab:
    """Word ids from 1; a word no item has is 0, which no window may contain (so a record's
    words outside every item, and the gaps between fields and records, end windows)."""

    def __init__(self):
        self.ids: dict[str, int] = {}

    def add(self, tokens: list[str]) -> list[int]:
        return [self.ids.setdefault(t, len(self.ids) + 1) for t in tokens]

    def look(self, tokens: list[str]) -> list[int]:
        get = self.ids.get
        return [get(t, 0) for t in tokens]


def _stream(sequences: list[list[int]]) -> tuple[np.ndarray, np.ndarray]:
    """The sequences joined with a 0 after each, and each one's start."""
    lengths = np.fromiter((len(s) + 1 for s in sequences), dtype=np.int64, count=len(sequences))
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64)
    flat = np.zeros(int(lengths.sum()), dtype=np.uint64)
    for s, seq in zip(starts, sequences):
        flat[s:s + len(seq)] = seq
    return flat, starts


def _windows(flat: np.ndarray, lengths: range) -> dict[int, tuple[np.ndarray, np.ndarray]]:
    """For each window length L: (hash, start) of every window of L words without a 0."""
    zeros = np.concatenate([[0], np.cumsum(flat == 0)])
    out, h = {}, np.zeros(0, dtype=np.uint64)
    for L in range(1, max(lengths) + 1):
        m = len(flat) - L + 1
        if m <= 0:
            break
        h = h[:m] * _MULT + flat[L - 1:L - 1 + m] if L > 1 else flat.copy()
        if L in lengths:
            start = np.nonzero(zeros[L:L + m] == zeros[:m])[0]
            out[L] = (h[start] + np.uint64(L * int(_SALT) % 2**64), start)
    return out


def _owner(starts: np.ndarray, positions: np.ndarray) -> np.ndarray:
    return np.searchsorted(starts, positions, side="right") - 1


class Index:
    """The evaluation items' n-grams and distinctive shingles, for matching many records."""

    def __init__(self, items: list[Item], cfg):
        self.items, self.cfg = items, cfg
        self.vocab = _Vocab()
        fields, owner, names = [], [], []
        for i, item in enumerate(items):
            for name, text in item.fields:
                tokens = words(text)
                if tokens:
                    fields.append(self.vocab.add(tokens))
                    owner.append(i)
                    names.append(name)
        self.words = np.array([""] + list(self.vocab.ids), dtype=object)
        owner = np.asarray(owner, dtype=np.int64)
        sizes = np.fromiter((len(f) for f in fields), dtype=np.int64, count=len(fields))
        self.flat, starts = _stream(fields)
        n, k = cfg.ngram, cfg.shingle
        wins = _windows(self.flat, range(1, max(n, k) + 1))

        # n-grams: every n-window, and a whole field of min_ngram..n-1 words.
        grams = [self._field_windows(wins, n, starts, owner, sizes, whole=False)]
        grams += [self._field_windows(wins, L, starts, owner, sizes, whole=True) for L in range(cfg.min_ngram, n)]
        self.gram_lengths = sorted({n} | {L for L in range(cfg.min_ngram, n) if (sizes == L).any()})
        gh, gitem, gstart, glen = _pairs(grams)  # unique (hash, item), by hash
        # an n-gram of many items (a lead-in) tells none of them apart
        df = np.unique(gh, return_counts=True)[1]
        keep = np.repeat(df, df) <= cfg.common_ngram_items
        self.grams = gh[keep], gitem[keep], gstart[keep], glen[keep]
        self.item_grams = np.bincount(self.grams[1], minlength=len(items))
        # whole fields that can decide: those with a distinctive n-gram
        # (every field with an n-gram has min_ngram words or more)
        self.whole: dict[int, list[tuple[str, int, int]]] = {}  # item -> [(field name, start, size)]
        for f in np.unique(_owner(starts, self.grams[2])).tolist():
            self.whole.setdefault(int(owner[f]), []).append((names[f], int(starts[f]), int(sizes[f])))

        # shingles: every k-window, and a whole field shorter than k.
        sh = [self._field_windows(wins, k, starts, owner, sizes, whole=False)]
        sh += [self._field_windows(wins, L, starts, owner, sizes, whole=True) for L in range(1, k)]
        h, it, start, length = _pairs(sh)
        # a one-word field is evidence when it is a word ("Lymphoma"), not a letter or number
        word = np.array([False] + [len(w) >= 3 and not w.isdigit() for w in self.vocab.ids])
        keep = (length > 1) | word[self.flat[start].astype(np.int64)]
        h, it = h[keep], it[keep]
        uniq, df = np.unique(h, return_counts=True)
        common = uniq[df > cfg.common_items]
        keep = ~np.isin(h, common)
        h, it = h[keep], it[keep]
        self.item_shingles = np.bincount(it, minlength=len(items))
        self.shingles = (h, it)  # sorted by hash (from _pairs)
        self.gram_keys, self.shingle_keys = _Keys(self.grams[0]), _Keys(h)
        # shared shingles an item needs: containment of them, at least min_shared (all, if fewer)
        self.need = np.maximum(np.ceil(cfg.containment * self.item_shingles - 1e-9),
                               np.minimum(cfg.min_shared, self.item_shingles)).astype(np.int64)
        self.near_items = int((self.item_shingles >= cfg.min_item_shingles).sum())

    @staticmethod
    def _field_windows(wins, L, starts, owner, sizes, *, whole: bool):
        """(hash, item, start, length) of the L-windows of fields; ``whole``: only a
        window that is a whole field of L words."""
        if L not in wins:
            return np.zeros(0, np.uint64), np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.int64)
        h, start = wins[L]
        field = _owner(starts, start)
        keep = (sizes[field] == L) & (starts[field] == start) if whole else np.ones(len(h), bool)
        return h[keep], owner[field[keep]], start[keep], np.full(int(keep.sum()), L, np.int64)

    def match(self, records: list[dict], *, phrases: bool = False) -> list[list[dict]]:
        """The hits of each record: [{item, method, overlap}], by item order. ``phrases``:
        also the n-gram matches that are not evidence (overlap.attributed false)."""
        cfg = self.cfg
        tokens = [self.vocab.look(words(record_text(r))) for r in records]
        flat, starts = _stream(tokens)
        lengths = set(self.gram_lengths) | (set(range(1, cfg.shingle + 1)) if cfg.near_duplicate else set())
        wins = _windows(flat, range(1, max(lengths) + 1))
        found: dict[tuple[int, int], dict] = {}
        # n-grams: windows whose hash is an item's gram, checked word by word.
        gh, gitem, gstart, glen = self.grams
        for L in self.gram_lengths:
            if L not in wins:
                continue
            h, start = wins[L]
            key = self.gram_keys.find(h)
            hit = key >= 0
            h, start, lo, hi = h[hit], start[hit], self.gram_keys.lo[key[hit]], self.gram_keys.hi[key[hit]]
            for hv, pos, rec, a, b in zip(h.tolist(), start.tolist(), _owner(starts, start).tolist(),
                                          lo.tolist(), hi.tolist()):
                for j in range(a, b):
                    s = int(gstart[j])
                    # the hash says "probably"; the words say yes
                    if glen[j] != L or not np.array_equal(self.flat[s:s + L], flat[pos:pos + L]):
                        continue
                    entry = found.setdefault((rec, int(gitem[j])), {"spans": [], "example": None})
                    entry["spans"].append((pos - int(starts[rec]), L, hv))
                    if entry["example"] is None:
                        entry["example"] = " ".join(self.words[self.flat[s:s + L].astype(np.int64)])
        hits: list[list[dict]] = [[] for _ in records]
        near, shared = self._near(wins, starts) if cfg.near_duplicate else ([], {})
        texts: dict[int, str] = {}
        for (rec, item), entry in found.items():
            overlap = self.attribute(item, entry["spans"], tokens[rec], texts, rec, shared.get((rec, item), 0))
            overlap["example"] = entry["example"]
            if phrases or overlap["attributed"]:
                hits[rec].append({"item": item, "method": "ngram", "overlap": overlap})
        if cfg.near_duplicate:
            for rec, item, shared in near:
                total = int(self.item_shingles[item])
                hits[rec].append({"item": item, "method": "near_duplicate",
                                  "overlap": {"shingles": shared, "item_shingles": total,
                                              "containment": round(shared / total, 4)}})
        for row in hits:  # by item, n-grams (the stronger evidence) first
            row.sort(key=lambda x: (x["item"], x["method"] != "ngram"))
        return hits

    def attribute(self, item: int, spans: list[tuple[int, int, int]], tokens: list[int],
                  texts: dict[int, str], rec: int, shared: int) -> dict:
        """The n-gram evidence of one item in one record, from its matched n-grams
        (record position, length, hash) and the distinctive shingles they share
        (``shared``): runs, the longest, a whole field, the shingles beyond the runs, and
        whether it decides (module docstring)."""
        cfg = self.cfg
        runs: list[list] = []  # [start, end, hashes]
        for pos, L, hv in sorted(spans):
            if runs and pos < runs[-1][1]:
                runs[-1][1] = max(runs[-1][1], pos + L)
                runs[-1][2].add(hv)
            else:
                runs.append([pos, pos + L, {hv}])
        passages: list[set] = []  # runs sharing an n-gram are one passage of the item
        for *_, hs in runs:
            joined = [p for p in passages if p & hs]
            for p in joined:
                passages.remove(p)
                hs = hs | p
            passages.append(hs)
        longest = max(end - start for start, end, _ in runs)
        whole = None
        for name, start, size in self.whole.get(item, ()):
            if rec not in texts:
                texts[rec] = _ids_text(tokens)
            if _ids_text(self.flat[start:start + size].tolist()) in texts[rec]:
                whole = name
                break
        total = int(self.item_grams[item])
        grams = len({h for *_, hs in runs for h in hs})
        # at most this many of the shared shingles lie inside the runs
        beyond = shared - sum(max(0, end - start - cfg.shingle + 1) for start, end, _ in runs)
        out = {"ngrams": grams, "item_ngrams": total, "share": round(grams / total, 4),
               "runs": len(passages), "longest_run": longest, "whole_field": whole,
               "attributed": bool(len(passages) >= cfg.min_runs or longest >= cfg.long_run or whole
                                  or (cfg.near_duplicate and beyond >= cfg.min_shared))}
        if cfg.near_duplicate:
            out["shingles_beyond_runs"] = max(beyond, 0)
        return out

    def _near(self, wins, starts) -> tuple[list[tuple[int, int, int]], dict[tuple[int, int], int]]:
        """(record, item, shared distinctive shingles) with containment >= cfg.containment;
        and the shared count of every (record, item) with at least min_shared."""
        sh, sitem = self.shingles
        if not len(sh):
            return [], {}
        keys = self.shingle_keys
        found = []
        for L in range(1, self.cfg.shingle + 1):
            if L in wins:
                h, start = wins[L]
                key = keys.find(h)
                hit = key >= 0
                found.append(_owner(starts, start[hit]) * len(keys.lo) + key[hit])
        # one (record, shingle) each, then every item holding that shingle
        pair = np.unique(np.concatenate(found))
        rec, key = pair // len(keys.lo), pair % len(keys.lo)
        lo, hi = keys.lo[key], keys.hi[key]
        count = hi - lo
        before = np.cumsum(count) - count
        idx = np.repeat(lo - before, count) + np.arange(int(count.sum()))
        key = np.repeat(rec, count) * len(self.items) + sitem[idx]
        key, shared = np.unique(key, return_counts=True)
        rec, item = key // len(self.items), key % len(self.items)
        ok = (shared >= self.need[item]) & (self.item_shingles[item] >= self.cfg.min_item_shingles)
        some = shared >= self.cfg.min_shared
        return (list(zip(rec[ok].tolist(), item[ok].tolist(), shared[ok].tolist())),
                dict(zip(zip(rec[some].tolist(), item[some].tolist()), shared[some].tolist())))


class _Keys:
    """The distinct hashes of a sorted hash array, each with its run [lo, hi) in that array."""

    def __init__(self, sorted_hashes: np.ndarray):
        self.keys = np.unique(sorted_hashes)
        self.lo = np.searchsorted(sorted_hashes, self.keys, "left")
        self.hi = np.searchsorted(sorted_hashes, self.keys, "right")

    def find(self, h: np.ndarray) -> np.ndarray:
        """Each hash's index among the keys, or -1."""
        if not len(self.keys):
            return np.full(len(h), -1, np.int64)
        pos = np.minimum(np.searchsorted(self.keys, h), len(self.keys) - 1)
        return np.where(self.keys[pos] == h, pos, -1)


def _ids_text(ids) -> str:
    """Word ids as " 4 17 9 ": one sequence holds another as a substring exactly when it
    holds its words in a row."""
    return " " + " ".join(map(str, ids)) + " "


def _pairs(parts) -> tuple[np.ndarray, ...]:
    """(hash, item, start, length) of the windows in ``parts``, one per (hash, item), sorted."""
    h, item, start, length = (np.concatenate([p[i] for p in parts]) for i in range(4))
    order = np.lexsort((item, h))
    h, item, start, length = h[order], item[order], start[order], length[order]
    first = np.ones(len(h), bool)
    first[1:] = (h[1:] != h[:-1]) | (item[1:] != item[:-1])
    return h[first], item[first], start[first], length[first]
