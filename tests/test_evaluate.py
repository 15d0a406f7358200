"""The evaluate stage end to end on the tiny model: every task kind, base + adapter in one call,
shards merged to the unsharded result, resume after a kill, and the merge guard."""

import dataclasses
import json
import shutil
from pathlib import Path

import pytest

import bioinstruct

from bioinstruct.errors import ConfigError, StageConflict, UserError
from bioinstruct.stages.evaluate import EvaluateConfig, merge, run
from bioinstruct.io.rows import read_jsonl
from bioinstruct.llm import LLMConfig

pytestmark = pytest.mark.integration

DEMO = Path(bioinstruct.__file__).parent / "data" / "demo_tasks"


@pytest.fixture(scope="module")
def adapter(tiny_model_dir, tmp_path_factory):
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer
    torch.manual_seed(0)
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_model_dir),
                           LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False))
    out = tmp_path_factory.mktemp("llama-tiny__all") / "adapter"
    model.save_pretrained(out)
    AutoTokenizer.from_pretrained(tiny_model_dir).save_pretrained(out)
    return out


@pytest.fixture(autouse=True)
def demo_data(monkeypatch):
    monkeypatch.setenv("BIOINSTRUCT_DATA", str(DEMO))


def cfg(model, adapter, out, **kw):
    return EvaluateConfig(model=str(model), adapter=str(adapter) if adapter else None, out=str(out),
                          batch_size=4, max_new_tokens=12, **kw)


def test_every_task_kind_for_base_and_adapter_in_one_call(tiny_model_dir, adapter, tmp_path):
    tasks = ["medqa", "medmcqa", "pubmedqa", "bioasq", "mednli", "medication_status", "coreference",
             "conv2note", "icliniq"]
    judge = LLMConfig(backend="offline")
    results = run(cfg(tiny_model_dir, adapter, tmp_path, tasks=tasks, judge=True, judge_llm=judge))
    by = {(r["model"], r["task"]): r for r in results}
    tuned = adapter.parent.name
    assert set(by) == {(m, t) for m in (tuned, "base") for t in tasks}
    assert "generative_acc" in by[(tuned, "medqa")]["metrics"] and "unparseable_rate" in by[(tuned, "medqa")]["metrics"]
    assert "generative_acc" not in by[("base", "medqa")]["metrics"]
    assert "macro_f1" in by[("base", "pubmedqa")]["metrics"]
    assert set(by[("base", "coreference")]["metrics"]) == {"precision", "recall", "f1"}
    gen = by[(tuned, "conv2note")]["metrics"]
    assert {"rouge1", "rouge2", "rougeL", "similarity", "judge_factuality", "judge_mean"} <= set(gen)
    for r in results:
        assert r["n"] > 0 and (tmp_path / r["model"] / r["task"] / "results.json").exists()
    # The adapter changes the log-likelihoods; the base rows are the base model's.
    t = read_jsonl(tmp_path / tuned / "medqa" / "shard-1-of-1" / "predictions.jsonl")
    b = read_jsonl(tmp_path / "base" / "medqa" / "shard-1-of-1" / "predictions.jsonl")
    assert [r["loglik"] for r in t] != [r["loglik"] for r in b]


def test_merge_with_judge_true_judges_shards_scored_without_it(tiny_model_dir, tmp_path):
    """`evaluate --merge DIR judge=true` (a CPU job, after the GPU's shards) adds the judge's
    scores to a generation task scored without them; the shards' judge=false does not win."""
    out = tmp_path / "e"
    [scored] = run(cfg(tiny_model_dir, None, out, tasks=["conv2note"], limit=2))
    assert not any(k.startswith("judge") for k in scored["metrics"])
    [judged] = merge(str(out), EvaluateConfig(judge=True, judge_llm=LLMConfig(backend="offline")))
    assert {"judge_factuality", "judge_mean"} <= set(judged["metrics"])
    written = json.loads((out / "base" / "conv2note" / "results.json").read_text())["metrics"]
    assert written == json.loads(json.dumps(judged["metrics"]))
    assert {k: v for k, v in written.items() if not k.startswith("judge")} == json.loads(json.dumps(scored["metrics"]))


