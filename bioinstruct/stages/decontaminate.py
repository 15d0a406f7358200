"""Decontaminate: find instruction records that contain an evaluation item, and drop them.

    bioinstruct decontaminate run_dir=runs/v1                    # runs/v1/filter/kept.jsonl
    bioinstruct decontaminate run_dir=runs/v1 --in biomed_instruct_25k.json    # the released data
    bioinstruct decontaminate run_dir=runs/v1 policy=flag ngram=8 task_data.medqa.path=/data/medqa/test.jsonl

Input: --in, a JSONL (or JSON list) of {instruction, input, output} (default:
run_dir/filter/kept.jsonl); the evaluation tasks' items, read by the same loaders as
`bioinstruct evaluate` (tasks=..., task_data.<task>.<option>=..., $BIOINSTRUCT_DATA). A task
whose data is not on this machine is skipped and listed (missing_data=error refuses instead).
Output (run_dir/decontaminate/), manifest.json and config.yaml:
  clean.jsonl      policy=drop (default): the records that touch no item, in input order;
                   policy=flag: every record, a touching one with a "contamination" list;
                   policy=keep: every record as it was (report only)
  decisions.jsonl  one line per record: index, id, decision (kept, dropped, flagged), reason
                   (null, ngram_overlap, near_duplicate), each hit: task, item id, method,
                   overlap (n-grams: runs, longest_run, whole_field), the record's and the
                   item's text; and phrases, how many items it shares one phrase with only
  summary.json     counts per decision and per task, items touched per task, phrase_only
                   (records kept that share a phrase with some item), examples
classify reads clean.jsonl once this stage is complete in the run directory, so subsets are
built from the clean set.

Two measures, on text normalised to lowercase words (NFKC; punctuation and whitespace are
separators, so case, spacing and punctuation changes do not matter):
  ngram_overlap   the record (instruction+input+output) holds more of the item than one phrase:
                  word n-grams (ngram=13, as GPT-3's and lm-evaluation-harness's
                  decontamination) of an item field (question, each option, context line,
                  reference), or a whole field shorter than ngram words but of at least
                  min_ngram, are found in the record and join into runs (overlapping n-grams
                  are one run), and the record holds at least min_runs=2 separate runs, or one
                  run of long_run=20 words or more, or a whole field of min_ngram words or more
                  (a question, a long option, a context line). One run alone is a phrase that
                  unrelated texts share ("he appears uncomfortable. His temperature is 37.3°C
                  (99.1°F), pulse"): kept, and counted in decisions.jsonl (phrases) and
                  summary.json (phrase_only). An n-gram of more than common_ngram_items=5 items
                  (a lead-in: "which of the following is the most likely cause of this
                  patient's") is no item's evidence. Fields are taken one by one, so reordered
                  options still match. Thresholds measured on real items by
                  bench/decontaminate_thresholds.py (MedMCQA dev + PubMedQA test): no 13-gram is
                  in more than 2 items (a duplicated question), and every other item that a
                  copy of one item shares a run with but no whole field is the same question
                  reworded, at 13-17 words (8 pairs) or 21-41 (16); a coincidental phrase
                  between unrelated vignettes is 13-15 words. min_runs=1 and a large
                  common_ngram_items give the older rule (any one shared n-gram).
  near_duplicate  at least `containment` of the item's distinctive word shingles (shingle-word
                  windows of each field; a shorter field is one shingle) occur in the record:
                  survives light rewording, which breaks long n-grams. Not distinctive, so left
                  out: shingles in more than common_items items ("which of the following"), and
                  one-word fields that are a number or under three characters ("A", "10";
                  "SLE" and "Lymphoma" count). The record must hold at least min_shared of them
                  too, or all of them when the item has fewer; items with fewer than
                  min_item_shingles are checked by n-grams only. Computed exactly through an
                  inverted index of the shingles, not estimated.
An item is touched (summary.json's items_touched, the card, evaluate's untouched items) only
by these hits, never by a phrase alone.
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import re
import sys
from pathlib import Path
from typing import Any, Literal

from ..runs.config import add_config_arguments, config_from_args, ranged
from ..errors import ConfigError, DataError
from ..io.rows import atomic_write_json, iter_jsonl_numbered, write_jsonl
from ..runs.progress import progress
from ..io.records import read_records, record_id
from ..runs.identity import path_identity
from ..runs.rundir import run_stage
from ..reporting.tables import format_table
from ..similarity.ngrams import Index, Item, record_text
from .stage import Stage

POLICIES = ("drop", "flag", "keep")
CHUNK = 4096  # records hashed at a time; results do not depend on it
EXAMPLES = 20  # hits shown in summary.json (and the card)
# A field's leading label as the loaders write it ("Question: ..."): not part of the item.
_LABEL = re.compile(r"^(?:abstract|question|context|premise|hypothesis)\s*:\s*", re.I)


def _all_tasks() -> list[str]:
    from ..tasks import task_names

    return task_names()


@dataclasses.dataclass
class DecontaminateConfig:
    run_dir: str = "runs/default"
    input: str | None = None  # default: run_dir/filter/kept.jsonl
    tasks: list[str] = dataclasses.field(default_factory=_all_tasks)
    task_data: dict[str, dict[str, Any]] = dataclasses.field(default_factory=dict)  # per-task loader options
    missing_data: Literal["skip", "error"] = "skip"  # a task whose data is absent
    policy: Literal["drop", "flag", "keep"] = "drop"
    ngram: int = ranged(13, low=1)
    min_ngram: int = ranged(8, low=1)  # a field of min_ngram..ngram-1 words is one whole n-gram
    common_ngram_items: int = ranged(5, low=1)  # an n-gram in more items than this is no item's evidence
    min_runs: int = ranged(2, low=1)  # an item is hit by this many separate runs of its n-grams,
    long_run: int = ranged(20, low=1)  # or by one run of this many words, or by a whole field (see above)
    near_duplicate: bool = True
    shingle: int = ranged(3, low=1)  # words per shingle
    containment: float = ranged(0.5, above=0.0, high=1.0)  # share of an item's distinctive shingles in a record
    min_shared: int = ranged(6, low=1)  # and at least this many of them (all of them, for an item with fewer)
    min_item_shingles: int = ranged(3, low=1)  # items with fewer distinctive shingles: n-grams only
    common_items: int = ranged(25, low=1)  # a shingle in more items than this is not distinctive

    def __post_init__(self):
        if self.min_ngram > self.ngram:
            raise ValueError(f"min_ngram={self.min_ngram} exceeds ngram={self.ngram}")


# ---- text --------------------------------------------------------------------------------

def item_of(task, example: dict) -> Item:
    """The fields of a loader's example (see bioinstruct.tasks.reader): a multiple-choice
    question and each option apart (so their order does not matter), a label-only task's
    context lines and question, a generation task's input and reference."""
    eid = example["id"]
    if task.kind == "multiple_choice":
        texts, labels = example["option_texts"], example["labels"]
        answer = texts[example["gold"]]
        block = "".join(f"{k}. {v}\n" for k, v in zip(labels, texts)).rstrip("\n")
        if example["input"].endswith("\n" + block):  # the question, then "A. text" lines
            question = example["input"].removesuffix(block).rstrip()
            return Item(task.name, eid, [("question", question)] + [("option", t) for t in texts], answer)
        lines = [_LABEL.sub("", line) for line in example["input"].splitlines()]
        return Item(task.name, eid, [("context", line) for line in lines if line.strip()], answer)
    fields = [("input", example["input"])]
    if task.kind == "generation":
        fields.append(("reference", example["reference"]))
    return Item(task.name, eid, fields, None)


