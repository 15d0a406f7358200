"""Decontamination's attribution thresholds, measured on real items: what one item's text
shares with another's by coincidence.

    python bench/decontaminate_thresholds.py        # MedMCQA dev + PubMedQA test (~1 min)

Each item, written out verbatim as an instruction, is matched against every item (MedMCQA
dev, 4,183; PubMedQA test, 500; from ../shared/data) with no attribution rule at all:
every shared 13-gram counts and no n-gram is common. What a copy of one item shares with
*another* item is what a rule must not count, unless the other item's text is really
there. Printed:

1. how many items each n-gram occurs in (common_ngram_items: lead-ins live in many items,
   an item's own text in one or, duplicated, a few);
2. per pair (copy of A, other item B) sharing n-grams: whether a whole field of B is in the
   copy (a duplicated question or a shared long option: B's text really is there), else the
   number of separate runs and the longest run (min_runs, long_run);
3. with the stage's defaults: how many copies name another item, and why.
"""

from __future__ import annotations

import collections
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bioinstruct.reporting.tables import format_table  # noqa: E402
from bioinstruct.similarity.ngrams import Index  # noqa: E402
from bioinstruct.stages.decontaminate import DecontaminateConfig, load_items  # noqa: E402

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
TASKS = ("medmcqa", "pubmedqa")


def copies(items) -> list[dict]:
    return [{"instruction": "Answer this.", "input": item.text(), "output": ""} for item in items]


def pairs(index: Index, records: list[dict]) -> list[tuple[int, int, dict]]:
    """(copied item, other item, n-gram overlap) for every other item an item's copy shares an n-gram with."""
    out = []
    for start in range(0, len(records), 4096):
        for i, hits in enumerate(index.match(records[start:start + 4096], phrases=True), start):
            out += [(i, h["item"], h["overlap"]) for h in hits if h["method"] == "ngram" and h["item"] != i]
    return out


def histogram(values, edges) -> list[tuple[str, int]]:
    values = np.asarray(values)
    rows = []
    for lo, hi in zip(edges, edges[1:] + [None]):
        n = int(((values >= lo) & (values < hi)).sum()) if hi else int((values >= lo).sum())
        rows.append((f"{lo}" if hi == lo + 1 else f"{lo}-{hi - 1}" if hi else f">= {lo}", n))
    return rows


def main() -> int:
    if not DATA.is_dir():
        print(f"bench/decontaminate_thresholds.py: reference data not found at {DATA}; skipped")
        return 0
    t0 = time.process_time()
    base = dict(tasks=list(TASKS), task_data={t: {"root": str(DATA)} for t in TASKS}, near_duplicate=False)
    items, _ = load_items(DecontaminateConfig(**base))
    records = copies(items)

    # 1. document frequency of the n-grams
    raw = Index(items, DecontaminateConfig(**base, common_ngram_items=10 ** 9, min_runs=1))
    df = np.unique(raw.grams[0], return_counts=True)[1]
    print(f"{len(items):,} items ({', '.join(TASKS)}); {len(df):,} distinct n-grams (13-grams, whole 8-12-word fields)")
    print(format_table(["items holding the n-gram", "n-grams"], histogram(df, [1, 2, 3, 4, 6, 11, 26])))
    common = np.unique(raw.grams[0], return_counts=True)
    top = common[0][np.argsort(-common[1])[:8]]
    gh, _, gstart, glen = raw.grams
    for h in top:
        j = int(np.searchsorted(gh, h))
        print(f"  {int(common[1][common[0] == h][0]):>4} items: "
              + " ".join(raw.words[raw.flat[gstart[j]:gstart[j] + glen[j]].astype(np.int64)]))

    # 2. what a copy of one item shares with another
    found = pairs(raw, records)
    whole = [o for _, _, o in found if o["whole_field"]]
    rest = [o for _, _, o in found if not o["whole_field"]]
    print(f"\ncopy of A x other item B sharing an n-gram: {len(found):,} pairs; "
          f"{len(whole):,} hold a whole field of B (duplicated text); {len(rest):,} do not:")
    print(format_table(["longest run (words)", "pairs, 1 run", "pairs, 2+ runs"],
                       [(a, b, c) for (a, b), (_, c) in zip(
                           histogram([o["longest_run"] for o in rest if o["runs"] == 1], [13, 14, 16, 18, 20, 25, 30]),
                           histogram([o["longest_run"] for o in rest if o["runs"] > 1], [13, 14, 16, 18, 20, 25, 30]))]))
    # the same pairs once n-grams of more than k items are left out
    rows = []
    for k in (1, 2, 3, 5, 10, 25):
        idx = Index(items, DecontaminateConfig(**base, common_ngram_items=k, min_runs=1))
        kept = [o for _, _, o in pairs(idx, records) if not o["whole_field"]]
        own = sum(1 for i, hits in enumerate(idx.match(records)) if any(h["item"] == i for h in hits))
        rows.append((k, len(kept), sum(o["runs"] > 1 for o in kept), max((o["longest_run"] for o in kept), default=0),
                     f"{own:,} of {len(items):,}"))
    print(format_table(["common_ngram_items", "pairs without a whole field", "of them 2+ runs", "longest run",
                        "copies naming their own item"], rows))

    # 3. the defaults
    cfg = DecontaminateConfig(**base)
    idx = Index(items, cfg)
    named = collections.Counter()
    for i, hits in enumerate(idx.match(records)):
        for h in hits:
            if h["item"] != i:
                o = h["overlap"]
                named["whole field" if o["whole_field"] else f"{o['runs']} runs" if o["runs"] >= cfg.min_runs
                      else "long run"] += 1
    print(f"\ndefaults (common_ngram_items={cfg.common_ngram_items}, min_runs={cfg.min_runs}, long_run={cfg.long_run}):"
          f" copies naming another item: {sum(named.values())} ({', '.join(f'{k} {v}' for k, v in named.items())})")
    print(f"CPU {time.process_time() - t0:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