def test_the_merge_step_judges_complete_shards_once_and_redoes_it_for_another_judge(tiny_model_dir, tmp_path):
    """A sweep's CPU step after shards scored without the judge (evaluate merge=true judge=true):
    it loads no model, judges, and is complete in OUT/<model>/<task>/merge; the same step again
    does nothing, another judge model is a conflict named by key, and a shard config with the
    judge on counts the judge-less shards as complete (the judge is no part of a shard)."""
    out = tmp_path / "e"
    c = cfg(tiny_model_dir, None, out, tasks=["conv2note"], limit=2, shard="1/2")
    run(c)
    run(dataclasses.replace(c, shard="2/2"))
    offline = LLMConfig(backend="offline")
    step = dataclasses.replace(c, judge=True, judge_llm=offline, merge=True)
    [judged] = run(step)
    assert {"judge_factuality", "judge_mean"} <= set(judged["metrics"])
    done = out / "base" / "conv2note" / "merge" / "manifest.json"
    assert json.loads(done.read_text())["status"] == "complete"
    assert run(step) == [judged]  # complete: skipped, results.json as it was
    with pytest.raises(StageConflict, match="judge_llm.model"):
        run(dataclasses.replace(step, judge_llm=dataclasses.replace(offline, model="gpt-4o")))
    shard = out / "base" / "conv2note" / "shard-2-of-2" / "predictions.jsonl"
    before = shard.stat().st_mtime_ns
    [again] = run(dataclasses.replace(c, shard="2/2", judge=True, judge_llm=offline))
    assert shard.stat().st_mtime_ns == before and json.loads(json.dumps(again["metrics"])) == judged["metrics"]


def test_shards_merge_to_the_unsharded_result_by_the_last_shard_and_the_merge_guard(tiny_model_dir, tmp_path):
    whole = run(cfg(tiny_model_dir, None, tmp_path / "whole", tasks=["pubmedqa", "mednli"]))
    sharded = tmp_path / "sharded"
    assert run(cfg(tiny_model_dir, None, sharded, tasks=["pubmedqa", "mednli"], shard="1/2")) == []
    with pytest.raises(UserError, match=r"1 of 2 shards are not complete \(2\)"):
        merge(str(sharded), EvaluateConfig())
    # The shard that completes the set (an array's last task) writes results.json itself.
    completing = run(cfg(tiny_model_dir, None, sharded, tasks=["pubmedqa", "mednli"], shard="2/2"))
    merged = merge(str(sharded), EvaluateConfig())
    key = lambda rs: {(r["task"]): (r["n"], r["metrics"]["acc"]["value"]) for r in rs}  # noqa: E731
    assert key(completing) == key(merged) == key(whole)


def test_a_killed_shard_resumes_where_it_stopped(tiny_model_dir, tmp_path, shared_data, monkeypatch):
    monkeypatch.setenv("BIOINSTRUCT_DATA", str(shared_data))  # MTS-Dialog: enough examples to cut
    c = cfg(tiny_model_dir, None, tmp_path, tasks=["conv2note"], limit=10)
    run(c)
    shard = tmp_path / "base" / "conv2note" / "shard-1-of-1"
    full = (shard / "predictions.jsonl").read_text().splitlines(keepends=True)
    # What a kill -9 mid-run leaves: the manifest says running, half the lines and a torn one.
    (shard / "predictions.jsonl").write_text("".join(full[:4]) + full[4][:20])
    manifest = json.loads((shard / "manifest.json").read_text())
    (shard / "manifest.json").write_text(json.dumps({**manifest, "status": "running"}))
    run(c)
    assert (shard / "predictions.jsonl").read_text().splitlines(keepends=True) == full
    assert json.loads((shard / "manifest.json").read_text())["summary"]["resumed_with"] == 4


