"""Label every instruction as qa, ie (information extraction), generation or other.

    bioinstruct classify run_dir=runs/v1                                # GPT-4 on runs/v1/filter/kept.jsonl
    bioinstruct classify run_dir=runs/v1 --in biomed_instruct_25k.json  # the released data
    bioinstruct classify run_dir=runs/v1 --in hf://bio-nlp-umass/bioinstruct/biomed_instruct_25k.json
    bioinstruct classify run_dir=runs/v1 llm.backend=openai-batch llm.budget.max_cost=20
    bioinstruct classify run_dir=runs/v1 llm.backend=offline            # rule-based, no API key

Input: --in, a JSONL or JSON list of {instruction, input, output} (default:
run_dir/decontaminate/clean.jsonl when that stage is complete, else run_dir/filter/kept.jsonl);
a few-shot prompt template (prompt_template=FILE.yaml with {instruction} and {input};
default: bioinstruct/data/prompts/classify.yaml).
Output (run_dir/classify/):
  labelled.jsonl   the input records, in order, with id, category (qa, ie, generation,
                   other, or unknown when the model never gave a valid label) and
                   classified_by (model, backend, prompt hash, response id)
  responses.jsonl  every raw answer; failures.jsonl, usage.json as for generate
  summary.json     category counts next to the paper's distribution
Temperature 0 and a closed label set: an answer that is not one label is asked again with
a reminder (parse_attempts in all), then recorded as unknown, never guessed. Same client
machinery as generate: rate limits, retries, budgets, and kill -9 resume without paying
twice. llm.backend=offline is a transparent rule-based classifier (cue words and the
instruction's leading verb), marked backend=offline in every record.
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import re
from pathlib import Path

from ..runs.config import add_config_arguments, config_from_args, ranged
from ..errors import StageStopped
from ..runs.identity import path_identity
from ..io.rows import atomic_write_json, write_jsonl
from ..llm import TRANSPORT_KEYS, Engine, LLMConfig, Request, preflight
from ..llm.prompts import PromptTemplate
from ..runs.progress import progress
from ..io.records import CATEGORIES, PAPER_SHARES, UNKNOWN, read_records, record_id
from ..runs.rundir import is_complete, run_stage
from ..reporting.tables import format_table
from .stage import Stage

REMINDER = "Answer with exactly one word: qa, ie, generation or other."
INPUT_PREVIEW = 600  # characters of the input shown; the task type is in the instruction


@dataclasses.dataclass
class ClassifyConfig:
    run_dir: str = "runs/default"
    input: str | None = None  # default: run_dir/decontaminate/clean.jsonl, else run_dir/filter/kept.jsonl
    prompt_template: str | None = None
    parse_attempts: int = ranged(2, low=1)  # answers asked per instruction before it is labelled unknown
    llm: LLMConfig = dataclasses.field(
        default_factory=lambda: LLMConfig(backend="openai", temperature=0.0, top_p=1.0, max_tokens=5))


_SYNONYMS = {"qa": "qa", "question answering": "qa", "question-answering": "qa", "ie": "ie",
             "information extraction": "ie", "extraction": "ie", "generation": "generation",
             "text generation": "generation", "other": "other"}
_LABEL = re.compile(r"\b(" + "|".join(sorted(map(re.escape, _SYNONYMS), key=len, reverse=True)) + r")\b")


def parse_label(answer: str | None) -> str | None:
    """The one label an answer names, or None: no label, or more than one different label."""
    found = {_SYNONYMS[m] for m in _LABEL.findall((answer or "").lower())}
    return found.pop() if len(found) == 1 else None


# ---- offline classifier -----------------------------------------------------------------

# Cue words per category; the earliest cue in the instruction decides, which is its
# leading verb when it has one ("Summarize ... list ..." is generation). 66 of the 80
# seed tasks get their curated label this way.
_CUES = {
    "qa": r"answer|pick|choose|select|true or false|calculate|work out|what|which|who|why|how (?:many|much|long)|"
          r"is there|does|is the",
    "ie": r"extract|identify|list|find|locate|tag|link|separate|pull out|normali[sz]e|mentioned|mentions|"
          r"entit(?:y|ies)|relations?|spans?|refers? to|coreferen\w*|de-?identif\w*|table",
    "generation": r"write|summari[sz]e|condense|shorten|rewrite|paraphrase|explain|describe|generate|draft|"
                  r"compose|create|translate|simplify|outline|propose|suggest|produce|define|craft|prepare|"
                  r"convert|respond",
    "other": r"classify|categori[sz]e|rank|icd|entail\w*|contradict\w*|eligib\w*|triage|similarity|inference|code",
}
_CUE_PATTERNS = {label: re.compile(r"\b(?:" + cues + r")\b", re.I) for label, cues in _CUES.items()}


def rule_label(instruction: str) -> str:
    """The offline classifier: the category of the earliest cue word; a bare question is qa."""
    hits = [(m.start(), label) for label, p in _CUE_PATTERNS.items() if (m := p.search(instruction))]
    if hits:
        return min(hits)[1]
    return "qa" if instruction.strip().endswith("?") else "other"


def offline_responder(body: dict) -> str:
    match = re.search(r"^Instruction: (.*)\nInput:", body["messages"][-1]["content"], re.M | re.S)
    instruction = match.group(1).rsplit("\nInstruction: ", 1)[-1] if match else ""
    return rule_label(instruction)


# ---- the stage --------------------------------------------------------------------------

def _request(template: PromptTemplate, rid: str, record: dict, attempt: int) -> Request:
    messages = template.messages(instruction=record["instruction"].strip(),
                                 input=record.get("input", "").strip()[:INPUT_PREVIEW] or "<noinput>")
    if attempt > 1:  # the same prompt at temperature 0 would give the same answer again
        messages.append({"role": "user", "content": REMINDER})
    return Request(f"cls-{rid}" + (f"-a{attempt}" if attempt > 1 else ""), messages,
                   {"record_id": rid, "attempt": attempt, "template_sha256": template.sha256})


def default_input(run_dir: str) -> str:
    """The decontaminated set once that stage is complete in the run directory, else the
    filter's output (a run directory made before decontamination existed)."""
    if is_complete(Path(run_dir) / "decontaminate"):
        return str(Path(run_dir) / "decontaminate" / "clean.jsonl")
    return str(Path(run_dir) / "filter" / "kept.jsonl")


