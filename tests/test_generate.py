"""Generation: parsing what chat models return, seeds, and the offline loop with kill -9 resume."""

import json
import os
import random
import signal
import subprocess
import sys

import pytest

from bioinstruct.errors import ConfigError, DataError, StageStopped
from bioinstruct.stages.generate import (GenerateConfig, load_seeds, load_template, offline_responder,
                                  parse_response, prompt_messages, run)
from bioinstruct.io.rows import read_jsonl
from bioinstruct.runs.rundir import read_manifest
from conftest import wait_for_lines


@pytest.mark.unit
def test_parse_plain_continuation_with_noinput():
    text = ("List three loop diuretics.\n4. Input:\n<noinput>\n4. Output:\nfurosemide, bumetanide, torsemide\n"
            "###\n5. Instruction: Is aspirin an anticoagulant?\n5. Input:\nN/A\n5. Output:\nNo, it is an antiplatelet drug.\n###\n")
    items = parse_response(text, 4, "stop")
    assert [(i["number"], i["instruction"], i["input"], i["output"]) for i in items] == [
        (4, "List three loop diuretics.", "", "furosemide, bumetanide, torsemide"),
        (5, "Is aspirin an anticoagulant?", "", "No, it is an antiplatelet drug.")]


@pytest.mark.unit
def test_parse_markdown_headers_bold_and_reordered_fields():
    text = ("**4. Instruction:** Extract the drugs.\n**4. Output:**\nmetformin\n**4. Input:**\nShe takes metformin.\n\n"
            "### 5. Instruction:\nSummarize the note.\n### 5. Input:\nPt stable.\n### 5. Output:\n**Stable patient.**\n")
    items = parse_response(text, 4, "stop")
    assert items[0] == {"number": 4, "instruction": "Extract the drugs.", "input": "She takes metformin.",
                        "output": "metformin"}
    assert items[1] == {"number": 5, "instruction": "Summarize the note.", "input": "Pt stable.",
                        "output": "Stable patient."}


@pytest.mark.unit
def test_parse_missing_fields_and_unnumbered_headers():
    text = ("Name a statin.\n4. Output:\natorvastatin\n###\n5. Instruction: Define sepsis.\n5. Input:\n<noinput>\n###\n"
            "Instruction: Define gout.\nOutput: Urate crystal arthritis.\n")
    items = parse_response(text, 4, "stop")
    assert items[0]["input"] == "" and items[0]["output"] == "atorvastatin"
    assert items[1] == {"number": 5, "reject": "missing_output"}
    assert items[2]["number"] == 6 and items[2]["instruction"] == "Define gout."


@pytest.mark.unit
def test_parse_drops_only_the_truncated_last_item():
    text = "Name a statin.\n4. Input:\n<noinput>\n4. Output:\natorvastatin\n###\n5. Instruction: Explain the mech"
    items = parse_response(text, 4, "length")
    assert items[0]["output"] == "atorvastatin"
    assert items[1] == {"number": 5, "reject": "truncated"}
    assert parse_response(text, 4, "stop")[1] == {"number": 5, "reject": "missing_output"}


@pytest.mark.unit
def test_parse_rejects_next_item_leaking_into_a_field():
    text = ("Name a statin.\n4. Input:\n<noinput>\n4. Output:\natorvastatin 5. Instruction: Name a diuretic. "
            "5. Output: furosemide\n###\n6. Instruction: Define gout.\n6. Input:\n\n6. Output:\nArthritis.\n")
    items = parse_response(text, 4, "stop")
    assert items[0] == {"number": 4, "reject": "leaked_next_item"}
    assert items[1]["instruction"] == "Define gout."


@pytest.mark.unit
def test_parse_repeated_field_and_empty_content():
    assert parse_response("A.\n4. Input:\nx\n4. Input:\ny\n4. Output:\nz\n", 4, "stop")[0]["reject"] == "repeated_field"
    assert parse_response(None, 4, "content_filter") == [{"number": 4, "reject": "truncated"}]