def load_items(cfg: DecontaminateConfig) -> tuple[list[Item], dict[str, Any]]:
    """Every item of every configured task whose data is here; and per task, how many items
    or why none (a missing file is skipped unless missing_data=error)."""
    from ..tasks import TaskDataMissing, load_examples, load_task

    unknown = set(cfg.task_data) - set(cfg.tasks)
    if unknown:
        raise ConfigError(f"task_data names {', '.join(sorted(unknown))}, not among tasks ({', '.join(cfg.tasks)})")
    items, tasks = [], {}
    for name in cfg.tasks:
        task = load_task(name, cfg.task_data.get(name))
        try:
            examples = load_examples(task)
        except TaskDataMissing as e:
            if cfg.missing_data == "error":
                raise
            tasks[name] = {"items": 0, "missing": str(e.path)}
            print(f"[decontaminate] {name}: no data ({tasks[name]['missing']}); not checked", file=sys.stderr)
            continue
        items += [item_of(task, ex) for ex in examples]
        tasks[name] = {"items": len(examples)}
    return items, tasks


# ---- the stage ---------------------------------------------------------------------------

def touched_items(path: str) -> dict[str, set[str]]:
    """Per task, the ids of the items some record of a decisions.jsonl touched (whatever its
    decision). Evaluate reads it to score the untouched items too."""
    if not Path(path).is_file():
        raise DataError(f"{path}: no such file (a decisions.jsonl from bioinstruct decontaminate)")
    touched: dict[str, set[str]] = collections.defaultdict(set)
    for lineno, d in iter_jsonl_numbered(path):
        if not isinstance(d, dict) or "decision" not in d or not isinstance(d.get("hits", []), list):
            raise DataError(f"{path}:{lineno}: not a bioinstruct decontaminate decision (no 'decision')")
        for hit in d.get("hits", ()):
            touched[hit["task"]].add(str(hit["item_id"]))
    return dict(touched)


