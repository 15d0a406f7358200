"""The stats stage: the card's numbers on a hand-made dataset, exact nearest-neighbour ROUGE-L,
truncation against an independent count, figures, skip notes, bad input and real text."""

from __future__ import annotations

import json
import random
import sys
import types

import numpy as np
import pytest
from matplotlib.image import imread

from bioinstruct.cli import main
from bioinstruct.errors import DataError
from bioinstruct.modeling.metrics import rouge_scorer
from bioinstruct.reporting.plots import DPI, FIGSIZE
from bioinstruct.stages.stats import StatsConfig, describe, load_spacy, nearest_other, run, verb_objects


SCORER = rouge_scorer(("rougeL",), False)

# Instruction words: 7 7 7 7 6 6 6 9; input words: 0 5 7 7 12 8 0 5.
RECORDS = [
    {"instruction": "Name the first-line drug class for hypertension.", "input": "",
     "output": "Thiazide diuretics.", "category": "qa"},
    {"instruction": "Which antibiotic treats community-acquired pneumonia in adults?",
     "input": "Patient is allergic to penicillin.", "output": "Doxycycline or a respiratory fluoroquinolone.",
     "category": "qa"},
    {"instruction": "List the drugs mentioned in the text.", "input": "Aspirin and heparin were given on admission.",
     "output": "aspirin, heparin", "category": "ie"},
    {"instruction": "Extract every disease mentioned in the note.", "input": "History of asthma and type 2 diabetes.",
     "output": "asthma; type 2 diabetes", "category": "ie"},
    {"instruction": "Summarize the abstract in one sentence.",
     "input": "Statins reduce LDL cholesterol and cardiovascular events in adults at high risk.",
     "output": "Statins lower LDL and cardiovascular risk.", "category": "generation"},
    {"instruction": "Summarize the abstract in one sentence.",
     "input": "Exercise improves glycemic control in type 2 diabetes.",
     "output": "Exercise helps glucose control.", "category": "generation"},
    {"instruction": "Tell a short joke about cardiologists.", "input": "",
     "output": "They always follow their heart.", "category": "other"},
    {"instruction": "Translate the sentence into plain English for a patient.",
     "input": "The patient presented with dyspnea.", "output": "The patient was short of breath.",
     "category": "unknown"},
]

# The Alpaca templates, written out here rather than imported, so the test checks the stage.
WITH_INPUT = ("Below is an instruction that describes a task, paired with an input that provides further context. "
              "Write a response that appropriately completes the request.\n\n### Instruction:\n{instruction}\n\n"
              "### Input:\n{input}\n\n### Response:\n")
WITHOUT_INPUT = ("Below is an instruction that describes a task. Write a response that appropriately completes the "
                 "request.\n\n### Instruction:\n{instruction}\n\n### Response:\n")