def run(cfg: ClassifyConfig, *, force: bool = False) -> dict:
    source = cfg.input or default_input(cfg.run_dir)
    records = read_records(source)
    ids = [record_id(r) for r in records]
    seen: dict[str, int] = {}
    for i, rid in enumerate(ids):
        if rid in seen:  # two records with one id would share one label
            ids[i] = f"{rid}#{i}"
        seen.setdefault(rid, i)
    template = PromptTemplate.load(cfg.prompt_template, "classify.yaml", ("instruction", "input"))
    preflight(cfg.llm)

    def body(stage_dir: Path) -> dict:
        engine = Engine(cfg.llm, stage_dir, responder=offline_responder)
        answers: dict[str, dict] = {}  # record id -> the response that labelled it
        attempts: dict[str, int] = collections.Counter()
        bar = progress(total=len(records), desc="classify", unit="inst")

        def take(response: dict) -> bool:
            rid = response["meta"]["record_id"]
            attempts[rid] = max(attempts[rid], response["meta"]["attempt"])
            if rid not in answers and parse_label(response["content"]):
                answers[rid] = response
                bar.update(1)
            return False

        for response in engine.replay():
            take(response)
        by_id = dict(zip(ids, records))
        for attempt in range(1, cfg.parse_attempts + 1):
            # Asked attempt-1 times without a label (a failed request stays behind: it is
            # sent again by the next run, not promoted to a reminder here).
            todo = [rid for rid in ids if rid not in answers and attempts[rid] == attempt - 1]
            if todo:
                engine.run((_request(template, rid, by_id[rid], attempt) for rid in todo), take)
        bar.close()
        unanswered = [rid for rid in ids if rid not in answers and attempts[rid] < cfg.parse_attempts]
        if unanswered:  # requests that failed outright: failures.jsonl, sent again next run
            raise StageStopped(f"{len(unanswered)} instructions have no answer yet (see failures.jsonl); "
                               f"re-run the same command to continue")

        labelled = []
        for rid, record in zip(ids, records):
            response = answers.get(rid)
            labelled.append({**record, "id": rid,
                             "category": parse_label(response["content"]) if response else UNKNOWN,
                             "classified_by": {"model": response["model"] if response else None,
                                               "backend": cfg.llm.backend, "prompt_sha256": template.sha256,
                                               "response_id": response["id"] if response else None}})
        write_jsonl(stage_dir / "labelled.jsonl", labelled)
        counts = collections.Counter(r["category"] for r in labelled)
        summary = {"input": source, "instructions": len(labelled),
                   "counts": {c: counts[c] for c in (*CATEGORIES, UNKNOWN)},
                   "shares_percent": {c: round(100 * counts[c] / max(len(labelled), 1), 1) for c in CATEGORIES},
                   "paper_shares_percent": PAPER_SHARES, "usage": engine.ledger.snapshot()}
        atomic_write_json(stage_dir / "summary.json", summary)
        return summary

    inputs, ignore = identity(cfg)
    return run_stage(Path(cfg.run_dir) / "classify", "classify", cfg, body, force=force, inputs=inputs,
                     ignore=ignore)


def identity(cfg: ClassifyConfig) -> tuple[dict, tuple[str, ...]]:
    """(inputs, keys compared through them or not at all): the stage resumes (its responses
    replayed) or is skipped only for the same instructions and prompt, by content."""
    source = cfg.input or str(Path(cfg.run_dir) / "filter" / "kept.jsonl")
    template = PromptTemplate.load(cfg.prompt_template, "classify.yaml", ("instruction", "input"))
    inputs = {"input": source if source.startswith("hf://") else path_identity(source),
              "prompt_template": template.sha256}
    return inputs, ("run_dir", "input", "prompt_template", *(f"llm.{k}" for k in TRANSPORT_KEYS))


def summary_table(summary: dict) -> str:
    rows = [(c, summary["counts"][c], f"{summary['shares_percent'][c]:.1f}%", f"{PAPER_SHARES[c]:.1f}%")
            for c in CATEGORIES]
    rows.append(("unknown", summary["counts"]["unknown"], "", ""))
    return format_table(["category", "count", "share", "paper"], rows)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--in", dest="input", metavar="FILE", help="instructions (JSONL, JSON list or hf://...)")
    add_config_arguments(parser)


def main(args: argparse.Namespace) -> int:
    cfg = config_from_args(ClassifyConfig, args, {"input": args.input})
    manifest = run(cfg, force=args.force)
    print(summary_table(manifest["summary"]))
    print(f"-> {Path(cfg.run_dir) / 'classify' / 'labelled.jsonl'}")
    return 0


STAGE = Stage(
    "classify", "label each instruction QA / IE / generation / other", __name__,
    config=ClassifyConfig, run=run, outputs=lambda c: [Path(c.run_dir) / "classify"],
    identity=lambda c, _: identity(c),
    quickstart=lambda q: ClassifyConfig(run_dir=str(q.run_dir), llm=LLMConfig(backend="offline")),
    resources={"cpus_per_task": 4, "mem_gb": 8, "time_limit_min": 24 * 60})