def test_missing_data_says_where_to_get_it(tiny_model_dir, tmp_path, monkeypatch):
    empty = tmp_path / "nodata"
    empty.mkdir()
    monkeypatch.setenv("BIOINSTRUCT_DATA", str(empty))
    from bioinstruct.errors import DataError
    with pytest.raises(DataError, match="mednli"):
        run(cfg(tiny_model_dir, None, tmp_path / "out", tasks=["mednli"]))
    assert not (tmp_path / "out").exists()
    shutil.rmtree(empty)


def test_decontamination_scores_the_untouched_items_too_and_the_report_shows_both(tiny_model_dir, tmp_path):
    from bioinstruct.stages import decontaminate, report
    from bioinstruct.tasks import load_examples, load_task

    items = {name: [decontaminate.item_of(t, ex) for ex in load_examples(t)]
             for name, t in ((n, load_task(n)) for n in ("medqa", "pubmedqa"))}
    copied = items["medqa"][:1] + items["pubmedqa"]  # one medqa item, every pubmedqa one
    records = [{"instruction": "Answer this.", "input": "\n".join(t for _, t in it.fields), "output": it.answer}
               for it in copied]
    records.append({"instruction": "Say hello to the world, politely.", "input": "", "output": "Hello, world."})
    (tmp_path / "in.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    decontaminate.run(decontaminate.DecontaminateConfig(run_dir=str(tmp_path), input=str(tmp_path / "in.jsonl"),
                                                        tasks=["medqa", "pubmedqa"]))
    decisions = str(tmp_path / "decontaminate" / "decisions.jsonl")
    assert decontaminate.touched_items(decisions) == {"medqa": {copied[0].id},
                                                      "pubmedqa": {it.id for it in items["pubmedqa"]}}

    out = tmp_path / "evaluate"
    results = {r["task"]: r for r in run(cfg(tiny_model_dir, None, out, tasks=["medqa", "pubmedqa"],
                                             decontamination=decisions))}
    rows = read_jsonl(out / "base" / "medqa" / "shard-1-of-1" / "predictions.jsonl")
    clean = [r for r in rows if r["id"] != copied[0].id]
    untouched = results["medqa"]["untouched"]
    assert untouched["excluded"] == 1 and untouched["n"] == len(clean) == len(rows) - 1
    right = sum(r["pred"] == r["gold"] for r in clean)
    assert untouched["metrics"]["acc"]["value"] == pytest.approx(right / len(clean))
    assert results["medqa"]["metrics"]["acc"]["n"] == len(rows)
    # every item touched: no untouched score at all, never a zero
    assert results["pubmedqa"]["untouched"] == {"decisions": decisions, "excluded": len(items["pubmedqa"]), "n": 0,
                                                "metrics": {}}

    rep = report.run(report.ReportConfig(run_dir=str(tmp_path)))
    table = json.loads((tmp_path / "report" / "report.json").read_text())["tables"]["contamination"]
    by_task = {row[1]: row for row in table["rows"]}
    medqa = next(row for task, row in by_task.items() if "MedQA" in task)
    assert medqa[3]["value"] == results["medqa"]["metrics"]["acc"]["value"]
    assert medqa[4]["value"] == untouched["metrics"]["acc"]["value"] and medqa[5] == "1"
    pubmedqa = next(row for task, row in by_task.items() if "PubMedQA" in task)
    assert pubmedqa[4] is None and pubmedqa[6] is None
    assert "contamination.csv" in rep["summary"]["files"]
    assert "Scores on the items no training instruction touched" in (tmp_path / "report" / "report.md").read_text()

    (tmp_path / "bad.jsonl").write_text('{"index": 0}\n')
    with pytest.raises(UserError, match=r"bad.jsonl:1: not a bioinstruct decontaminate decision"):
        run(cfg(tiny_model_dir, None, tmp_path / "e2", tasks=["medqa"], decontamination=str(tmp_path / "bad.jsonl")))
    assert not (tmp_path / "e2").exists()


# ---- reuse only what was made from the same inputs (issue 15) --------------------------------