@pytest.mark.unit
def test_seeds_ship_with_the_package_and_bad_seed_files_name_the_line(tmp_path):
    seeds = load_seeds(None)
    assert len(seeds) == 80
    bad = tmp_path / "seeds.jsonl"
    good = json.dumps({"id": "a", "instruction": "Do x.", "instances": [{"input": "", "output": "y"}]})
    for line2, message in [
        ('{"id": "b", "instruction": "Do y."}', "seeds.jsonl:2: seed task has no 'instances'"),
        ('{"id": "a", "instruction": "Do y.", "instances": [{"input": "", "output": "z"}]}', "seeds.jsonl:2: duplicate id 'a'"),
        ('{"id": "b", "instruction": "Do y.", "instances": [{"input": "", "output": "z"}], "category": "chat"}',
         "seeds.jsonl:2: category 'chat'"),
        ('{"id": "b", "instruction": "", "instances": []}', "seeds.jsonl:2: 'instruction' must be"),
        ('{"id": "b", ', "seeds.jsonl:2: invalid JSON"),
    ]:
        bad.write_text(good + "\n" + line2 + "\n")
        with pytest.raises(DataError, match=message):
            load_seeds(bad)


@pytest.mark.unit
def test_template_must_have_the_tasks_placeholder(tmp_path):
    t = tmp_path / "t.yaml"
    t.write_text("user: Write {num_tasks} tasks.\n")
    with pytest.raises(ConfigError, match="placeholder"):
        load_template(str(t))
    messages = prompt_messages(load_template(None), load_seeds(None)[:3], 20)
    assert [m["role"] for m in messages] == ["system", "user"]
    user = messages[1]["content"]
    assert "set of 20 diverse" in user and user.endswith("###\n4. Instruction:")
    assert user.count("Instruction:") == 4


@pytest.mark.unit
def test_offline_responder_answers_in_the_numbered_format():
    messages = prompt_messages(load_template(None), load_seeds(None)[:3], 8)
    text = offline_responder({"messages": messages})
    assert text == offline_responder({"messages": messages})  # deterministic
    items = parse_response(text, 4, "stop")
    assert [i["number"] for i in items] == [4, 5, 6, 7, 8]
    assert all("reject" not in i for i in items)


def offline_cfg(tmp_path, **kw):
    return GenerateConfig(run_dir=str(tmp_path), target=kw.pop("target", 40),
                          llm=GenerateConfig().llm.__class__(backend="offline"), **kw)


@pytest.mark.unit
def test_offline_generation_reaches_the_target(tmp_path):
    m = run(offline_cfg(tmp_path))
    assert m["status"] == "complete"
    out = tmp_path / "generate"
    inst = read_jsonl(out / "instructions.jsonl")
    assert len(inst) == 40 and len({(r["instruction"], r["input"]) for r in inst}) == 40
    assert all(r["synthetic"] and r["backend"] == "offline" and r["model"] == "offline" for r in inst)
    assert all(len(r["demo_seed_ids"]) == 3 for r in inst)
    usage = json.loads((out / "usage.json").read_text())
    assert usage["accepted"] == 40 and usage["cost_usd"] == 0
    decisions = read_jsonl(out / "decisions.jsonl")
    assert sum(d["kept"] for d in decisions) == 40
    # --reparse rebuilds the same files from responses.jsonl without sending anything.
    before = (out / "instructions.jsonl").read_bytes()
    n_responses = len(read_jsonl(out / "responses.jsonl"))
    run(offline_cfg(tmp_path), reparse=True)
    assert (out / "instructions.jsonl").read_bytes() == before
    assert len(read_jsonl(out / "responses.jsonl")) == n_responses