def write_jsonl(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def stats_of(tmp_path, records=RECORDS, **cfg):
    data = write_jsonl(tmp_path / "data.jsonl", records)
    cfg.setdefault("spacy_model", None)
    run(StatsConfig(input=str(data), run_dir=str(tmp_path / "run"), **cfg))
    out = tmp_path / "run" / "stats"
    return json.loads((out / "stats.json").read_text()), (out / "card.md").read_text(), out


def brute_nearest(instructions, i):
    """Max ROUGE-L F of instruction i to every other one, by rouge-score itself."""
    return max(SCORER.score(instructions[i], other)["rougeL"].fmeasure
               for j, other in enumerate(instructions) if j != i)


def assert_png(path, name):
    image = imread(path)
    width, height = FIGSIZE[name]
    assert image.shape[:2] == (round(height * DPI), round(width * DPI))
    assert image[..., :3].std() > 0.05  # something is drawn


@pytest.mark.unit
def test_describe_interpolates_percentiles():
    assert describe([4, 1, 3, 2]) == pytest.approx(
        {"n": 4, "min": 1, "median": 2.5, "mean": 2.5, "p90": 3.7, "p99": 3.97, "max": 4})
    assert describe([]) == {"n": 0}


@pytest.mark.unit
def test_card_numbers_on_a_hand_made_dataset(tmp_path):
    stats, card, out = stats_of(tmp_path)
    assert stats["records"] == 8
    assert stats["empty_input"] == {"count": 2, "share": 0.25}
    assert stats["words"]["instruction"] == pytest.approx(
        {"n": 8, "min": 6, "median": 7.0, "mean": 6.875, "p90": 7.6, "p99": 8.86, "max": 9})
    words_input = stats["words"]["input"]
    assert (words_input["min"], words_input["median"], words_input["mean"], words_input["max"]) == (0, 6.0, 5.5, 12)
    assert stats["categories"]["counts"] == {"qa": 2, "ie": 2, "generation": 2, "other": 1, "unknown": 1}
    assert stats["categories"]["shares"] == {"qa": 0.25, "ie": 0.25, "generation": 0.25, "other": 0.125,
                                             "unknown": 0.125}
    assert "| qa | 2 | 25.0% | 22.8% |" in card and "| unknown | 1 | 12.5% | – |" in card
    assert "| instruction | 6 | 7.0 | 6.9 | 7.6 | 8.9 | 9 |" in card
    assert "| empty input | 2 | 25.0% |" in card

    instructions = [r["instruction"] for r in RECORDS]
    sim = stats["similarity"]
    expected = [brute_nearest(instructions, i) for i in range(len(instructions))]
    assert sim["scored"] == 8 and not sim["sampled"]
    assert sim["scores"]["mean"] == pytest.approx(np.mean(expected), abs=1e-12)
    assert sim["scores"]["max"] == 1.0  # the repeated instruction finds its twin, not itself
    assert sim["share_over_threshold"] == 0.25
    assert sim["most_similar_pairs"][0] == {"a": instructions[4], "b": instructions[5], "score": 1.0}
    assert "all 8 instructions, each against all others" in card

    for name in ("categories", "words", "similarity"):
        assert f"![{name}]({name}.png)" in card
        assert_png(out / f"{name}.png", name)
    assert not (out / "tokens.png").exists() and not (out / "verbs.png").exists()


@pytest.mark.unit
def test_nearest_other_is_exact_with_and_without_a_sample():
    instructions = [r["instruction"] for r in RECORDS] + ["β-δ γ", "Name the drug class for hypertension in adults."]
    everyone = list(range(len(instructions)))
    found = nearest_other(instructions, everyone)
    assert [score for score, _ in found] == [brute_nearest(instructions, i) for i in everyone]
    assert found[8] == (0.0, None)  # no token in rouge-score's alphabet: nothing is near it
    assert found[4][1] == 5 and found[5][1] == 4  # twins point at each other
    subset = [1, 5, 9]  # queries among non-queried instructions, both directions
    assert nearest_other(instructions, subset) == [found[i] for i in subset]


@pytest.mark.unit
def test_sampled_similarity_says_so(tmp_path):
    stats, card, _ = stats_of(tmp_path, similarity_sample=3, seed=1)
    sim = stats["similarity"]
    assert (sim["scored"], sim["of"], sim["sampled"], sim["scores"]["n"]) == (3, 8, True, 3)
    assert "a random sample of 3 of the 8 instructions (seed 1), each against all 7 others" in card


@pytest.mark.unit
def test_skip_notes_without_categories_tokenizer_or_spacy(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "spacy", None)  # import spacy raises ImportError
    plain = [{k: v for k, v in r.items() if k != "category"} for r in RECORDS]
    stats, card, out = stats_of(tmp_path, plain, spacy_model="en_core_web_sm")
    assert stats["categories"] is None and stats["tokens"] is None and stats["verbs"] is None
    assert "No record has a category: the category distribution is left out" in card
    assert "No tokenizer configured: token lengths are left out" in card
    assert "Figure 1B (root verbs and objects) is left out: spaCy is not installed" in card
    assert not (out / "categories.png").exists()
    assert sorted(stats["figures"]) == ["similarity", "words"]


@pytest.mark.unit
def test_spacy_without_its_pipeline_or_switched_off(monkeypatch):
    def load(name, **kwargs):
        raise OSError(f"[E050] Can't find model '{name}'")

    monkeypatch.setitem(sys.modules, "spacy", types.SimpleNamespace(load=load))
    assert load_spacy("en_core_web_sm") == (
        None, "spaCy is installed but its pipeline 'en_core_web_sm' is not "
              "(python -m spacy download en_core_web_sm)")
    assert load_spacy(None) == (None, "spacy_model is null")


class FakeToken:
    def __init__(self, lemma, pos, dep, children=()):
        self.lemma_, self.pos_, self.dep_, self.children = lemma, pos, dep, list(children)


class FakeNlp:
    """Just enough of a spaCy pipeline: the first word is the root, a 'the X' word its object."""

    def pipe(self, texts, batch_size):
        for text in texts:
            words = text.rstrip(".").split()
            objects = [FakeToken(w.lower(), "NOUN", "dobj") for prev, w in zip(words, words[1:]) if prev == "the"]
            pos = "VERB" if words[0] in ("List", "Summarize", "Extract") else "ADJ"
            root = FakeToken(words[0].lower(), pos, "ROOT", objects)
            yield types.SimpleNamespace(sents=iter([types.SimpleNamespace(root=root)]))


@pytest.mark.unit
def test_verb_objects_and_their_figure(tmp_path, monkeypatch):
    instructions = ["List the drugs.", "List the drugs again.", "List the genes.", "Summarize the abstract.",
                    "Extract values.", "Which drug is first-line?"]
    verbs = verb_objects(instructions, FakeNlp())
    assert (verbs["parsed"], verbs["with_root_verb"], verbs["with_verb_and_object"]) == (6, 5, 4)
    assert verbs["top"] == [{"verb": "list", "count": 3, "objects": [("drugs", 2), ("genes", 1)]},
                            {"verb": "summarize", "count": 1, "objects": [("abstract", 1)]}]
    # The whole stage with that parser standing in for spaCy.
    monkeypatch.setattr("bioinstruct.stages.stats.load_spacy", lambda model: (FakeNlp(), None))
    stats, card, out = stats_of(tmp_path, spacy_model="fake")
    assert stats["verbs"]["model"] == "fake" and stats["verbs"]["with_verb_and_object"] == 4
    assert "| summarize | 2 | abstract (2) |" in card and "| list | 1 | drugs (1) |" in card
    assert "![verbs](verbs.png)" in card
    assert_png(out / "verbs.png", "verbs")


@pytest.mark.integration
def test_truncation_matches_an_independent_count(tmp_path, tiny_model_dir):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    templates = [WITH_INPUT if r["input"] else WITHOUT_INPUT for r in RECORDS]
    prompts = [t.format(instruction=r["instruction"], input=r["input"]) for t, r in zip(templates, RECORDS)]
    full = np.array([len(tok(p + r["output"])["input_ids"]) + 1 for p, r in zip(prompts, RECORDS)])
    prompt = np.array([len(tok(p)["input_ids"]) for p in prompts])
    limits = [int(prompt.min()), int(np.median(full)), 10 ** 6]

    stats, card, out = stats_of(tmp_path, tokenizer=str(tiny_model_dir), max_lengths=limits)
    tokens = stats["tokens"]
    assert tokens["length"]["max"] == full.max() and tokens["length"]["mean"] == pytest.approx(full.mean())
    for row, limit in zip(tokens["truncation"], limits):
        assert row["max_length"] == limit
        assert row["share_examples_longer"] == (full > limit).mean()
        assert row["share_tokens_cut"] == pytest.approx(np.maximum(full - limit, 0).sum() / full.sum())
        assert row["share_responses_lost"] == (prompt >= limit).mean()
    assert 0 < tokens["truncation"][1]["share_examples_longer"] < 1
    assert tokens["truncation"][0]["responses_lost"] >= 1 and tokens["truncation"][2]["tokens_cut"] == 0
    assert f"Tokenizer `{tiny_model_dir}`" in card and "![tokens](tokens.png)" in card
    assert_png(out / "tokens.png", "tokens")


@pytest.mark.unit
def test_malformed_input_names_the_line_and_writes_nothing(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps(RECORDS[0]) + "\n\n" + '{"instruction": "Name a statin.", "output": 3}\n')
    with pytest.raises(DataError, match=r"bad\.jsonl:3: 'output' must be a string"):
        run(StatsConfig(input=str(bad), run_dir=str(tmp_path / "run")))
    write_jsonl(bad, [RECORDS[0], {**RECORDS[1], "category": "QA"}])
    with pytest.raises(DataError, match=r"bad\.jsonl:2: category 'QA' is not one of qa, ie"):
        run(StatsConfig(input=str(bad), run_dir=str(tmp_path / "run")))
    assert not (tmp_path / "run").exists()


@pytest.mark.unit
def test_cli_writes_the_card_once(tmp_path, capsys):
    data = write_jsonl(tmp_path / "data.jsonl", RECORDS)
    argv = ["stats", "--in", str(data), "--run-dir", str(tmp_path / "run"), "spacy_model=null"]
    assert main(argv) == 0
    assert f"card -> {tmp_path / 'run' / 'stats' / 'card.md'}" in capsys.readouterr().out
    card = tmp_path / "run" / "stats" / "card.md"
    before = card.stat().st_mtime_ns
    assert main(argv) == 0
    assert "already complete" in capsys.readouterr().err
    assert card.stat().st_mtime_ns == before


@pytest.mark.unit
def test_real_seed_tasks_with_a_sample(tmp_path, shared_data):
    lines = (shared_data / "self_instruct" / "seed_tasks.jsonl").read_text().splitlines()
    tasks = [json.loads(line) for line in lines]
    records = [{"instruction": t["instruction"], **t["instances"][0]} for t in tasks]
    stats, card, out = stats_of(tmp_path, records, similarity_sample=20)
    assert stats["records"] == len(tasks) == 175
    assert stats["words"]["output"]["max"] == max(len(r["output"].split()) for r in records)
    assert stats["empty_input"]["count"] == sum(not r["input"].strip() for r in records)
    assert stats["categories"] is None
    instructions = [r["instruction"] for r in records]
    sim = stats["similarity"]
    assert sim["sampled"] and sim["scored"] == 20
    # The seeded sample's mean nearest-other score, recomputed with rouge-score.
    queries = sorted(random.Random(0).sample(range(len(records)), 20))
    assert sim["scores"]["mean"] == pytest.approx(np.mean([brute_nearest(instructions, i) for i in queries]),
                                                  abs=1e-12)
    for name in ("words", "similarity"):
        assert_png(out / f"{name}.png", name)