@pytest.fixture(scope="module")
def other_model(tmp_path_factory):
    """A second tiny LLaMA of exactly the same shape, other weights (LLaMA-1 vs LLaMA-2 7B)."""
    from bioinstruct.modeling.tiny_model import TinyModelConfig, make_tiny_model

    out = tmp_path_factory.mktemp("tiny-b") / "model"
    make_tiny_model(out, TinyModelConfig(pretrain_steps=20, seed=1))
    return out


@pytest.fixture
def medmcqa_root(shared_data, tmp_path):
    """A data root with the first 40 real MedMCQA dev questions (a copy this test may edit)."""
    root = tmp_path / "data"
    (root / "medmcqa").mkdir(parents=True)
    lines = (shared_data / "medmcqa" / "dev.json").read_text().splitlines(keepends=True)[:40]
    (root / "medmcqa" / "dev.json").write_text("".join(lines))
    return root


def mm(model, out, root, **kw):
    return cfg(model, None, out, tasks=["medmcqa"], limit=30, task_data={"medmcqa": {"root": str(root)}}, **kw)


def acc(results):
    return [(r["model"], r["task"], r["n"], r["metrics"]["acc"]["value"]) for r in results]


def preds(out):
    return read_jsonl(Path(out) / "base" / "medmcqa" / "shard-1-of-1" / "predictions.jsonl")


def test_force_with_another_model_starts_clean(tiny_model_dir, other_model, medmcqa_root, tmp_path):
    fresh_b = run(mm(other_model, tmp_path / "fresh-b", medmcqa_root))
    run(mm(tiny_model_dir, tmp_path / "ev", medmcqa_root))
    made_by_a = preds(tmp_path / "ev")
    assert [r["loglik"] for r in made_by_a] != [r["loglik"] for r in preds(tmp_path / "fresh-b")]
    with pytest.raises(StageConflict,
                       match=r"complete 'evaluate' made from other inputs or config \(inputs.model.fingerprint"):
        run(mm(other_model, tmp_path / "ev", medmcqa_root))
    forced = run(mm(other_model, tmp_path / "ev", medmcqa_root), force=True)
    assert acc(forced) == acc(fresh_b) and preds(tmp_path / "ev") == preds(tmp_path / "fresh-b")


def kill_midway(out, keep=12):
    """What a kill -9 mid-run leaves: the manifest says running, some lines and a torn one."""
    shard = Path(out) / "base" / "medmcqa" / "shard-1-of-1"
    lines = (shard / "predictions.jsonl").read_text().splitlines(keepends=True)
    (shard / "predictions.jsonl").write_text("".join(lines[:keep]) + lines[keep][:20])
    manifest = json.loads((shard / "manifest.json").read_text())
    (shard / "manifest.json").write_text(json.dumps({**manifest, "status": "running"}))
    (shard.parent / "results.json").unlink()


def test_a_killed_run_resumes_only_with_the_same_model(tiny_model_dir, other_model, medmcqa_root, tmp_path):
    fresh_b = run(mm(other_model, tmp_path / "fresh-b", medmcqa_root))
    run(mm(tiny_model_dir, tmp_path / "ev", medmcqa_root))
    kill_midway(tmp_path / "ev")
    with pytest.raises(StageConflict,
                       match=r"partial 'evaluate' output made from other inputs or config \(inputs.model"):
        run(mm(other_model, tmp_path / "ev", medmcqa_root))
    forced = run(mm(other_model, tmp_path / "ev", medmcqa_root), force=True)
    assert acc(forced) == acc(fresh_b)
    manifest = json.loads((tmp_path / "ev" / "base" / "medmcqa" / "shard-1-of-1" / "manifest.json").read_text())
    assert manifest["summary"]["resumed_with"] == 0


