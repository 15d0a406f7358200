"""Decontamination: bioinstruct.stages.decontaminate's index against a naive all-pairs comparison.

    python bench/decontaminate.py                      # 25,000 instructions (~30 s)
    python bench/decontaminate.py --records 1000000    # the 1M-instruction scale
    python bench/decontaminate.py --quick              # small sizes, seconds (CI)

Evaluation items: MedMCQA dev (4,183) and PubMedQA test (500) from ../shared/data, MTS-Dialog
(conv2note, 200), and 6,000 MedMCQA-shaped stand-ins for its test set (no answers are
public, so each is a dev question with its words shuffled and another question's options):
about 10,900 items, what a user with MedMCQA dev+test, PubMedQA and MTS-Dialog has.
Instructions: a seed-task instruction, an input from a PubMedQA abstract outside the test
split and an output from another one's long answer (real biomedical text, clean), with 1%
of them an evaluation item copied in and 1% a reformatted copy.

In one run it indexes the items, matches every instruction (CPU time and wall time, as the
stage does it, one process), then compares a sample of --verify instructions against every
item one pair at a time with Python sets, written independently from the same definitions
(the n-gram attribution too: runs, a long run, a whole field, common n-grams left out): the
two must agree on every (instruction, item, method) and on the overlap counts. The naive
cost per pair is extrapolated to all pairs.
"""

from __future__ import annotations

import argparse
import collections
import json
import math
import random
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bioinstruct.similarity.ngrams import Index, Item, record_text, words  # noqa: E402
from bioinstruct.stages.decontaminate import DecontaminateConfig, load_items  # noqa: E402
from bioinstruct.reporting.tables import format_table  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data"


def eval_items(cfg: DecontaminateConfig, rng: random.Random, stand_ins: int) -> list[Item]:
    items, _ = load_items(cfg)
    mc = [i for i in items if i.task == "medmcqa"]
    for n in range(stand_ins):
        q = rng.choice(mc).fields[0][1].split()
        rng.shuffle(q)
        items.append(Item("medmcqa-test", f"t{n}", [("question", " ".join(q))] + rng.choice(mc).fields[1:]))
    return items


def instructions(n: int, items: list[Item], rng: random.Random) -> tuple[list[dict], list[int]]:
    """n records; every 100th an item verbatim, every 100th+50 one reformatted (shuffled
    fields, upper case, punctuation). Returns the records and the planted item per record (-1)."""
    seeds = []
    for path in (REPO / "bioinstruct" / "data" / "seed_tasks.jsonl", DATA / "self_instruct" / "seed_tasks.jsonl"):
        seeds += [json.loads(line)["instruction"] for line in path.open(encoding="utf-8") if line.strip()]
    pqal = json.loads((DATA / "pubmedqa" / "ori_pqal.json").read_text(encoding="utf-8"))
    test = set(json.loads((DATA / "pubmedqa" / "test_ground_truth.json").read_text(encoding="utf-8")))
    other = [v for k, v in pqal.items() if k not in test]
    records, planted = [], []
    for i in range(n):
        if i % 100 in (0, 50):
            j = rng.randrange(len(items))
            fields = [t for _, t in items[j].fields]
            if i % 100 == 50:
                rng.shuffle(fields)
                fields = [f.upper().replace(",", " ;").replace(".", " -") for f in fields]
            records.append({"instruction": rng.choice(seeds), "input": "\n".join(fields), "output": "A"})
            planted.append(j)
            continue
        a, b = rng.choice(other), rng.choice(other)
        records.append({"instruction": rng.choice(seeds), "input": rng.choice(a["CONTEXTS"]),
                        "output": b["LONG_ANSWER"]})
        planted.append(-1)
    return records, planted