REASONS = {"ngram": "ngram_overlap", "near_duplicate": "near_duplicate"}
DECISION = {"drop": "dropped", "flag": "flagged", "keep": "kept"}


def _reason(hits: list[dict]) -> str | None:
    """The stronger evidence names the reason: an n-gram, else a near-duplicate."""
    if not hits:
        return None
    return REASONS["ngram"] if any(h["method"] == "ngram" for h in hits) else REASONS["near_duplicate"]


def decide(records: list[dict], index: Index, policy: str) -> list[dict]:
    """One decision per record, hits with both texts; records are matched a chunk at a time."""
    decisions = []
    bar = progress(total=len(records), desc="decontaminate", unit="rec")
    for start in range(0, len(records), CHUNK):
        chunk = records[start:start + CHUNK]
        for i, (record, found) in enumerate(zip(chunk, index.match(chunk, phrases=True)), start):
            counted = [h for h in found if h["overlap"].pop("attributed", True)]
            hits = [{"task": index.items[h["item"]].task, "item_id": index.items[h["item"]].id,
                     "method": h["method"], "overlap": h["overlap"],
                     "item_text": index.items[h["item"]].text()} for h in counted]
            row = {"index": i, "id": record_id(record), "instruction": record["instruction"],
                   "decision": DECISION[policy] if hits else "kept",
                   "reason": _reason(hits)}
            phrases = len({h["item"] for h in found} - {h["item"] for h in counted})
            if phrases:  # items it shares one phrase with, and no more: not a hit
                row["phrases"] = phrases
            if hits:
                row.update(record_text=record_text(record), hits=hits)
            decisions.append(row)
        bar.update(len(chunk))
    bar.close()
    return decisions


def summarize(decisions: list[dict], tasks: dict[str, Any], index: Index, cfg: DecontaminateConfig) -> dict:
    counts = collections.Counter(d["decision"] for d in decisions)
    reasons = collections.Counter(d["reason"] for d in decisions if d["reason"])
    per_task: dict[str, dict[str, Any]] = {}
    for name, info in tasks.items():
        touched = {(h["item_id"]) for d in decisions for h in d.get("hits", ()) if h["task"] == name}
        recs = sum(1 for d in decisions if any(h["task"] == name for h in d.get("hits", ())))
        per_task[name] = {**info, "records": recs, "items_touched": len(touched)}
    examples = [{"index": d["index"], "record_text": d["record_text"], **{k: d["hits"][0][k] for k in
                 ("task", "item_id", "method", "overlap", "item_text")}}
                for d in decisions if d.get("hits")][:EXAMPLES]
    return {"records": len(decisions), "policy": cfg.policy,
            "decisions": {k: counts[k] for k in ("kept", "dropped", "flagged") if counts[k]},
            "contaminated": sum(1 for d in decisions if d["reason"]),
            "phrase_only": sum(1 for d in decisions if d.get("phrases") and not d["reason"]),
            "reasons": dict(sorted(reasons.items())), "tasks": per_task,
            "items": len(index.items), "near_duplicate_items": index.near_items if cfg.near_duplicate else 0,
            "examples": examples}