def test_a_data_file_changed_at_the_same_path_is_detected(tiny_model_dir, medmcqa_root, tmp_path):
    run(mm(tiny_model_dir, tmp_path / "ev", medmcqa_root))
    old_gold = [r["gold"] for r in preds(tmp_path / "ev")]
    path = medmcqa_root / "medmcqa" / "dev.json"
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    for row in rows[:10]:  # corrected answer keys
        row["cop"] = row["cop"] % 4 + 1
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(StageConflict, match=r"inputs.task.data.path: '[0-9a-f]{64}' -> '[0-9a-f]{64}'"):
        run(mm(tiny_model_dir, tmp_path / "ev", medmcqa_root))
    # As a user meets it: exit 2, one line, no traceback, nothing rewritten.
    import subprocess
    import sys
    before = (tmp_path / "ev" / "base" / "medmcqa" / "results.json").read_bytes()
    cli = subprocess.run([sys.executable, "-m", "bioinstruct", "evaluate", "--model", str(tiny_model_dir),
                          "--tasks", "medmcqa", "--out", str(tmp_path / "ev"), "limit=30", "batch_size=4",
                          "max_new_tokens=12", f"task_data.medmcqa.root={medmcqa_root}"],
                         capture_output=True, text=True, timeout=300)
    assert cli.returncode == 2 and "Traceback" not in cli.stderr, cli.stderr
    assert len(cli.stderr.strip().splitlines()) == 1 and "inputs.task.data.path" in cli.stderr
    assert (tmp_path / "ev" / "base" / "medmcqa" / "results.json").read_bytes() == before
    forced = run(mm(tiny_model_dir, tmp_path / "ev", medmcqa_root), force=True)
    fresh = run(mm(tiny_model_dir, tmp_path / "fresh", medmcqa_root))
    assert acc(forced) == acc(fresh)
    assert [r["gold"] for r in preds(tmp_path / "ev")] == [r["gold"] for r in preds(tmp_path / "fresh")] != old_gold


def test_the_same_run_spelled_otherwise_or_moved_is_skipped(tiny_model_dir, medmcqa_root, tmp_path, monkeypatch,
                                                            capsys):
    first = run(mm(tiny_model_dir, tmp_path / "ev", medmcqa_root))
    (tmp_path / "model-link").symlink_to(tiny_model_dir)
    (tmp_path / "data-link").symlink_to(medmcqa_root)
    shutil.move(tmp_path / "ev", tmp_path / "moved")
    monkeypatch.chdir(tmp_path)
    again = run(cfg("model-link", None, "moved", tasks=["medmcqa"], limit=30,
                    task_data={"medmcqa": {"root": "data-link"}}))
    assert "already complete" in capsys.readouterr().err
    assert acc(again) == acc(first)


def test_results_say_what_was_evaluated(tiny_model_dir, medmcqa_root, tmp_path):
    from bioinstruct.runs.identity import file_sha256, model_fingerprint

    run(mm(tiny_model_dir, tmp_path / "ev", medmcqa_root, shard="1/2"))
    run(mm(tiny_model_dir, tmp_path / "ev", medmcqa_root, shard="2/2"))
    r = json.loads((tmp_path / "ev" / "base" / "medmcqa" / "results.json").read_text())
    assert r["model_fingerprint"] == model_fingerprint(str(tiny_model_dir)) and r["adapter_identity"] is None
    assert r["data"]["path"] == file_sha256(medmcqa_root / "medmcqa" / "dev.json")
    assert (r["limit"], r["n"], r["shards"]) == (30, 30, 2)
    # Another shard count in the same --out: refused before any model loads.
    with pytest.raises(ConfigError, match=r"shard-1-of-2 \(another shard count\)"):
        run(mm(tiny_model_dir, tmp_path / "ev", medmcqa_root, shard="1/3"))
    assert not (tmp_path / "ev" / "base" / "medmcqa" / "shard-1-of-3").exists()


