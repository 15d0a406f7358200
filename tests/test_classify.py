"""classify: labels, retries of unparseable answers, the offline classifier, live + resume."""

import json
import os
import signal
import subprocess
import sys

import pytest

from bioinstruct.stages.classify import ClassifyConfig, parse_label, rule_label, run
from bioinstruct.errors import DataError
from bioinstruct.io.rows import read_jsonl
from bioinstruct.llm import LLMConfig
from bioinstruct.io.records import record_id
from bioinstruct.testing.openai_server import Faults, OpenAIServer
from conftest import wait_for_lines


INSTRUCTIONS = [
    "Which drug is first-line for type 2 diabetes?",
    "Extract every medication and dose from the note.",
    "Summarize the discharge summary for the family doctor.",
    "Classify the abstract by study design.",
    "Explain what an HbA1c of 9% means in plain words.",
    "List the diseases mentioned in the passage.",
]


def write_input(tmp_path, instructions=INSTRUCTIONS):
    path = tmp_path / "kept.jsonl"
    path.write_text("".join(json.dumps({"instruction": i, "input": "", "output": "x"}) + "\n" for i in instructions))
    return path


@pytest.mark.unit
@pytest.mark.parametrize("answer, label", [
    ("qa", "qa"), (" IE.", "ie"), ("Category: generation", "generation"), ("other", "other"),
    ("Information extraction", "ie"), ("question answering", "qa"),
    ("qa or ie", None), ("I am not sure", None), ("", None), (None, None),
])
def test_parse_label_accepts_one_label_only(answer, label):
    assert parse_label(answer) == label


@pytest.mark.unit
def test_offline_rules_match_most_seed_labels():
    seeds = [json.loads(line) for line in open(os.path.join(os.path.dirname(__file__), "..", "bioinstruct",
                                                             "data", "seed_tasks.jsonl"))]
    agree = sum(rule_label(s["instruction"]) == s["category"] for s in seeds)
    assert agree >= 60  # 66 of 80 when written


@pytest.mark.unit
def test_offline_classify_writes_labels_in_order_with_provenance(tmp_path):
    m = run(ClassifyConfig(run_dir=str(tmp_path), input=str(write_input(tmp_path)), llm=LLMConfig(backend="offline")))
    rows = read_jsonl(tmp_path / "classify" / "labelled.jsonl")
    assert [r["category"] for r in rows] == ["qa", "ie", "generation", "other", "generation", "ie"]
    assert [r["instruction"] for r in rows] == INSTRUCTIONS
    assert all(r["classified_by"]["backend"] == "offline" and r["classified_by"]["model"] == "offline" for r in rows)
    assert rows[0]["id"] == record_id({"instruction": INSTRUCTIONS[0], "input": ""})
    assert m["summary"]["counts"] == {"qa": 1, "ie": 2, "generation": 2, "other": 1, "unknown": 0}


@pytest.mark.unit
def test_bad_input_fails_before_any_work(tmp_path):
    bad = tmp_path / "kept.jsonl"
    bad.write_text('{"instruction": "Name a statin.", "output": "x"}\n{"output": "y"}\n')
    with pytest.raises(DataError, match=r"kept.jsonl:2: record has no 'instruction'"):
        run(ClassifyConfig(run_dir=str(tmp_path), input=str(bad), llm=LLMConfig(backend="offline")))
    assert not (tmp_path / "classify").exists()


def flaky_labeller(body):
    """Answers with prose for the summary task until reminded; never labels the last task."""
    prompt = body["messages"][1]["content"]
    instruction = prompt.rsplit("Instruction: ", 1)[-1].split("\nInput:")[0]
    if "diseases mentioned" in instruction:
        return "Hmm."
    if "Answer with exactly one word" in body["messages"][-1]["content"]:
        return "generation"
    if "discharge summary for the family doctor" in instruction:
        return "This looks like a summarisation or maybe a question answering task."
    return rule_label(instruction)