@pytest.mark.unit
def test_budget_stops_cleanly_and_a_rerun_continues(tmp_path):
    cfg = offline_cfg(tmp_path, target=60)
    cfg.llm.budget.max_requests = 2
    with pytest.raises(StageStopped, match=r"max_requests \(2 of 2 used\)"):
        run(cfg)
    assert read_manifest(tmp_path / "generate")["status"] == "stopped"
    assert len(read_jsonl(tmp_path / "generate" / "responses.jsonl")) == 2
    cfg.llm.budget.max_requests = None
    assert run(cfg, force=True)["status"] == "complete"
    assert len(read_jsonl(tmp_path / "generate" / "instructions.jsonl")) == 60


@pytest.mark.unit
def test_a_stopped_run_continues_only_with_the_same_inputs(tmp_path):
    """A raised budget continues the stopped run (its responses replayed, nothing paid twice);
    another seed file (by content) or demo seed is refused; --force starts without the old responses."""
    from bioinstruct.errors import StageConflict
    from bioinstruct.stages.generate import DEFAULT_SEEDS

    fresh = tmp_path / "fresh"
    run(offline_cfg(fresh, target=60))
    cfg = offline_cfg(tmp_path / "ev", target=60)
    cfg.llm.budget.max_requests = 2
    with pytest.raises(StageStopped):
        run(cfg)
    out = tmp_path / "ev" / "generate"
    first_two = read_jsonl(out / "responses.jsonl")
    seeds = tmp_path / "seeds.jsonl"
    seeds.write_text(DEFAULT_SEEDS.read_text().replace("medication", "medicine", 1))
    with pytest.raises(StageConflict, match=r"partial 'generate' output made from other inputs or config \("
                                            r"inputs.seed_tasks: '[0-9a-f]{64}' -> '[0-9a-f]{64}'"):
        run(offline_cfg(tmp_path / "ev", target=60, seed_tasks=str(seeds)))
    with pytest.raises(StageConflict, match=r"seed: 0 -> 1"):
        run(offline_cfg(tmp_path / "ev", target=60, seed=1))
    assert run(offline_cfg(tmp_path / "ev", target=60))["status"] == "complete"  # budget lifted: continues
    assert read_jsonl(out / "responses.jsonl")[:2] == first_two
    assert (out / "instructions.jsonl").read_bytes() == (fresh / "generate" / "instructions.jsonl").read_bytes()
    run(offline_cfg(tmp_path / "ev", target=60, seed=1), force=True)
    run(offline_cfg(tmp_path / "fresh1", target=60, seed=1))
    assert (out / "instructions.jsonl").read_bytes() == (tmp_path / "fresh1" / "generate" /
                                                         "instructions.jsonl").read_bytes()
    assert read_jsonl(out / "responses.jsonl")[0] != first_two[0]


@pytest.mark.integration
def test_kill_9_at_random_moments_then_rerun_gives_the_uninterrupted_result(tmp_path):
    reference = tmp_path / "ref"
    run(offline_cfg(reference, target=4000))
    expected = (reference / "generate" / "instructions.jsonl").read_bytes()

    victim = tmp_path / "victim"
    cmd = [sys.executable, "-m", "bioinstruct", "generate", f"run_dir={victim}", "target=4000",
           "llm.backend=offline"]
    # A whole run is ~900 responses; each kill lands 20 to 120 responses into a run.
    rng = random.Random(0)
    responses = victim / "generate" / "responses.jsonl"
    for _ in range(3):
        before = responses.read_bytes().count(b"\n") if responses.exists() else 0
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_for_lines(responses, before + rng.randint(20, 120), proc)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    partial = read_jsonl(victim / "generate" / "responses.jsonl", allow_torn_tail=True)
    assert read_manifest(victim / "generate")["status"] == "running" and 0 < len(partial)
    done = subprocess.run(cmd, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert (victim / "generate" / "instructions.jsonl").read_bytes() == expected
    responses = read_jsonl(victim / "generate" / "responses.jsonl")
    assert len({r["id"] for r in responses}) == len(responses)  # no request paid for twice