def test_an_adapter_made_on_another_base_is_refused_unless_allowed(tiny_model_dir, other_model, adapter, tmp_path):
    import subprocess
    import sys

    args = [sys.executable, "-m", "bioinstruct", "evaluate", "--model", str(other_model), "--adapter", str(adapter),
            "--tasks", "pubmedqa", "--out", str(tmp_path / "ev"), "batch_size=4"]
    refused = subprocess.run(args, capture_output=True, text=True, timeout=300)
    assert refused.returncode == 2 and "Traceback" not in refused.stderr
    assert len(refused.stderr.strip().splitlines()) == 1
    assert f"was trained on {tiny_model_dir}" in refused.stderr and "allow_base_mismatch=true" in refused.stderr
    assert not (tmp_path / "ev").exists()
    results = run(cfg(other_model, adapter, tmp_path / "ev", tasks=["pubmedqa"], allow_base_mismatch=True))
    tuned = next(r for r in results if r["model"] != "base")
    assert tuned["allow_base_mismatch"] is True and tuned["adapter_identity"]["base"] == str(tiny_model_dir)
    assert next(r for r in results if r["model"] == "base")["allow_base_mismatch"] is None


# ---- one plan per shard (issue 18) ---------------------------------------------------------

def test_a_shard_killed_after_any_line_resumes_to_the_uninterrupted_file(tiny_model_dir, adapter, medmcqa_root,
                                                                         tmp_path):
    """The shard is planned as one set of sorted batches; a resumed shard reruns the batches it
    had not finished, as they were. Cut after every line (and mid-line) of a tuned run that
    also answers generatively, the resumed file equals the uninterrupted one byte for byte."""
    c = cfg(tiny_model_dir, adapter, tmp_path / "whole", tasks=["medmcqa"], limit=13, compare_base=False,
            task_data={"medmcqa": {"root": str(medmcqa_root)}})
    run(c)
    name = Path(adapter).resolve().parent.name
    whole = (tmp_path / "whole" / name / "medmcqa" / "shard-1-of-1" / "predictions.jsonl").read_text()
    lines = whole.splitlines(keepends=True)
    assert len(lines) == 13 and [json.loads(x)["id"] for x in lines] != sorted(json.loads(x)["id"] for x in lines)
    for keep in (0, 3, 4, 9, 12):  # batches of 4: cuts inside and at the ends of batches
        out = tmp_path / f"cut-{keep}"
        shutil.copytree(tmp_path / "whole", out)
        shard = out / name / "medmcqa" / "shard-1-of-1"
        (shard / "predictions.jsonl").write_text("".join(lines[:keep]) + lines[keep][:25])
        manifest = json.loads((shard / "manifest.json").read_text())
        (shard / "manifest.json").write_text(json.dumps({**manifest, "status": "running"}))
        run(dataclasses.replace(c, out=str(out)))
        assert (shard / "predictions.jsonl").read_text() == whole, keep
        assert json.loads((shard / "manifest.json").read_text())["summary"]["resumed_with"] == keep


def test_each_task_is_tokenized_once_for_the_adapter_and_the_base_pass(tiny_model_dir, adapter, medmcqa_root,
                                                                        tmp_path, monkeypatch):
    from bioinstruct.modeling.scoring import LM

    planned = []
    original = LM._loglik_batches
    monkeypatch.setattr(LM, "_loglik_batches", lambda self, requests: planned.append(len(requests))
                        or original(self, requests))
    c = cfg(tiny_model_dir, adapter, tmp_path, tasks=["medmcqa", "pubmedqa"], limit=6, generative=False,
            task_data={"medmcqa": {"root": str(medmcqa_root)}})
    results = run(c)
    assert sorted((r["task"], r["model"]) for r in results) == sorted(
        (t, m) for t in ("medmcqa", "pubmedqa") for m in ("base", Path(adapter).resolve().parent.name))
    # one plan per task, shared by the two passes (medmcqa: 6 questions x 4 choices)
    assert len(planned) == 2 and planned[0] == 24


# ---- out of memory: the batch halves (issue 25) ------------------------------------------

FAULTS = Path(__file__).parent / "faults"  # sitecustomize.py: a forward over too many rows raises