@pytest.mark.integration
def test_live_unparseable_answers_are_retried_then_unknown(tmp_path, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    faults = Faults(rate_limit=0.1, server_error=0.1, seed=4, retry_after=0.01)
    with OpenAIServer(flaky_labeller, faults) as server:
        llm = LLMConfig(backend="openai", base_url=server.base_url, backoff_base=0.01, backoff_max=0.02,
                        temperature=0.0, max_tokens=5)
        m = run(ClassifyConfig(run_dir=str(tmp_path), input=str(write_input(tmp_path)), llm=llm))
        bodies = server.chat_bodies
    rows = read_jsonl(tmp_path / "classify" / "labelled.jsonl")
    assert [r["category"] for r in rows] == ["qa", "ie", "generation", "other", "generation", "unknown"]
    assert rows[2]["classified_by"]["response_id"].endswith("-a2")
    assert m["summary"]["counts"]["unknown"] == 1
    assert all(b["temperature"] == 0.0 for b in bodies)
    responses = read_jsonl(tmp_path / "classify" / "responses.jsonl")
    assert sorted(r["id"] for r in responses) == sorted(
        [f"cls-{r['id']}" for r in rows] + [f"cls-{rows[2]['id']}-a2", f"cls-{rows[5]['id']}-a2"])


@pytest.mark.integration
def test_kill_9_then_rerun_pays_nothing_twice(tmp_path, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    instructions = [f"Which drug number {i} treats condition {i % 7}?" for i in range(120)]
    source = write_input(tmp_path, instructions)
    with OpenAIServer(lambda body: "qa", latency=0.1) as server:
        cmd = [sys.executable, "-m", "bioinstruct", "classify", f"run_dir={tmp_path}", "--in", str(source),
               f"llm.base_url={server.base_url}", "llm.concurrency=4"]
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_for_lines(tmp_path / "classify" / "responses.jsonl", 10, proc)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        partial = len(read_jsonl(tmp_path / "classify" / "responses.jsonl", allow_torn_tail=True))
        assert 0 < partial < 120
        done = subprocess.run(cmd, capture_output=True, text=True)
        assert done.returncode == 0, done.stderr
        served = server.stats.outcomes["ok"]
    assert len(read_jsonl(tmp_path / "classify" / "labelled.jsonl")) == 120
    responses = read_jsonl(tmp_path / "classify" / "responses.jsonl")
    assert len(responses) == 120 and len({r["id"] for r in responses}) == 120
    assert served <= 120 + 4  # at most the requests in flight at the kill were paid twice


@pytest.mark.unit
def test_a_stopped_run_continues_only_for_the_same_instructions(tmp_path):
    """A raised budget continues (nothing asked twice); an input file changed at the same path
    is refused naming its hash; --force labels the new file from scratch."""
    from bioinstruct.errors import StageConflict, StageStopped

    path = write_input(tmp_path)
    cfg = ClassifyConfig(run_dir=str(tmp_path), input=str(path), llm=LLMConfig(backend="offline"))
    cfg.llm.budget.max_requests = 2
    with pytest.raises(StageStopped):
        run(cfg)
    asked = read_jsonl(tmp_path / "classify" / "responses.jsonl")
    write_input(tmp_path, INSTRUCTIONS[::-1])
    with pytest.raises(StageConflict, match=r"inputs.input: '[0-9a-f]{64}' -> '[0-9a-f]{64}'"):
        run(ClassifyConfig(run_dir=str(tmp_path), input=str(path), llm=LLMConfig(backend="offline")))
    m = run(ClassifyConfig(run_dir=str(tmp_path), input=str(path), llm=LLMConfig(backend="offline")), force=True)
    rows = read_jsonl(tmp_path / "classify" / "labelled.jsonl")
    assert [r["instruction"] for r in rows] == INSTRUCTIONS[::-1] and m["summary"]["instructions"] == 6
    assert read_jsonl(tmp_path / "classify" / "responses.jsonl")[0] != asked[0]
    write_input(tmp_path)
    cfg.llm.budget.max_requests = 2
    with pytest.raises(StageStopped):
        run(cfg, force=True)
    cfg.llm.budget.max_requests = None  # a transport key: the stopped run continues
    run(cfg)
    assert len(read_jsonl(tmp_path / "classify" / "responses.jsonl")) == 6
    assert [r["instruction"] for r in read_jsonl(tmp_path / "classify" / "labelled.jsonl")] == INSTRUCTIONS
