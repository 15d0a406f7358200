"""Grow biomedical instructions with self-instruct: 3 seed tasks per prompt, new tasks back.

    bioinstruct generate run_dir=runs/v1 target=25005                     # GPT-4, key in $OPENAI_API_KEY
    bioinstruct generate run_dir=runs/v1 llm.backend=openai-batch         # Batch API, half price
    bioinstruct generate run_dir=runs/v1 llm.base_url=http://localhost:8000/v1 llm.model=my-model \
        llm.budget.max_cost=null                                          # a local server: no price, no cap
    bioinstruct generate run_dir=runs/v1 llm.budget.max_cost=50           # stop cleanly at $50 (default $100)
    bioinstruct generate run_dir=runs/v1 --reparse                        # re-parse, send nothing

Input: seed tasks (seed_tasks=FILE; default: the 80 biomedical seeds in the package,
JSONL of {id, name, instruction, instances:[{input, output}], category}), a prompt
template (prompt_template=FILE.yaml with system and user messages).
Output (run_dir/generate/):
  responses.jsonl    every raw response, appended before parsing (what was paid for)
  instructions.jsonl accepted {instruction, input, output} + request id, demo seed ids,
                     model, sampling parameters, token usage
  decisions.jsonl    every parsed candidate: kept, or the reason (parse or filter)
  failures.jsonl     requests that ran out of attempts (sent again on the next run)
  usage.json         tokens, requests, retries, failures, cost, acceptance rate
Re-running the same command continues where the last run stopped (after a budget stop,
a Slurm preemption or kill -9): nothing accepted is lost or duplicated, and no answered
request is paid for twice. llm.backend=offline answers with a deterministic local
recombination of the demos: synthetic text for the quickstart and tests, marked as such.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import itertools
import json
import random
import re
from pathlib import Path
from typing import Any, Iterator

from ..runs.config import add_config_arguments, config_from_args, ranged, seed_field
from ..errors import ConfigError, DataError, StageStopped
from ..paths import DATA
from .filter import Criteria, CandidateFilter
from ..runs.identity import path_identity
from ..io.rows import JsonlAppender, iter_rows, read_text, write_jsonl
from ..llm import TRANSPORT_KEYS, Engine, Ledger, LLMConfig, Request, preflight
from ..llm.prompts import PromptTemplate
from ..runs.progress import progress
from ..io.records import CATEGORIES
from ..runs.rundir import run_stage
from .stage import Stage

DEFAULT_SEEDS = DATA / "seed_tasks.jsonl"


@dataclasses.dataclass
class GenerateConfig:
    run_dir: str = "runs/default"
    target: int = ranged(25005, low=1)  # accepted instructions to reach (the paper's count)
    seed_tasks: str | None = None  # None: the package's 80 biomedical seeds
    prompt_template: str | None = None  # None: the package's template
    num_demos: int = ranged(3, low=1)  # seed tasks shown per prompt (the paper's 3)
    num_tasks: int = ranged(20, low=2)  # tasks asked for per prompt, demos included (Alpaca's 20)
    seed: int = seed_field(0)  # demo sampling; prompt i is the same on every run
    stall_after: int = ranged(500, low=1)  # responses in a row without an accepted candidate stop the run
    llm: LLMConfig = dataclasses.field(
        default_factory=lambda: LLMConfig(backend="openai", temperature=1.0, top_p=1.0, max_tokens=3072))
    filter: Criteria = dataclasses.field(default_factory=Criteria)

    def __post_init__(self):
        if self.num_demos >= self.num_tasks:
            raise ValueError(f"num_demos={self.num_demos} must be below num_tasks={self.num_tasks}")


# ---- seeds and prompt ------------------------------------------------------------------

SEED_LAYOUT = ('a seed is {"id", "instruction", "instances": [{"input", "output"}]}, as in Self-Instruct\'s '
               "and Alpaca's seed_tasks.jsonl; README, Generating instructions, shows how to convert other layouts")


def load_seeds(path: str | Path | None) -> list[dict]:
    """Seed tasks (JSON Lines or a JSON array), validated one by one before any request is sent."""
    path = Path(path) if path else DEFAULT_SEEDS
    if not path.exists():
        raise DataError(f"{path}: seed file not found")
    if path.is_file() and (text := read_text(path)).lstrip().startswith("{") and "\n" in text.strip():
        try:  # one object over several lines is no JSON Lines file: say what a seed file holds
            whole = json.loads(text)
        except json.JSONDecodeError:
            whole = None
        if isinstance(whole, dict):
            raise DataError(f"{path}:1: expected a list of seed tasks (a JSON array, or JSON Lines: one task "
                            f"per line), got one JSON object with keys {', '.join(map(repr, list(whole)[:5]))}")
    seeds, ids = [], set()
    for where, seed in iter_rows(path):
        if not isinstance(seed, dict):
            raise DataError(f"{where}: a seed task must be a JSON object")
        for field in ("id", "instruction", "instances"):
            if field not in seed:
                raise DataError(f"{where}: seed task has no '{field}' ({SEED_LAYOUT})")
        if not isinstance(seed["instruction"], str) or not seed["instruction"].strip():
            raise DataError(f"{where}: 'instruction' must be a non-empty string")
        instances = seed["instances"]
        if not isinstance(instances, list) or not instances or not all(
                isinstance(i, dict) and isinstance(i.get("input", ""), str) and isinstance(i.get("output"), str)
                for i in instances):
            raise DataError(f"{where}: 'instances' must be a non-empty list of {{input, output}} strings")
        if not all(i["output"].strip() for i in instances):
            # A demo with an empty output teaches the model to answer nothing: the filter then
            # rejects everything as empty_output, after the requests are paid for.
            raise DataError(f"{where}: an instance of seed '{seed['id']}' has an empty 'output'")
        if seed.get("category") is not None and seed["category"] not in CATEGORIES:
            raise DataError(f"{where}: category '{seed['category']}' is not one of {', '.join(CATEGORIES)}")
        if seed["id"] in ids:
            raise DataError(f"{where}: duplicate id '{seed['id']}'")
        ids.add(seed["id"])
        seeds.append(seed)
    if not seeds:
        raise DataError(f"{path}: no seed tasks")
    return seeds


def load_template(path: str | None) -> PromptTemplate:
    return PromptTemplate.load(path, "generate.yaml", ("tasks",))


def prompt_messages(template: PromptTemplate, demos: list[dict], num_tasks: int) -> list[dict[str, str]]:
    """The self-instruct prompt: numbered demos, then the next number for the model to continue."""
    blocks = []
    for n, demo in enumerate(demos, 1):
        instance = demo["instances"][0]
        blocks.append(f"###\n{n}. Instruction: {demo['instruction'].strip()}\n"
                      f"{n}. Input:\n{instance.get('input', '').strip() or '<noinput>'}\n"
                      f"{n}. Output:\n{instance['output'].strip()}\n")
    blocks.append(f"###\n{len(demos) + 1}. Instruction:")
    return template.messages(num_tasks=str(num_tasks), tasks="".join(blocks))


def demo_indices(cfg: GenerateConfig, n_seeds: int, i: int) -> list[int]:
    """The seeds shown in prompt i: a function of (seed, i) alone, so a resumed run asks
    exactly what the first run would have asked."""
    return random.Random(f"{cfg.seed}:{i}").sample(range(n_seeds), cfg.num_demos)


# ---- parsing ---------------------------------------------------------------------------

# "4. Instruction:", "**4. Input:**", "### 5) Output:", "Instruction:" (number optional).
_HEADER = re.compile(r"^[ \t>#*_]*(?:(\d+)\s*[.):]\s*)?[*_]*\s*(instruction|input|output)\s*[*_]*\s*:[*_]*[ \t]*",
                     re.I | re.M)
_INLINE_HEADER = re.compile(r"\b\d+\s*[.)]\s*[*_]*\s*(?:instruction|input|output)\s*[*_]*\s*:", re.I)
_NO_INPUT = re.compile(r"^\s*(?:<\s*no\s*input\s*>|n/?a|none|no input|\(none\))\.?\s*$", re.I)


def _clean(text: str) -> str:
    lines = text.strip().splitlines()
    while lines and re.fullmatch(r"\s*(#{2,}|-{3,}|\*{3,})\s*", lines[-1]):
        lines.pop()  # the separator before the next item
    text = "\n".join(lines).strip()
    return re.sub(r"^[*_]{2}(.*)[*_]{2}$", r"\1", text, flags=re.S).strip()


def parse_response(content: str | None, first_number: int, finish_reason: str | None
                   ) -> list[dict[str, Any]]:
    """Split a model's numbered tasks into items: each {number, instruction, input, output}
    or {number, reject: reason}. Robust to markdown, missing or reordered fields,
    <noinput>, a truncated last item and the next item leaking into a field."""
    text = (content or "").strip()
    if not _HEADER.match(text):  # the prompt ended with "N. Instruction:"; the answer continues it
        text = f"{first_number}. Instruction: {text}"
    items: list[dict[str, Any]] = []
    current: dict[str, Any] | None = None
    matches = list(_HEADER.finditer(text))
    for m, nxt in zip(matches, matches[1:] + [None]):
        number = int(m.group(1)) if m.group(1) else None
        field = m.group(2).lower()
        value = text[m.end(): nxt.start() if nxt else len(text)]
        new_item = (current is None or (number is not None and number != current["number"])
                    or (number is None and field == "instruction" and "instruction" in current["fields"]))
        if new_item:
            current = {"number": number if number is not None else
                       (current["number"] + 1 if current else first_number), "fields": {}, "repeated": False}
            items.append(current)
        if field in current["fields"]:
            current["repeated"] = True
        current["fields"][field] = value
    if finish_reason in ("length", "content_filter") and items:
        items[-1]["truncated"] = True
    return [_finish(item) for item in items]


def _finish(item: dict) -> dict[str, Any]:
    fields = item["fields"]
    out: dict[str, Any] = {"number": item["number"]}
    raw = " ".join(fields.values())
    if item.get("truncated"):
        return {**out, "reject": "truncated"}
    if item["repeated"]:
        return {**out, "reject": "repeated_field"}
    if _INLINE_HEADER.search(raw) or re.search(r"^\s*#{2,}\s*$", "\n".join(_clean(v) for v in fields.values()), re.M):
        return {**out, "reject": "leaked_next_item"}
    instruction = _clean(fields.get("instruction", ""))
    output = _clean(fields.get("output", ""))
    if not instruction:
        return {**out, "reject": "missing_instruction"}
    if "output" not in fields:
        return {**out, "reject": "missing_output"}
    inp = _clean(fields.get("input", ""))
    return {**out, "instruction": instruction, "input": "" if _NO_INPUT.match(inp) else inp, "output": output}


# ---- offline responder -----------------------------------------------------------------

_TERMS = ["hypertension", "asthma", "sepsis", "pneumonia", "diabetes", "gout", "migraine", "anaemia",
          "cirrhosis", "tuberculosis", "epilepsy", "psoriasis", "glaucoma", "osteoporosis", "lupus",
          "metformin", "warfarin", "amoxicillin", "insulin", "aspirin", "lisinopril", "atorvastatin"]
_VERBS = ["Identify", "List", "Explain", "Summarize", "Determine", "Extract", "Describe", "Classify",
          "Rewrite", "Answer", "Write", "Name"]


def offline_responder(body: dict) -> str:
    """A deterministic stand-in for GPT-4: recombine and perturb the demos in the prompt.

    Its tasks are synthetic (half of one demo's instruction joined to half of another's,
    terms and leading verbs swapped); they exercise parsing, filtering and resume, not
    biomedical quality.
    """
    prompt = body["messages"][-1]["content"]
    demos = [d for d in parse_response(prompt.split("###", 1)[-1], 1, "stop") if "output" in d]
    if not demos:
        return ""
    n_total = int(re.search(r"set of (\d+)", prompt).group(1)) if re.search(r"set of (\d+)", prompt) else 20
    rng = random.Random(hashlib.sha256(prompt.encode()).hexdigest())
    first = len(demos) + 1
    parts = []
    for number in range(first, max(n_total, first + 1) + 1):
        a, b = rng.sample(demos, 2) if len(demos) > 1 else (demos[0], demos[0])
        wa, wb = a["instruction"].split(), b["instruction"].split()
        words = wa[: rng.randint(1, max(1, len(wa) - 1))] + wb[rng.randint(0, max(0, len(wb) - 1)):]
        if words[0] in _VERBS:
            words[0] = rng.choice(_VERBS)
        swap = lambda m: rng.choice(_TERMS) if m.group(0).lower() in _TERMS else m.group(0)  # noqa: E731
        instruction = re.sub(r"[A-Za-z]+", swap, " ".join(words))
        output = re.sub(r"[A-Za-z]+", swap, a["output"])
        inp = rng.choice([a["input"], b["input"]]) or "<noinput>"
        head = "" if number == first else f"{number}. Instruction: "
        parts.append(f"{head}{instruction}\n{number}. Input:\n{inp}\n{number}. Output:\n{output}\n###\n")
    return "".join(parts)


# ---- the loop --------------------------------------------------------------------------

class Collector:
    """Turns responses into decisions and accepted instructions, in prompt order.

    The filter's pool grows with each accepted instruction, so the order decides what is
    kept. Answers arrive in any order (concurrency, retries, kills); each is held until
    every earlier prompt's answer has been handled, so the result is a function of the
    set of answers in responses.jsonl, the same for a replay, a resumed run and an
    uninterrupted one. A prompt that ran out of attempts blocks the ones after it until
    the next run sends it again.
    """

    def __init__(self, cfg: GenerateConfig, seeds: list[dict], instructions: JsonlAppender,
                 decisions: JsonlAppender, ledger: Ledger):
        self.cfg, self.ledger = cfg, ledger
        self.filter = CandidateFilter(cfg.filter, [s["instruction"] for s in seeds])
        self.instructions, self.decisions = instructions, decisions
        self.accepted = self.candidates = self.since_accept = 0
        self.held: dict[int, dict] = {}  # answers waiting for an earlier prompt's
        self.next_index = 0
        self.blocked: str | None = None  # a request that ran out of attempts this run
        self.bar = progress(total=cfg.target, desc="accepted", unit="inst")

    @property
    def reached(self) -> bool:
        return self.accepted >= self.cfg.target

    def __call__(self, response: dict) -> bool:
        """Take one answer; handle those now in order; True once nothing more is wanted."""
        if not self.reached:
            self.held[request_index(response["id"])] = response
            while self.next_index in self.held and not self.reached:
                self._handle(self.held.pop(self.next_index))
                self.next_index += 1
        return self.reached

    def failed(self, request: Request) -> bool:
        """A prompt gave up for this run: the later ones cannot be handled before it is."""
        self.blocked = self.blocked or request.id
        return True

    def _handle(self, response: dict) -> None:
        accepted_before = self.accepted
        first = self.cfg.num_demos + 1
        items = parse_response(response["content"], first, response["finish_reason"])
        parsed = [i for i in items if "reject" not in i]
        decided = iter(self.filter.decide_many(
            [{"instruction": i["instruction"], "input": i["input"], "output": i["output"]} for i in parsed]))
        decisions, accepted = [], []
        for k, item in enumerate(items):
            cid = f"{response['id']}-{k}"
            self.candidates += 1
            if "reject" in item:
                decisions.append({"id": cid, "request_id": response["id"], "kept": False,
                                  "reason": f"parse:{item['reject']}"})
                continue
            decision = next(decided)
            if decision["kept"] and self.accepted >= self.cfg.target:
                # Kept by the filter (and pooled) but past the target: not an instruction.
                decision = {"kept": False, "reason": "target_reached"}
            decisions.append({"id": cid, "request_id": response["id"], "instruction": item["instruction"],
                              **decision})
            if decision["kept"]:
                self.accepted += 1
                accepted.append({
                    "id": cid, "instruction": item["instruction"], "input": item["input"],
                    "output": item["output"], "request_id": response["id"],
                    "demo_seed_ids": response["meta"]["demo_seed_ids"], "model": response["model"],
                    "backend": response["backend"], "params": response["params"], "usage": response["usage"],
                    **({"synthetic": True} if response.get("synthetic") else {})})
        self.decisions.write_many(decisions)
        self.instructions.write_many(accepted)
        self.bar.set_postfix(requests=self.ledger.requests, tokens=f"{self.ledger.tokens:,}",
                             cost=f"${self.ledger.cost:.2f}", refresh=False)
        self.bar.update(self.accepted - accepted_before)
        self.since_accept = 0 if self.accepted > accepted_before else self.since_accept + 1
        if self.since_accept >= self.cfg.stall_after:
            raise StageStopped(f"{self.since_accept} responses in a row gave no new instruction; "
                               f"the pool looks saturated (lower the target or change the seeds)")


def request_index(request_id: str) -> int:
    return int(request_id.rsplit("-", 1)[1])


def requests(cfg: GenerateConfig, seeds: list[dict], template: PromptTemplate) -> Iterator[Request]:
    for i in itertools.count():
        demos = [seeds[j] for j in demo_indices(cfg, len(seeds), i)]
        yield Request(f"gen-{i:07d}", prompt_messages(template, demos, cfg.num_tasks),
                      {"demo_seed_ids": [d["id"] for d in demos], "template_sha256": template.sha256})


def run(cfg: GenerateConfig, *, reparse: bool = False, force: bool = False) -> dict:
    seeds = load_seeds(cfg.seed_tasks)
    template = load_template(cfg.prompt_template)
    if cfg.num_demos > len(seeds):
        raise ConfigError(f"num_demos={cfg.num_demos} but the seed file has {len(seeds)} tasks")
    if not reparse:
        preflight(cfg.llm)

    def body(stage_dir: Path) -> dict:
        engine = Engine(cfg.llm, stage_dir, responder=offline_responder)
        # instructions.jsonl and decisions.jsonl are a function of responses.jsonl: rebuild
        # them from it, so a kill at any moment loses or duplicates nothing.
        for name in ("instructions.jsonl", "decisions.jsonl"):
            write_jsonl(stage_dir / name, [])
        with JsonlAppender(stage_dir / "instructions.jsonl") as inst, \
                JsonlAppender(stage_dir / "decisions.jsonl") as dec:
            collect = Collector(cfg, seeds, inst, dec, engine.ledger)
            try:
                for response in engine.replay():  # to the end: the ledger counts every answer
                    collect(response)
                if not collect.reached and not reparse:
                    engine.run(requests(cfg, seeds, template), collect, collect.failed)
            finally:
                collect.bar.close()
                engine.ledger.extra = {"accepted": collect.accepted, "candidates": collect.candidates,
                                       "acceptance_rate": round(collect.accepted / max(collect.candidates, 1), 4),
                                       "target": cfg.target}
                engine.ledger.save()
        if not collect.reached:
            why = (f"; request {collect.blocked} ran out of attempts (failures.jsonl) and the answers after it "
                   f"wait for it: run again to continue" if collect.blocked else
                   "; --reparse sends nothing: run without it to continue" if reparse else "")
            raise StageStopped(f"{collect.accepted} of {cfg.target} instructions so far{why}")
        return engine.ledger.snapshot()

    inputs, ignore = identity(cfg)
    # --reparse rebuilds from responses.jsonl in place; --force alone starts without it.
    return run_stage(Path(cfg.run_dir) / "generate", "generate", cfg, body, force=force and not reparse,
                     redo=reparse, inputs=inputs, ignore=ignore)


def identity(cfg: GenerateConfig) -> tuple[dict, tuple[str, ...]]:
    """(inputs, keys compared through them or not at all): the stage resumes (responses.jsonl
    replayed) or is skipped only for the same seeds and prompt, by content."""
    inputs = {"seed_tasks": path_identity(cfg.seed_tasks or DEFAULT_SEEDS),
              "prompt_template": load_template(cfg.prompt_template).sha256}
    return inputs, ("run_dir", "seed_tasks", "prompt_template", *(f"llm.{k}" for k in TRANSPORT_KEYS))


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--reparse", action="store_true",
                        help="rebuild instructions.jsonl and decisions.jsonl from responses.jsonl; send nothing")
    add_config_arguments(parser)


def main(args: argparse.Namespace) -> int:
    cfg = config_from_args(GenerateConfig, args)
    manifest = run(cfg, reparse=args.reparse, force=args.force)
    s = manifest["summary"]
    print(f"generate: {s['accepted']} instructions ({s['acceptance_rate']:.0%} of {s['candidates']} candidates) "
          f"from {s['requests']} requests, {s['prompt_tokens'] + s['completion_tokens']:,} tokens, "
          f"${s['cost_usd']:.2f} -> {Path(cfg.run_dir) / 'generate' / 'instructions.jsonl'}")
    return 0


def _quickstart(q) -> GenerateConfig | None:
    # The real-model quickstart trains on real instructions (bioinstruct/demo.py): none to generate.
    return None if q.settings.real else dataclasses.replace(q.settings.generate, run_dir=str(q.run_dir))


STAGE = Stage(
    "generate", "grow instructions from seed tasks with GPT-4 (self-instruct), CPU job", __name__,
    config=GenerateConfig, run=run, outputs=lambda c: [Path(c.run_dir) / "generate"],
    identity=lambda c, _: identity(c), quickstart=_quickstart,
    resources={"cpus_per_task": 4, "mem_gb": 8, "time_limit_min": 48 * 60})  # API-bound: hours of waiting