def evaluate_cli(model, adapter, out, root, *extra, fault="oom", popen=False):
    """`bioinstruct evaluate ... batch_size=32` with a fault injected above 4 rows, as a user runs it."""
    import os
    import subprocess
    import sys

    cmd = [sys.executable, "-m", "bioinstruct", "evaluate", "--model", str(model), "--adapter", str(adapter),
           "--tasks", "medmcqa", "--out", str(out), "limit=24", "batch_size=32", "max_new_tokens=12",
           f"task_data.medmcqa.root={root}", *extra]
    env = {**os.environ, "PYTHONPATH": str(FAULTS), "BIOINSTRUCT_TEST_FAULT_ABOVE": "4",
           "BIOINSTRUCT_TEST_FAULT": fault}
    if popen:
        return subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)


def shard_files(out, adapter):
    return {label: out / label / "medmcqa" / "shard-1-of-1" for label in (Path(adapter).resolve().parent.name, "base")}


def test_out_of_memory_halves_the_batch_to_a_run_at_the_size_that_fits(tiny_model_dir, adapter, medmcqa_root,
                                                                        tmp_path):
    data = {"medmcqa": {"root": str(medmcqa_root)}}
    run(cfg(tiny_model_dir, adapter, tmp_path / "at4", tasks=["medmcqa"], limit=24, task_data=data))
    run(dataclasses.replace(cfg(tiny_model_dir, adapter, tmp_path / "at32", tasks=["medmcqa"], limit=24,
                                task_data=data), batch_size=32))
    done = evaluate_cli(tiny_model_dir, adapter, tmp_path / "oom", medmcqa_root)
    assert done.returncode == 0, done.stderr
    at4, at32, oom = (shard_files(tmp_path / x, adapter) for x in ("at4", "at32", "oom"))
    for label, shard in oom.items():  # the adapter pass (log-likelihood, generation) and the base pass
        assert (shard / "predictions.jsonl").read_text() == (at4[label] / "predictions.jsonl").read_text()
        summary = json.loads((shard / "manifest.json").read_text())["summary"]
        assert (summary["batch_size"], summary["out_of_memory_at"]) == (4, [32, 16, 8])
        assert json.loads((shard.parent / "results.json").read_text())["batch_sizes"] == [4]
        for size, half in ((32, 16), (16, 8), (8, 4)):
            assert f"{shard}: out of memory at batch size {size} (OutOfMemoryError: CUDA out of memory." \
                   in done.stderr and f"halving to {half} " in done.stderr
    # Batch size shows in the log-likelihoods: rows made at 32 and kept would not pass for 4's.
    assert (at32["base"] / "predictions.jsonl").read_text() != (at4["base"] / "predictions.jsonl").read_text()


def test_rows_made_before_the_out_of_memory_are_made_again_at_the_smaller_size(tiny_model_dir, adapter,
                                                                               medmcqa_root, tmp_path, monkeypatch):
    """The adapter pass scores every choice (at 32: it fits) before it generates (at 32: out of
    memory): the halved run makes the log-likelihoods again at the size that worked."""
    import torch
    from transformers.generation.utils import GenerationMixin

    data = {"medmcqa": {"root": str(medmcqa_root)}}
    run(cfg(tiny_model_dir, adapter, tmp_path / "at4", tasks=["medmcqa"], limit=24, compare_base=False,
            task_data=data))
    generate = GenerationMixin.generate

    def short_of_memory(self, *args, **kwargs):
        if kwargs["input_ids"].shape[0] > 4:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 1.00 GiB")
        return generate(self, *args, **kwargs)

    monkeypatch.setattr(GenerationMixin, "generate", short_of_memory)
    run(dataclasses.replace(cfg(tiny_model_dir, adapter, tmp_path / "oom", tasks=["medmcqa"], limit=24,
                                compare_base=False, task_data=data), batch_size=32))
    label = Path(adapter).resolve().parent.name
    made, expected = (tmp_path / x / label / "medmcqa" / "shard-1-of-1" / "predictions.jsonl" for x in ("oom", "at4"))
    assert made.read_text() == expected.read_text()


