"""The LLM judge: strict parsing, retries of malformed judgments, offline stand-in, live + resume."""

import pytest

from bioinstruct.io.rows import read_jsonl
from bioinstruct.llm.judge import DIMENSIONS, judge, parse_scores
from bioinstruct.llm import LLMConfig
from bioinstruct.testing.openai_server import OpenAIServer

pytestmark = pytest.mark.unit

ROWS = [{"id": f"r{i}", "instruction": "Write the assessment section.", "input": "Doctor: ... Patient: ...",
         "reference": "Community-acquired pneumonia, start amoxicillin.", "output": out}
        for i, out in enumerate(["Community-acquired pneumonia; amoxicillin started.", "Migraine.", ""])]


def test_parse_scores_is_strict():
    good = "coherence: 8\ncompleteness: 7\nnaturalness: 9\nfactuality: 6"
    assert parse_scores(good) == {"coherence": 8, "completeness": 7, "naturalness": 9, "factuality": 6}
    assert parse_scores("Coherence: 8\ncompleteness:7\n naturalness : 9\nfactuality: 10") is not None
    assert parse_scores("coherence: 8\ncompleteness: 7\nnaturalness: 9") is None
    assert parse_scores("coherence: 0\ncompleteness: 7\nnaturalness: 9\nfactuality: 6") is None
    assert parse_scores("coherence: 8/10\ncompleteness: 7\nnaturalness: 9\nfactuality: 6") is None
    assert parse_scores(None) is None


def test_offline_judge_scores_closer_answers_higher(tmp_path):
    scores = judge(ROWS, LLMConfig(backend="offline"), tmp_path)
    assert all(set(s) == set(DIMENSIONS) for s in scores)
    assert scores[0]["factuality"] > scores[1]["factuality"] >= scores[2]["factuality"]
    assert all(r["backend"] == "offline" for r in read_jsonl(tmp_path / "responses.jsonl"))


def test_live_judge_retries_malformed_then_leaves_unscored_and_resumes(tmp_path, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")

    def grader(body):
        prompt = body["messages"][1]["content"]
        if "Migraine." in prompt:
            return "I would give it a 2."  # never the strict format
        return "coherence: 7\ncompleteness: 6\nnaturalness: 8\nfactuality: 9"

    with OpenAIServer(grader) as server:
        llm = LLMConfig(backend="openai", base_url=server.base_url, temperature=0.0)
        scores = judge(ROWS, llm, tmp_path)
        sent = server.stats.chat_requests
        again = judge(ROWS, llm, tmp_path)  # everything is in responses.jsonl: nothing is sent
        assert server.stats.chat_requests == sent
    assert scores[0] == {"coherence": 7, "completeness": 6, "naturalness": 8, "factuality": 9}
    assert scores[1] is None  # asked twice, never in the format: unscored, not guessed
    assert again == scores
