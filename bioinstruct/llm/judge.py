"""LLM-judge scores for generated text: a fixed rubric, temperature 0, a strict answer format.

The judge goes through the same client machinery as generation (any OpenAI-compatible
endpoint, rate limits, retries, budgets, resume without paying twice); raw judgments stay
in ``responses.jsonl`` of the judge folder. An answer missing a dimension is asked again,
then left unscored (counted, never guessed). ``llm.backend=offline`` is a transparent
stand-in for tests and the quickstart: scores from ROUGE-L against the reference, marked
``backend: offline``; it says nothing about quality.
"""

from __future__ import annotations

import re
from pathlib import Path

from ..modeling.metrics import rouge_scorer
from .config import LLMConfig, Request
from .engine import Engine
from .prompts import PromptTemplate

DIMENSIONS = ("coherence", "completeness", "naturalness", "factuality")
_LINE = re.compile(r"^\s*(" + "|".join(DIMENSIONS) + r")\s*:\s*(\d{1,2})\s*$", re.I | re.M)


def parse_scores(text: str | None) -> dict[str, int] | None:
    """All four dimensions with integers 1-10, or None."""
    scores = {m.group(1).lower(): int(m.group(2)) for m in _LINE.finditer(text or "")}
    if set(scores) != set(DIMENSIONS) or not all(1 <= v <= 10 for v in scores.values()):
        return None
    return scores


def offline_judge(body: dict) -> str:
    prompt = body["messages"][-1]["content"]
    reference = re.search(r"Reference answer: (.*?)\nAssistant's answer: ", prompt, re.S)
    output = re.search(r"Assistant's answer: (.*?)\n\nScore each dimension", prompt, re.S)
    f = rouge_scorer(("rougeL",), False).score(reference.group(1), output.group(1))["rougeL"].fmeasure
    score = max(1, min(10, round(1 + 9 * f)))
    return "\n".join(f"{d}: {score}" for d in DIMENSIONS)


def judge(rows: list[dict], llm: LLMConfig, out_dir: Path, attempts: int = 2,
          template_path: str | None = None) -> list[dict[str, int] | None]:
    """Scores for each row ({id, instruction, input, reference, output}), in order."""
    template = PromptTemplate.load(template_path, "judge.yaml", ("instruction", "input", "reference", "output"))
    engine = Engine(llm, out_dir, responder=offline_judge)
    scores: dict[str, dict[str, int]] = {}
    asked: dict[str, int] = {}

    def take(response: dict) -> bool:
        rid = response["meta"]["row"]
        asked[rid] = max(asked.get(rid, 0), response["meta"]["attempt"])
        if rid not in scores and (parsed := parse_scores(response["content"])):
            scores[rid] = parsed
        return False

    for response in engine.replay():
        take(response)
    by_id = {r["id"]: r for r in rows}
    for attempt in range(1, attempts + 1):
        todo = [rid for rid in by_id if rid not in scores and asked.get(rid, 0) == attempt - 1]
        requests = (Request(f"judge-{rid}" + (f"-a{attempt}" if attempt > 1 else ""),
                            template.messages(**{k: by_id[rid].get(k) or "<none>" for k in
                                                 ("instruction", "input", "reference", "output")}),
                            {"row": rid, "attempt": attempt, "template_sha256": template.sha256})
                    for rid in todo)
        engine.run(requests, take)
    return [scores.get(r["id"]) for r in rows]