def test_rows_written_before_an_out_of_memory_are_dropped(tiny_model_dir, medmcqa_root, tmp_path, monkeypatch):
    """Out of memory in the second batch, after the first wrote rows: the shard ends as
    a run at the halved size, none of the rows made at the larger size left in it."""
    import torch

    from bioinstruct.modeling.scoring import LM

    c = cfg(tiny_model_dir, None, tmp_path / "at8", tasks=["medmcqa"], limit=24,
            task_data={"medmcqa": {"root": str(medmcqa_root)}})
    run(dataclasses.replace(c, batch_size=8))
    run(dataclasses.replace(c, out=str(tmp_path / "at16"), batch_size=16))
    shard = Path("base") / "medmcqa" / "shard-1-of-1"
    sizes, written, original = [], [], LM.run_loglik

    def second_batch_short_of_memory(self, batch):
        sizes.append(self.batch_size)
        if len(sizes) == 2:
            written.append(len((tmp_path / "oom" / shard / "predictions.jsonl").read_text().splitlines()))
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 1.00 GiB")
        return original(self, batch)

    monkeypatch.setattr(LM, "run_loglik", second_batch_short_of_memory)
    run(dataclasses.replace(c, out=str(tmp_path / "oom"), batch_size=16))
    assert sizes[:3] == [16, 16, 8] and written[0] > 0
    made, at8, at16 = ((tmp_path / x / shard / "predictions.jsonl").read_text() for x in ("oom", "at8", "at16"))
    assert made == at8 != at16
    summary = json.loads((tmp_path / "oom" / shard / "manifest.json").read_text())["summary"]
    assert (summary["batch_size"], summary["out_of_memory_at"], summary["resumed_with"]) == (8, [16], 0)


def test_a_shard_killed_after_the_back_off_resumes_at_the_size_that_worked(tiny_model_dir, adapter, medmcqa_root,
                                                                           tmp_path):
    import signal

    from conftest import wait_for_lines

    run(cfg(tiny_model_dir, adapter, tmp_path / "at4", tasks=["medmcqa"], limit=24,
            task_data={"medmcqa": {"root": str(medmcqa_root)}}))
    tuned = shard_files(tmp_path / "oom", adapter)[Path(adapter).resolve().parent.name]
    proc = evaluate_cli(tiny_model_dir, adapter, tmp_path / "oom", medmcqa_root, popen=True)
    wait_for_lines(tuned / "predictions.jsonl", 4, proc, timeout=300)  # a batch of 4 written: after the back-off
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
    kept = len(read_jsonl(tuned / "predictions.jsonl", allow_torn_tail=True))
    assert 4 <= kept < 24 and json.loads((tuned / "manifest.json").read_text())["status"] == "running"
    resumed = evaluate_cli(tiny_model_dir, adapter, tmp_path / "oom", medmcqa_root)
    assert resumed.returncode == 0, resumed.stderr
    assert f"{tuned}: out of memory" not in resumed.stderr  # it started at 4: nothing ran out
    summary = json.loads((tuned / "manifest.json").read_text())["summary"]
    assert (summary["batch_size"], summary["resumed_with"], summary["out_of_memory_at"]) == (4, kept, [32, 16, 8])
    for label, shard in shard_files(tmp_path / "oom", adapter).items():
        assert (shard / "predictions.jsonl").read_text() == \
            (shard_files(tmp_path / "at4", adapter)[label] / "predictions.jsonl").read_text()


def test_an_error_other_than_out_of_memory_fails_with_its_message(tiny_model_dir, adapter, medmcqa_root, tmp_path):
    failed = evaluate_cli(tiny_model_dir, adapter, tmp_path / "ev", medmcqa_root, fault="runtime")
    assert failed.returncode == 1 and "Traceback" not in failed.stderr
    assert "RuntimeError: injected fault: cuBLAS said no to" in failed.stderr and "halving" not in failed.stderr
    tuned = shard_files(tmp_path / "ev", adapter)[Path(adapter).resolve().parent.name]
    manifest = json.loads((tuned / "manifest.json").read_text())
    assert manifest["status"] == "failed" and "cuBLAS said no" in manifest["error"]
