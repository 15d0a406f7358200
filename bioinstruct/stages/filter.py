"""Filter instruction candidates: rule filters, then ROUGE-L near-duplicates against a pool.

    bioinstruct filter --in candidates.jsonl --run-dir runs/x --pool seeds.jsonl
    bioinstruct filter --in biomed_instruct_25k.json --out elsewhere/kept.jsonl threshold=0.6

Input: --in, any JSONL (or JSON list) of {instruction, input, output} records;
optionally --pool, a JSONL of records with an "instruction" (e.g. the seed tasks) that
starts the similarity pool. Candidates are taken in order; a kept candidate joins the pool
at once (pool=seeds+accepted, the Alpaca loop), so near-duplicates inside the file are caught.
Output: RUN_DIR/filter/kept.jsonl (or --out FILE), the kept records in input order;
--decisions (default: decisions.jsonl beside them), one line per candidate with kept / the
reason code, the nearest pool instruction and its ROUGE-L score (kept ones also get their
top-k most similar and the mean similarity);
summary.json and a printed table of reasons; manifest.json and config.yaml beside them.

Reason codes, in the order they are checked (the first that applies is recorded):
  empty_instruction, too_short, too_long, blacklist, write_a_program,
  starts_with_punctuation, starts_with_non_ascii, empty_output, output_equals_input,
  ends_with_colon, duplicate, rouge_similar (embedding_similar with mode=embedding).
The generate stage runs the same filter online (bioinstruct.stages.filter.CandidateFilter).
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import re
import string
from pathlib import Path
from typing import Iterable, Literal

from ..runs.config import add_config_arguments, config_from_args, ranged
from ..errors import ConfigError
from ..runs.identity import path_identity
from ..io.rows import atomic_write_json, write_jsonl
from ..runs.progress import progress
from ..io.records import read_records
from ..similarity.rougel import TOKENIZERS, RougeLPool
from ..runs.rundir import run_stage
from ..reporting.tables import format_table
from .stage import Stage

# The paper names image, picture and graph; plurals are separate words to a
# word-boundary match, so they are listed too.
PAPER_BLACKLIST = ["image", "images", "picture", "pictures", "graph", "graphs"]
# Stanford Alpaca's generate_instruction.py list: tasks a text-only model cannot do.
ALPACA_BLACKLIST = ["image", "images", "graph", "graphs", "picture", "pictures", "file", "files",
                    "map", "maps", "draw", "plot", "go to", "video", "audio", "music",
                    "flowchart", "diagram"]
BLACKLISTS = {"paper": PAPER_BLACKLIST, "alpaca": ALPACA_BLACKLIST, "none": []}

CHUNK = 1024  # candidates per progress-bar step; decisions do not depend on it

REASONS = ["empty_instruction", "too_short", "too_long", "blacklist", "write_a_program",
           "starts_with_punctuation", "starts_with_non_ascii", "empty_output", "output_equals_input",
           "ends_with_colon", "duplicate", "rouge_similar", "embedding_similar"]


@dataclasses.dataclass
class RuleConfig:
    blacklist: Literal["paper", "alpaca", "none"] = "paper"
    extra_blacklist: list[str] = dataclasses.field(default_factory=list)
    # Whitespace-split word counts of the instruction. Alpaca drops <= 3 and > 150 words;
    # these bounds keep exactly what Alpaca keeps.
    min_instruction_words: int = ranged(4, low=0)
    max_instruction_words: int = ranged(150, low=1)
    # Self-Instruct's instance filters and Alpaca's prefix filters.
    reject_empty_output: bool = True
    reject_output_equals_input: bool = True
    reject_ending_colon: bool = True
    reject_write_a_program: bool = True
    reject_punctuation_start: bool = True
    reject_non_ascii_start: bool = True
    reject_duplicates: bool = True  # the same instruction + input seen before

    def __post_init__(self):
        if self.min_instruction_words > self.max_instruction_words:
            raise ValueError("min_instruction_words exceeds max_instruction_words")


@dataclasses.dataclass
class Criteria:
    """What decides a candidate; shared by the filter and generate stages."""
    threshold: float = ranged(0.7, low=0.0, high=1.0)  # reject when max ROUGE-L F against the pool is > threshold
    pool_growth: Literal["seeds+accepted", "seeds"] = "seeds+accepted"
    top_k: int = ranged(10, low=0)  # most similar pool instructions recorded for kept candidates
    # rouge-score's (the reference), or "unicode", which keeps Greek letters and accents.
    tokenizer: Literal["rouge-score", "unicode"] = "rouge-score"
    # "embedding": reject by cosine similarity of sentence embeddings instead of ROUGE-L,
    # for semantic near-duplicates (paraphrases share few words). Not the paper's method.
    mode: Literal["rouge", "embedding"] = "rouge"
    embedding_model: str | None = None  # a local sentence-transformers dir; None: bioinstruct[embed]'s
    embedding_threshold: float = ranged(0.9, low=-1.0, high=1.0)  # cosine above which a candidate is rejected
    rules: RuleConfig = dataclasses.field(default_factory=RuleConfig)


@dataclasses.dataclass
class FilterConfig(Criteria):
    run_dir: str = "runs/default"
    input: str | None = None  # candidates (JSONL or JSON list)
    output: str | None = None  # kept records; default: RUN_DIR/filter/kept.jsonl
    decisions: str | None = None  # default: decisions.jsonl beside output
    pool: str | None = None  # records whose instructions start the pool (e.g. seed tasks)

    def output_path(self) -> Path:
        return Path(self.output) if self.output else Path(self.run_dir) / "filter" / "kept.jsonl"

    def resolved(self) -> "FilterConfig":
        """With the output spelled out: the config a manifest records, however it was named."""
        return dataclasses.replace(self, output=str(self.output_path()))

    @classmethod
    def with_criteria(cls, criteria: Criteria, **paths: str | None) -> "FilterConfig":
        """The filter stage deciding as ``criteria`` (e.g. generate's) does."""
        return cls(**{f.name: getattr(criteria, f.name) for f in dataclasses.fields(Criteria)}, **paths)


class CandidateFilter:
    """The decision procedure, shared by ``filter`` and ``generate``.

    Candidates are decided in order; a kept one joins the pool before the next is
    decided (pool_growth=seeds+accepted, Alpaca's loop). :meth:`decide_many` gives the
    same decisions as calling :meth:`decide` on each record in turn, ~10x faster.
    """

    def __init__(self, criteria: Criteria, seeds: Iterable[str] = ()):
        self.rules = rules = criteria.rules
        self.grow = criteria.pool_growth == "seeds+accepted"
        self.similar_reason = "embedding_similar" if criteria.mode == "embedding" else "rouge_similar"
        words = BLACKLISTS[rules.blacklist] + rules.extra_blacklist
        self._blacklist = (re.compile(r"\b(" + "|".join(re.escape(w) for w in words) + r")\b", re.I)
                           if words else None)
        if criteria.mode == "embedding":
            from ..similarity.embed import EmbeddingPool, SentenceEncoder

            self.pool = EmbeddingPool(threshold=criteria.embedding_threshold, top_k=criteria.top_k,
                                      encoder=SentenceEncoder(criteria.embedding_model))
        else:
            self.pool = RougeLPool(threshold=criteria.threshold, top_k=criteria.top_k,
                                   tokenizer=TOKENIZERS[criteria.tokenizer])
        self.pool_texts: list[str] = []
        self._seen: set[tuple[str, str]] = set()
        for text in seeds:
            self.pool.add(text)
            self.pool_texts.append(text)

    def rule_reason(self, record: dict) -> tuple[str, str] | None:
        """The first rule that rejects the record, as (reason code, detail)."""
        r = self.rules
        inst = record["instruction"].strip()
        inp = record.get("input", "").strip()
        out = record.get("output", "").strip()
        if not inst:
            return "empty_instruction", ""
        n_words = len(inst.split())
        if n_words < r.min_instruction_words:
            return "too_short", f"{n_words} words < {r.min_instruction_words}"
        if n_words > r.max_instruction_words:
            return "too_long", f"{n_words} words > {r.max_instruction_words}"
        if self._blacklist and (m := self._blacklist.search(inst)):
            return "blacklist", m.group(0)
        if r.reject_write_a_program and inst.lower().startswith("write a program"):
            return "write_a_program", ""
        if r.reject_punctuation_start and inst[0] in string.punctuation:
            return "starts_with_punctuation", inst[0]
        if r.reject_non_ascii_start and not inst[0].isascii():
            return "starts_with_non_ascii", inst[0]
        if r.reject_empty_output and not out:
            return "empty_output", ""
        if r.reject_output_equals_input and inp and out == inp:
            return "output_equals_input", ""
        if r.reject_ending_colon and (inp.endswith(":") or out.endswith(":")):
            return "ends_with_colon", "input" if inp.endswith(":") else "output"
        if r.reject_duplicates and (inst, inp) in self._seen:
            return "duplicate", ""
        self._seen.add((inst, inp))
        return None

    def decide(self, record: dict) -> dict:
        return self.decide_many([record])[0]

    def decide_many(self, records: list[dict]) -> list[dict]:
        # The rules do not depend on the pool, so they run first; the survivors then go
        # through the pool in one call, which scores them a block at a time.
        decisions: list[dict | None] = []
        survivors: list[int] = []
        for i, record in enumerate(records):
            rejected = self.rule_reason(record)
            decisions.append({"kept": False, "reason": rejected[0], "detail": rejected[1]} if rejected else None)
            if not rejected:
                survivors.append(i)
        texts = [records[i]["instruction"] for i in survivors]
        verdicts = self.pool.offer_many(texts) if self.grow else [self.pool.check(t) for t in texts]
        for i, text, verdict in zip(survivors, texts, verdicts):
            nearest = ({"instruction": self.pool_texts[verdict.nearest.index], "score": verdict.nearest.score}
                       if verdict.nearest else None)
            if not verdict.keep:
                decisions[i] = {"kept": False, "reason": self.similar_reason, "detail": f"> {self.pool.threshold}",
                                "nearest": nearest}
                continue
            decisions[i] = {"kept": True, "reason": None, "nearest": nearest,
                            "most_similar": {self.pool_texts[m.index]: m.score for m in verdict.top},
                            "mean_similarity": verdict.mean}
            if self.grow:  # offer_many added it, at the next index
                self.pool_texts.append(text)
        return decisions


def pool_instructions(path: str | None) -> list[str]:
    if not path:
        return []
    return [r["instruction"] for r in read_records(path, required=("instruction",))]


def run(cfg: FilterConfig, *, force: bool = False) -> dict:
    """Validate the inputs, then filter under the run-directory contract."""
    if not cfg.input:
        raise ConfigError("no input: give --in FILE (or input=FILE)")
    candidates = read_records(cfg.input)
    seeds = pool_instructions(cfg.pool)
    if cfg.mode == "embedding":  # named before the run directory is touched, not from inside the stage
        from ..similarity.embed import check_model_dir, default_model_dir
        check_model_dir(Path(cfg.embedding_model) if cfg.embedding_model else default_model_dir())
    cfg = cfg.resolved()
    out = Path(cfg.output)
    decisions_path = Path(cfg.decisions) if cfg.decisions else out.with_name("decisions.jsonl")

    def body(stage_dir: Path) -> dict:
        filt = CandidateFilter(cfg, seeds)
        kept, decisions = [], []
        bar = progress(total=len(candidates), desc="filter", unit="cand")
        for start in range(0, len(candidates), CHUNK):
            chunk = candidates[start:start + CHUNK]
            for i, (record, d) in enumerate(zip(chunk, filt.decide_many(chunk)), start):
                decisions.append({"index": i, "instruction": record["instruction"], **d})
                if d["kept"]:
                    kept.append(record)
            bar.update(len(chunk))
        bar.close()
        write_jsonl(out, kept)
        write_jsonl(decisions_path, decisions)
        counts = collections.Counter(d["reason"] or "kept" for d in decisions)
        summary = {"candidates": len(candidates), "kept": len(kept), "pool_seeds": len(seeds),
                   "reasons": {r: counts[r] for r in ["kept"] + REASONS if counts[r]}}
        atomic_write_json(stage_dir / "summary.json", summary)
        return summary

    inputs, ignore = identity(cfg)
    return run_stage(out.parent, "filter", cfg, body, force=force, inputs=inputs, ignore=ignore)


def identity(cfg: FilterConfig) -> tuple[dict, tuple[str, ...]]:
    """(inputs, keys compared through them): candidates and pool by content, so a file edited
    in place is a different input. Where the outputs go stays a compared key (a new name
    must be written, not skipped); run_dir only names the default output, which is recorded."""
    paths = {k: getattr(cfg, k) for k in ("input", "pool")}
    return ({k: v if v is None or str(v).startswith("hf://") else path_identity(v) for k, v in paths.items()},
            ("input", "pool", "run_dir"))


def summary_table(summary: dict) -> str:
    n = max(summary["candidates"], 1)
    rows = [(reason, count, f"{100 * count / n:.1f}%") for reason, count in summary["reasons"].items()]
    rows.append(("total", summary["candidates"], "100.0%"))
    return format_table(["decision", "count", "share"], rows)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--in", dest="input", metavar="FILE", help="candidates, JSONL or JSON list")
    parser.add_argument("--run-dir", dest="run_dir", metavar="DIR", help="the run directory (runs/default)")
    parser.add_argument("--out", dest="output", metavar="FILE", help="kept records (JSONL; RUN_DIR/filter/kept.jsonl)")
    parser.add_argument("--pool", metavar="FILE", help="records whose instructions start the pool (seed tasks)")
    parser.add_argument("--threshold", type=float, help="ROUGE-L F above which a candidate is rejected (0.7)")
    parser.add_argument("--decisions", metavar="FILE", help="per-candidate decisions (JSONL)")
    parser.add_argument("--mode", choices=["rouge", "embedding"],
                        help="near-duplicates by ROUGE-L (default, the paper's) or sentence-embedding cosine")
    add_config_arguments(parser)


def main(args: argparse.Namespace) -> int:
    flags = {k: getattr(args, k) for k in ("run_dir", "input", "output", "pool", "threshold", "decisions", "mode")}
    cfg = config_from_args(FilterConfig, args, flags)
    manifest = run(cfg, force=args.force)
    print(summary_table(manifest["summary"]))
    print(f"kept {manifest['summary']['kept']} of {manifest['summary']['candidates']} -> {cfg.output_path()}")
    return 0


def _quickstart(q) -> FilterConfig | None:
    # The standalone filter over the generated instructions, pool = the seeds (the real-model
    # quickstart generates none).
    if q.settings.real:
        return None
    return FilterConfig.with_criteria(q.settings.generate.filter, run_dir=str(q.run_dir), pool=q.settings.seed_tasks(),
                                      input=str(q.outputs["generate"] / "instructions.jsonl"))


STAGE = Stage(
    "filter", "ROUGE-L near-duplicate and rule filters on any instruction JSONL", __name__,
    config=FilterConfig, run=run, outputs=lambda c: [c.output_path().parent], recorded=lambda c: c.resolved(),
    identity=lambda c, _: identity(c), quickstart=_quickstart,
    resources={"cpus_per_task": 4, "mem_gb": 16, "time_limit_min": 12 * 60})