def run(cfg: DecontaminateConfig, *, force: bool = False) -> dict:
    """Load records and items, then match under the run-directory contract."""
    source = cfg.input or str(Path(cfg.run_dir) / "filter" / "kept.jsonl")
    records = read_records(source)
    items, tasks = load_items(cfg)
    if not items:
        raise DataError(f"no evaluation data found for any of {', '.join(cfg.tasks)}: set BIOINSTRUCT_DATA "
                        "or task_data.<task>.path (see `bioinstruct evaluate --help`)")

    def body(stage_dir: Path) -> dict:
        index = Index(items, cfg)
        decisions = decide(records, index, cfg.policy)
        if cfg.policy == "drop":
            clean = [r for r, d in zip(records, decisions) if not d["reason"]]
        elif cfg.policy == "flag":
            clean = [{**r, "contamination": [f"{h['task']}:{h['item_id']}" for h in d["hits"]]} if d["reason"] else r
                     for r, d in zip(records, decisions)]
        else:
            clean = records
        write_jsonl(stage_dir / "decisions.jsonl", decisions)
        write_jsonl(stage_dir / "clean.jsonl", clean)
        summary = {"input": source, **summarize(decisions, tasks, index, cfg), "clean": len(clean)}
        atomic_write_json(stage_dir / "summary.json", summary)
        return {k: v for k, v in summary.items() if k != "examples"}

    # The records by content: another file at the same path (the demo's rewritten training set)
    # is not the one a complete output was made from.
    return run_stage(Path(cfg.run_dir) / "decontaminate", "decontaminate", cfg, body, force=force,
                     inputs={"input": path_identity(source)}, ignore=("input",))


def summary_table(summary: dict) -> str:
    rows = [(name, t["items"] or "no data", t["records"], t["items_touched"])
            for name, t in summary["tasks"].items()]
    return format_table(["task", "items", "records hit", "items touched"], rows)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--in", dest="input", metavar="FILE", help="instructions (JSONL, JSON list or hf://...)")
    parser.add_argument("--policy", choices=POLICIES, help="drop (default), flag or keep contaminated records")
    add_config_arguments(parser)


def main(args: argparse.Namespace) -> int:
    cfg = config_from_args(DecontaminateConfig, args, {"input": args.input, "policy": args.policy})
    summary = run(cfg, force=args.force)["summary"]
    print(summary_table(summary))
    print(f"{summary['contaminated']} of {summary['records']} records touch an evaluation item "
          f"({', '.join(f'{k} {v}' for k, v in summary['decisions'].items())}); "
          f"-> {Path(cfg.run_dir) / 'decontaminate' / 'clean.jsonl'}")
    return 0


def _quickstart(q) -> DecontaminateConfig:
    if not q.settings.real:  # the generated instructions against all nine tasks' demo data
        return DecontaminateConfig(run_dir=str(q.run_dir), task_data=q.settings.demo_task_data())
    # The real training set against every question of the evaluated sets (not only the sample).
    return DecontaminateConfig(run_dir=str(q.run_dir), input=str(q.demo["train"]), tasks=list(q.settings.real_tasks),
                               task_data={t: {"root": q.settings.demo.root} for t in q.settings.real_tasks},
                               missing_data="error")


STAGE = Stage(
    "decontaminate", "drop instructions that contain an evaluation item (n-grams, near-duplicates)", __name__,
    config=DecontaminateConfig, run=run, outputs=lambda c: [Path(c.run_dir) / "decontaminate"],
    quickstart=_quickstart,
    resources={"cpus_per_task": 2, "mem_gb": 16, "time_limit_min": 2 * 60})  # minutes for 1M instructions