class Naive:
    """The same two measures, one (record, item) pair at a time, with Python sets."""

    def __init__(self, items: list[Item], cfg: DecontaminateConfig):
        self.cfg = cfg
        n, k = cfg.ngram, cfg.shingle
        grams, shingles, self.fields = [], [], []
        for item in items:
            fields = [words(t) for _, t in item.fields]
            fields = [f for f in fields if f]
            self.fields.append([tuple(f) for f in fields])
            grams.append({tuple(f[i:i + n]) for f in fields for i in range(len(f) - n + 1)}
                         | {tuple(f) for f in fields if cfg.min_ngram <= len(f) < n})
            shingles.append({tuple(f[i:i + k]) for f in fields for i in range(len(f) - k + 1)}
                            | {tuple(f) for f in fields if 1 < len(f) < k}
                            | {tuple(f) for f in fields if len(f) == 1 and len(f[0]) >= 3 and not f[0].isdigit()})
        df = collections.Counter(s for sh in shingles for s in sh)
        self.shingles = [{s for s in sh if df[s] <= cfg.common_items} for sh in shingles]
        df = collections.Counter(g for gr in grams for g in gr)
        self.grams = [{g for g in gr if df[g] <= cfg.common_ngram_items} for gr in grams]

    def evidence(self, j: int, w: list[str], shingles: int) -> bool:
        """More of item j in the words w than one phrase: min_runs runs (runs sharing an
        n-gram being one), a run of long_run words, a whole field holding an n-gram, or
        min_shared of its ``shingles`` (shared distinctive shingles) beyond the runs."""
        cfg, grams = self.cfg, self.grams[j]
        spans = sorted((i, i + len(g), g) for g in grams for i in range(len(w) - len(g) + 1)
                       if tuple(w[i:i + len(g)]) == g)
        runs = []  # [start, end, grams]
        for a, b, g in spans:
            if runs and a < runs[-1][1]:
                runs[-1][1], runs[-1][2] = max(runs[-1][1], b), runs[-1][2] | {g}
            else:
                runs.append([a, b, {g}])
        component = list(range(len(runs)))  # runs joined by a shared n-gram, union-find
        for x in range(len(runs)):
            for y in range(x):
                if runs[x][2] & runs[y][2]:
                    root_x, root_y = x, y
                    while component[root_x] != root_x:
                        root_x = component[root_x]
                    while component[root_y] != root_y:
                        root_y = component[root_y]
                    component[root_x] = root_y
        roots = set()
        for x in range(len(runs)):
            while component[x] != x:
                x = component[x]
            roots.add(x)
        whole = any(any(g == f[i:i + len(g)] for g in grams for i in range(len(f) - len(g) + 1))
                    and any(tuple(w[i:i + len(f)]) == f for i in range(len(w) - len(f) + 1))
                    for f in self.fields[j])
        beyond = shingles - sum(max(0, b - a - cfg.shingle + 1) for a, b, _ in runs)
        return (len(roots) >= cfg.min_runs or max(b - a for a, b, _ in runs) >= cfg.long_run or whole
                or (cfg.near_duplicate and beyond >= cfg.min_shared))

    def match(self, record: dict) -> list[tuple]:
        cfg, w = self.cfg, words(record_text(record))
        spans = {tuple(w[i:i + L]) for L in range(1, max(cfg.ngram, cfg.shingle) + 1) for i in range(len(w) - L + 1)}
        out = []
        for j, (grams, shingles) in enumerate(zip(self.grams, self.shingles)):
            g = len(grams & spans)
            s, total = len(shingles & spans), len(shingles)
            if g and self.evidence(j, w, s):
                out.append((j, "ngram", g))
            need = max(math.ceil(cfg.containment * total - 1e-9), min(cfg.min_shared, total))
            if cfg.near_duplicate and total >= cfg.min_item_shingles and s >= need:
                out.append((j, "near_duplicate", s))
        return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--records", type=int, default=25000)
    parser.add_argument("--stand-ins", type=int, default=6000, help="MedMCQA-test-shaped items added")
    parser.add_argument("--verify", type=int, default=300, help="instructions compared against every item naively")
    parser.add_argument("--quick", action="store_true", help="2,000 instructions, 1,000 stand-ins, 50 verified")
    args = parser.parse_args()
    if args.quick:
        args.records, args.stand_ins, args.verify = 2000, 1000, 50
    if not DATA.is_dir():
        print(f"bench/decontaminate.py: reference data not found at {DATA}; skipped")
        return 0
    rng = random.Random(0)
    cfg = DecontaminateConfig(tasks=["medmcqa", "pubmedqa", "conv2note"],
                              task_data={t: {"root": str(DATA)} for t in ("medmcqa", "pubmedqa", "conv2note")})
    items = eval_items(cfg, rng, args.stand_ins)
    records, planted = instructions(args.records, items, rng)

    c0, w0 = time.process_time(), time.perf_counter()
    index = Index(items, cfg)
    c1, w1 = time.process_time(), time.perf_counter()
    hits = []
    for start in range(0, len(records), 4096):
        hits += index.match(records[start:start + 4096])
    c2, w2 = time.process_time(), time.perf_counter()
    missed = sum(1 for p, h in zip(planted, hits) if p >= 0 and p not in {x["item"] for x in h})

    sample = random.Random(1).sample(range(len(records)), args.verify)
    c3 = time.process_time()
    naive = Naive(items, cfg)
    c4 = time.process_time()
    expected = [naive.match(records[i]) for i in sample]
    c5 = time.process_time()
    got = [sorted((h["item"], h["method"], h["overlap"].get("ngrams", h["overlap"].get("shingles")))
                  for h in hits[i]) for i in sample]
    disagree = sum(1 for e, g in zip(expected, got) if sorted(e) != g)

    pairs = args.verify * len(items)
    per_pair = (c5 - c4) / pairs
    all_pairs = per_pair * len(records) * len(items) + (c4 - c3)
    rows = [("index the items", f"{c1 - c0:.2f}", f"{w1 - w0:.2f}", ""),
            (f"match {len(records):,} instructions", f"{c2 - c1:.2f}", f"{w2 - w1:.2f}",
             f"{len(records) / max(c2 - c1, 1e-9):,.0f} / s"),
            ("index + match", f"{c2 - c0:.2f}", f"{w2 - w0:.2f}", ""),
            (f"naive: {args.verify} x {len(items):,} pairs", f"{c5 - c4:.2f}", "", f"{1e6 * per_pair:.2f} us / pair"),
            (f"naive, all {len(records):,} (extrapolated)", f"{all_pairs:,.0f}", "", "")]
    per_task = collections.Counter(i.task for i in items)
    print(f"{len(items):,} evaluation items ({', '.join(f'{k} {v}' for k, v in per_task.items())}); "
          f"{len(records):,} instructions, {sum(p >= 0 for p in planted)} planted")
    print(format_table(["step", "CPU s", "wall s", "rate"], rows))
    print(f"speed-up over naive all-pairs: {all_pairs / max(c2 - c0, 1e-9):,.0f}x (CPU time)")
    print(f"planted items missed: {missed}; instructions hit: {sum(1 for h in hits if h):,}; "
          f"naive and index disagree on {disagree} of {args.verify} sampled instructions")
    if args.records >= 25000:
        print(f"1M instructions at this rate: ~{(c2 - c1) * 1e6 / len(records) / 60:.0f} min CPU")
    return 1 if disagree or missed else 0


if __name__ == "__main__":
    sys.exit(main())
