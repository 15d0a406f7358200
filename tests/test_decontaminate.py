"""Decontamination: evaluation items planted among instructions are found, clean ones are not.

The planted test uses the real MedMCQA dev and PubMedQA test sets in ../shared/data: items
copied verbatim, reformatted (options reordered; case, whitespace and punctuation changed)
and lightly reworded, among real instructions (the BioInstruct and Self-Instruct seed tasks).
The attribution tests use made-up USMLE-style items and cases (MedQA is not public here):
cases that share one coincidental phrase with an item are kept, copies name their own item.
"""

from __future__ import annotations

import collections
import json
import random
import re
from pathlib import Path

import pytest

from bioinstruct.cli import main
from bioinstruct.similarity.ngrams import Index, Item, record_text, words
from bioinstruct.stages.decontaminate import DecontaminateConfig, item_of, load_items
from bioinstruct.io.rows import read_jsonl
from bioinstruct.tasks import load_examples, load_task

REPO = Path(__file__).resolve().parent.parent


# ---- plants ------------------------------------------------------------------------------

def _question_options(item: Item) -> tuple[str, list[str]]:
    return (next(t for n, t in item.fields if n == "question"), [t for n, t in item.fields if n == "option"])


def verbatim(item: Item, rng: random.Random) -> dict:
    """The item as a generator might copy it: question and lettered options, the answer."""
    if item.task == "medmcqa":
        question, options = _question_options(item)
        return {"instruction": "Answer the following multiple-choice question.",
                "input": question + "\n" + "\n".join(f"{'ABCD'[i]}. {o}" for i, o in enumerate(options)),
                "output": item.answer}
    return {"instruction": "Read the abstract and answer the question with yes, no or maybe.",
            "input": "\n".join(t for _, t in item.fields), "output": item.answer}


def _mangle(text: str, rng: random.Random) -> str:
    """Case, punctuation and whitespace changed; words kept."""
    text = rng.choice([str.upper, str.lower, str.title])(text)
    text = re.sub(r"[.,;:?!()'\"-]", lambda m: rng.choice([" ", ";", " - ", ","]), text)
    return re.sub(r" ", lambda m: rng.choice([" ", "  ", "\n", " \t "]), text)


def reformatted(item: Item, rng: random.Random) -> dict:
    if item.task == "medmcqa":
        question, options = _question_options(item)
        options = rng.sample(options, len(options))
        return {"instruction": _mangle("Pick the right option for this exam question:", rng),
                "input": _mangle(question, rng) + "\nOptions: " + " | ".join(
                    f"({i + 1}) {_mangle(o, rng)}" for i, o in enumerate(options)),
                "output": _mangle(item.answer, rng)}
    lines = [t for _, t in item.fields]
    return {"instruction": "QUESTION: " + _mangle(lines[-1], rng), "input": _mangle(" ".join(lines[:-1]), rng),
            "output": item.answer.upper()}


SYNONYMS = {"following": "below", "most": "mostly", "common": "frequent", "patient": "person",
            "treatment": "therapy", "disease": "disorder", "is": "was", "the": "a", "of": "in", "with": "having",
            "which": "what", "not": "never", "cause": "reason", "seen": "observed", "all": "each",
            "in": "within", "drug": "medication", "true": "correct", "patients": "cases", "and": "&"}


def _reword(text: str, rng: random.Random) -> str:
    """Light rewording: common words swapped for synonyms, about one word in 13 dropped."""
    out = []
    for w in text.split():
        r = rng.random()
        if w.lower().strip(".,?") in SYNONYMS and r < 0.6:
            out.append(SYNONYMS[w.lower().strip(".,?")])
        elif r > 0.075:
            out.append(w)
    return " ".join(out)


def reworded(item: Item, rng: random.Random) -> dict:
    if item.task == "medmcqa":
        question, options = _question_options(item)
        return {"instruction": "Choose the correct answer.",
                "input": _reword(question, rng) + "\n" + "\n".join(_reword(o, rng) for o in rng.sample(options, 4)),
                "output": item.answer}
    lines = [t for _, t in item.fields]
    return {"instruction": _reword(lines[-1], rng), "input": _reword(" ".join(lines[:-1]), rng), "output": item.answer}


def seed_records(shared_data: Path) -> list[dict]:
    """Real instructions with no evaluation item in them: both seed sets' instances."""
    records = []
    for path in (REPO / "bioinstruct" / "data" / "seed_tasks.jsonl",
                 shared_data / "self_instruct" / "seed_tasks.jsonl"):
        for task in read_jsonl(path):
            records += [{"instruction": task["instruction"], "input": i["input"], "output": i["output"]}
                        for i in task["instances"]]
    return records


# ---- unit: the measures on small, known texts ---------------------------------------------

ITEMS = [
    Item("mc", "q1", [("question", "Which of the following nerves supplies the lateral rectus muscle of the eye?"),
                      ("option", "Abducens nerve"), ("option", "Trochlear nerve"), ("option", "Oculomotor nerve"),
                      ("option", "Optic nerve")], "Abducens nerve"),
    Item("mc", "q2", [("question", "Coxsackie virus causes"), ("option", "Infectious mononucleosis"),
                      ("option", "Lymphoma"), ("option", "Herpangina"), ("option", "Herpes")], "Herpangina"),
    Item("gen", "g1", [("input", "Doctor: What brings you in today? Patient: I have had a dry cough for three "
                                 "weeks and it gets worse at night when I lie down."),
                       ("reference", "Three weeks of dry nocturnal cough.")]),
]


def match(records, **cfg):
    index = Index(ITEMS, DecontaminateConfig(tasks=[], **cfg))
    return [[(ITEMS[h["item"]].id, h["method"]) for h in hits] for hits in index.match(records)]


def rec(instruction, input="", output="ok"):
    return {"instruction": instruction, "input": input, "output": output}


@pytest.mark.unit
def test_words_are_lowercase_and_blind_to_punctuation_and_spacing():
    assert words("The  X-ray;\tSHOWS\n(a) 5HT4 agonist…") == ["the", "x", "ray", "shows", "a", "5ht4", "agonist"]
    assert words("ﬁbrosis") == ["fibrosis"]  # NFKC: the ligature is two letters


@pytest.mark.unit
def test_a_long_field_matches_by_13_grams_and_a_short_one_only_whole():
    long_q = ITEMS[0].fields[0][1]
    assert match([rec("Answer this.", long_q.upper().replace(" ", "\n"))], near_duplicate=False) == [[("q1", "ngram")]]
    # the question is also most of the item's distinctive shingles
    assert match([rec("Answer this.", long_q)]) == [[("q1", "ngram"), ("q1", "near_duplicate")]]
    # twelve of its fourteen words: no 13-gram, but still most of its shingles
    assert match([rec("Answer this.", " ".join(long_q.split()[:12]))]) == [[("q1", "near_duplicate")]]
    assert match([rec("Answer this.", " ".join(long_q.split()[:6]))]) == [[]]
    # a 10-word field counts as one n-gram of its own length (min_ngram=8), in full only
    doc = "Three weeks of dry nocturnal cough was the reason he came in"
    assert match([rec("Summarize.", doc)], near_duplicate=False) == [[]]
    item = Item("mc", "s", [("question", "Which enzyme is deficient in classic galactosemia in infants")])
    index = Index([item], DecontaminateConfig(tasks=[], near_duplicate=False))
    assert [len(h) for h in index.match([rec("Q: which enzyme is DEFICIENT in classic galactosemia, in infants?"),
                                         rec("Which enzyme is deficient in classic galactosemia")])] == [1, 0]


@pytest.mark.unit
def test_reordered_options_and_a_short_question_are_a_near_duplicate():
    hits = match([rec("Pick one:", "coxsackie VIRUS causes... (1) herpes (2) herpangina (3) lymphoma "
                                   "(4) infectious mononucleosis", "herpangina")])
    assert hits == [[("q2", "near_duplicate")]]
    # the same options without the question: not every distinctive part is there
    options = "herpes, herpangina, lymphoma or infectious mononucleosis"
    assert match([rec("Which of these is a tumour?", options)]) == [[]]


@pytest.mark.unit
def test_common_shingles_and_one_letter_options_are_not_evidence():
    items = [Item("mc", f"x{i}", [("question", f"Which of the following is true of drug number{i}"),
                                  ("option", "A"), ("option", "B")]) for i in range(30)]
    index = Index(items, DecontaminateConfig(tasks=[], common_items=25))
    assert index.match([rec("Which of the following is true?", "A or B")]) == [[]]


@pytest.mark.unit
def test_clean_text_sharing_vocabulary_is_not_flagged():
    assert match([rec("Explain how the abducens nerve and the oculomotor nerve move the eye.",
                      "Patient: I have a dry cough.", "The lateral rectus abducts the eye.")]) == [[]]


@pytest.mark.unit
def test_item_fields_follow_the_loaders(shared_data):
    task = load_task("medmcqa", {"root": str(shared_data)})
    ex = load_examples(task)[0]
    item = item_of(task, ex)
    assert [n for n, _ in item.fields] == ["question"] + ["option"] * 4
    assert item.fields[0][1] == ex["input"].split("\nA. ")[0].rstrip() and item.answer == ex["option_texts"][ex["gold"]]
    task = load_task("pubmedqa", {"root": str(shared_data)})
    ex = load_examples(task)[0]
    item = item_of(task, ex)
    assert {n for n, _ in item.fields} == {"context"} and not item.fields[-1][1].startswith("Question:")
    assert item.fields[-1][1] in ex["context"]


@pytest.mark.unit
@pytest.mark.parametrize("override, message", [("ngram=0", "ngram"), ("containment=1.5", "containment"),
                                               ("policy=remove", "policy"), ("task_data.nope.path=x", "nope")])
def test_bad_config_is_one_line_and_exit_2(tmp_path, capsys, override, message):
    (tmp_path / "in.jsonl").write_text(json.dumps(rec("Say hello to the world please.")) + "\n")
    assert main(["decontaminate", "--in", str(tmp_path / "in.jsonl"), f"run_dir={tmp_path}", override]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


# ---- integration: planted real items, the stage as users run it ----------------------------

@pytest.fixture(scope="module")
def planted(shared_data, tmp_path_factory):
    """Seed instructions with 150 verbatim, 150 reformatted and 150 reworded items among them."""
    cfg = DecontaminateConfig(tasks=["medmcqa", "pubmedqa"],
                              task_data={t: {"root": str(shared_data)} for t in ("medmcqa", "pubmedqa")})
    items, _ = load_items(cfg)
    rng = random.Random(20)
    records = [{**r, "kind": "clean"} for r in seed_records(shared_data)]
    for kind in (verbatim, reformatted, reworded):
        for item in rng.sample(items, 150):
            records.append({**kind(item, rng), "kind": kind.__name__, "plant": f"{item.task}:{item.id}"})
    rng.shuffle(records)
    run = tmp_path_factory.mktemp("decon")
    with open(run / "in.jsonl", "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in records)
    return run, records


@pytest.mark.integration
def test_every_verbatim_and_reformatted_plant_is_dropped_and_no_clean_record(planted, shared_data, monkeypatch,
                                                                             capsys):
    run, records = planted
    monkeypatch.setenv("BIOINSTRUCT_DATA", str(shared_data))
    assert main(["decontaminate", "--in", str(run / "in.jsonl"), f"run_dir={run}", "tasks=[medmcqa,pubmedqa]"]) == 0
    assert "records touch an evaluation item" in capsys.readouterr().out
    decisions = read_jsonl(run / "decontaminate" / "decisions.jsonl")
    assert [d["index"] for d in decisions] == list(range(len(records)))
    caught = {"verbatim": 0, "reformatted": 0, "reworded": 0, "clean": 0}
    for record, d in zip(records, decisions):
        planted_item = [h for h in d.get("hits", ()) if f"{h['task']}:{h['item_id']}" == record.get("plant")]
        caught[record["kind"]] += bool(planted_item)
        if record["kind"] == "clean":
            assert d["decision"] == "kept" and d["reason"] is None and "hits" not in d, d
        elif record["kind"] != "reworded":
            assert d["decision"] == "dropped" and planted_item, (record, d)
        if planted_item:  # a hit reports both texts, the task, the item and the overlap
            hit = planted_item[0]
            assert d["record_text"].startswith(record["instruction"]) and hit["item_text"] and hit["overlap"]
            methods = {h["method"] for h in d["hits"]}
            assert d["reason"] == ("ngram_overlap" if "ngram" in methods else "near_duplicate")
    # another item is named only where the record holds more of it than one phrase
    items = {f"{i.task}:{i.id}": i for i in load_items(DecontaminateConfig(
        tasks=["medmcqa", "pubmedqa"], task_data={t: {"root": str(shared_data)} for t in ("medmcqa", "pubmedqa")}))[0]}
    others = [(record, h) for record, d in zip(records, decisions) for h in d.get("hits", ())
              if f"{h['task']}:{h['item_id']}" != record.get("plant") and h["method"] == "ngram"]
    for record, h in others:
        item = items[f"{h['task']}:{h['item_id']}"]
        fields = [words(t) for _, t in item.fields]
        w = words(record_text(record))
        runs = _runs(w, _grams(fields))
        whole = any(len(f) >= 8 and f" {' '.join(f)} " in f" {' '.join(w)} " for f in fields)
        # or (a reworded copy) the item's 3-word shingles beyond the run
        grams = _grams(fields)
        inside = {i for s in range(len(w) - 12) if tuple(w[s:s + 13]) in grams for i in range(s, s + 13)}
        beyond = {tuple(w[i:i + 3]) for i in range(len(w) - 2) if not {i, i + 1, i + 2} <= inside} & _grams(fields, 3)
        assert whole or len(runs) > 1 or max(runs, default=0) >= 20 or len(beyond) >= 6, (record, h)
    rate = caught["reworded"] / 150
    print(f"\nreworded plants caught: {caught['reworded']}/150 ({100 * rate:.0f}%); "
          f"hits on an item other than the planted one: {len(others)}")
    assert caught["verbatim"] == caught["reformatted"] == 150 and caught["clean"] == 0
    assert rate >= 0.7  # measured 2026-12: 106/150, see the README; a drop means a measure regressed
    clean = read_jsonl(run / "decontaminate" / "clean.jsonl")
    assert clean == [r for r, d in zip(records, decisions) if d["decision"] == "kept"]
    summary = json.loads((run / "decontaminate" / "summary.json").read_text())
    assert summary["tasks"]["medmcqa"]["items"] == 4183 and summary["tasks"]["pubmedqa"]["items"] == 500
    assert summary["decisions"]["dropped"] == len(records) - len(clean) and summary["examples"]


@pytest.mark.integration
@pytest.mark.parametrize("policy", ["flag", "keep"])
def test_flag_and_keep_write_every_record(planted, shared_data, tmp_path, policy):
    _, records = planted
    run = tmp_path / policy
    (tmp_path / "in.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records[:200]))
    assert main(["decontaminate", "--in", str(tmp_path / "in.jsonl"), f"run_dir={run}", "--policy", policy,
                 "tasks=[medmcqa]", f"task_data.medmcqa.root={shared_data}"]) == 0
    clean = read_jsonl(run / "decontaminate" / "clean.jsonl")
    decisions = read_jsonl(run / "decontaminate" / "decisions.jsonl")
    hit = [d["index"] for d in decisions if d["reason"]]
    assert len(clean) == 200 and hit
    assert {d["decision"] for d in decisions if d["reason"]} == {"flagged" if policy == "flag" else "kept"}
    if policy == "flag":
        assert [i for i, r in enumerate(clean) if "contamination" in r] == hit
        assert clean[hit[0]]["contamination"][0].startswith("medmcqa:")
    else:
        assert clean == records[:200]


@pytest.mark.integration
def test_classify_reads_the_clean_set_and_subsets_refuse_a_dropped_record(planted, shared_data, tmp_path):
    from bioinstruct.stages import classify, subsets
    from bioinstruct.errors import DataError
    from bioinstruct.llm import LLMConfig

    _, records = planted
    records = [r for r in records if r["kind"] in ("clean", "verbatim")][:120]
    run = tmp_path / "run"
    (run / "filter").mkdir(parents=True)
    (run / "filter" / "kept.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    classify.run(classify.ClassifyConfig(run_dir=str(run), llm=LLMConfig(backend="offline")))
    assert len(read_jsonl(run / "classify" / "labelled.jsonl")) == len(records)
    # decontaminate after classify: the labelled set holds dropped records, subsets refuse it
    assert main(["decontaminate", f"run_dir={run}", "tasks=[medmcqa,pubmedqa]",
                 f"task_data.medmcqa.root={shared_data}", f"task_data.pubmedqa.root={shared_data}"]) == 0
    clean = read_jsonl(run / "decontaminate" / "clean.jsonl")
    assert 0 < len(clean) < len(records)
    with pytest.raises(DataError, match="dropped as contaminated"):
        subsets.run(subsets.SubsetsConfig(run_dir=str(run), sizes=[10]))
    assert not (run / "subsets" / "all").exists()
    # classify again reads decontaminate/clean.jsonl; then subsets are made from it
    m = classify.run(classify.ClassifyConfig(run_dir=str(run), llm=LLMConfig(backend="offline")), force=True)
    assert m["summary"]["input"].endswith("decontaminate/clean.jsonl")
    assert subsets.run(subsets.SubsetsConfig(run_dir=str(run), sizes=[10]))["summary"]["records"] == len(clean)


@pytest.mark.integration
def test_a_changed_config_is_refused_and_force_redoes_it(planted, shared_data, tmp_path, capsys):
    _, records = planted
    (tmp_path / "in.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records[:100]))
    args = ["decontaminate", "--in", str(tmp_path / "in.jsonl"), f"run_dir={tmp_path}", "tasks=[medmcqa]",
            f"task_data.medmcqa.root={shared_data}"]
    assert main(args) == 0
    first = read_jsonl(tmp_path / "decontaminate" / "decisions.jsonl")
    assert main(args + ["near_duplicate=false"]) == 2
    assert "near_duplicate: True -> False" in capsys.readouterr().err
    assert read_jsonl(tmp_path / "decontaminate" / "decisions.jsonl") == first
    assert main(args + ["near_duplicate=false", "--force"]) == 0
    again = read_jsonl(tmp_path / "decontaminate" / "decisions.jsonl")
    assert all(h["method"] == "ngram" for d in again for h in d.get("hits", ()))


@pytest.mark.integration
def test_missing_task_data_is_listed_or_refused(tmp_path, capsys):
    (tmp_path / "in.jsonl").write_text(json.dumps(rec("Say hello to the world please.")) + "\n")
    args = ["decontaminate", "--in", str(tmp_path / "in.jsonl"), f"run_dir={tmp_path}", "tasks=[medqa,pubmedqa]",
            f"task_data.pubmedqa.root={REPO / 'bioinstruct' / 'data' / 'demo_tasks'}",
            f"task_data.medqa.root={tmp_path / 'none'}"]
    assert main(args) == 0
    summary = json.loads((tmp_path / "decontaminate" / "summary.json").read_text())
    assert summary["tasks"]["medqa"] == {"items": 0, "missing": str(tmp_path / "none" / "medqa" / "test.jsonl"),
                                         "records": 0, "items_touched": 0}
    assert main(args + ["missing_data=error", "--force"]) == 2
    assert "not found (task medqa" in capsys.readouterr().err


@pytest.mark.integration
def test_the_card_has_a_contamination_section(planted, shared_data, tmp_path):
    from bioinstruct.stages import stats

    _, records = planted
    (tmp_path / "in.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records[:100]))
    assert main(["decontaminate", "--in", str(tmp_path / "in.jsonl"), f"run_dir={tmp_path}", "tasks=[medmcqa]",
                 f"task_data.medmcqa.root={shared_data}"]) == 0
    summary = json.loads((tmp_path / "decontaminate" / "summary.json").read_text())
    stats.run(stats.StatsConfig(input=str(tmp_path / "decontaminate" / "clean.jsonl"), run_dir=str(tmp_path),
                                spacy_model=None, similarity_sample=20))
    card = (tmp_path / "stats" / "card.md").read_text()
    section = card.split("## Contamination with evaluation items")[1].split("\n## ")[0]
    hit = summary["tasks"]["medmcqa"]
    assert f"{summary['contaminated']} of 100 instructions" in section and summary["contaminated"] > 0
    assert f"| medmcqa | 4,183 | {hit['records']} | {hit['items_touched']} |" in section
    assert summary["examples"][0]["item_id"] in section


# ---- attribution: one shared phrase is not contamination ------------------------------------

def _vignette(rng: random.Random) -> tuple[str, list[str]]:
    """A made-up USMLE-style question from common openings, history, vitals and exam lines
    and lead-ins, and four options. Numbers vary as in real vignettes, so two of them share
    a vitals or history line now and then."""
    he, his = rng.choice([("He", "His"), ("She", "Her")])
    lines = [f"A {rng.randint(18, 85)}-year-old {'man' if he == 'He' else 'woman'} comes to the "
             f"{rng.choice(['emergency department', 'physician', 'clinic'])} because of "
             f"{rng.choice(['chest pain', 'shortness of breath', 'fever', 'a cough', 'abdominal pain', 'headaches', 'fatigue', 'joint pain', 'dizziness', 'a rash', 'nausea', 'back pain'])}"
             f" for {rng.randint(2, 9)} {rng.choice(['days', 'weeks', 'months'])}.",
             f"{he} has a history of {rng.choice(['hypertension', 'type 2 diabetes mellitus', 'asthma', 'hyperlipidemia', 'gout', 'hypothyroidism', 'depression', 'COPD'])}"
             f" and {rng.choice(['chronic kidney disease', 'obesity', 'atrial fibrillation', 'osteoarthritis', 'migraine', 'anemia', 'GERD'])}.",
             f"{he} takes {rng.choice(['metformin', 'lisinopril', 'atorvastatin', 'levothyroxine', 'albuterol', 'sertraline', 'warfarin', 'omeprazole'])} daily.",
             f"{he} appears {rng.choice(['uncomfortable', 'ill', 'well', 'anxious'])}. {his} temperature is "
             f"{(t := rng.randint(365, 394) / 10)}°C ({t * 9 / 5 + 32:.1f}°F), pulse is {rng.randint(60, 129)}/min, "
             f"respirations are {rng.randint(12, 28)}/min, and blood pressure is {rng.randint(95, 170)}/{rng.randint(55, 100)} mm Hg.",
             f"{he} {rng.choice(['works as a', 'retired last year as a', 'is training to be a'])} "
             f"{rng.choice(['teacher', 'carpenter', 'nurse', 'truck driver', 'farmer', 'lawyer', 'cook', 'mechanic', 'pilot'])}"
             f" and {rng.choice(['drinks two beers daily', 'has smoked for 20 years', 'runs most mornings', 'recently traveled to Mexico', 'keeps two cats', 'does not drink alcohol'])}.",
             f"Laboratory studies show a hemoglobin of {rng.randint(80, 160) / 10} g/dL, a leukocyte count of "
             f"{rng.randint(30, 190) * 100}/mm3, and a platelet count of {rng.randint(90, 450) * 1000}/mm3.",
             f"Physical examination shows {rng.choice(['crackles at both lung bases', 'a holosystolic murmur', 'tenderness in the right upper quadrant', 'jugular venous distention', 'a palpable spleen', 'pitting edema of the ankles', 'scleral icterus', 'decreased breath sounds on the left'])}.",
             rng.choice(["Which of the following is the most likely diagnosis?",
                         "Which of the following is the most likely cause of this patient's symptoms?",
                         "Which of the following is the most appropriate next step in management?",
                         "Which of the following is the most likely underlying mechanism of this patient's condition?",
                         "Which of the following is the most appropriate pharmacotherapy?"])]
    options = rng.sample(["Pulmonary embolism", "Acute cholecystitis", "Aortic stenosis", "Pneumonia", "Heart failure",
                          "Hemolytic anemia", "Pericarditis", "Pyelonephritis", "Sarcoidosis", "Hepatitis A infection"], 4)
    return " ".join(lines), options


def _grams(fields: list[list[str]], n: int = 13) -> set:
    return {tuple(f[i:i + n]) for f in fields for i in range(len(f) - n + 1)}


def _runs(w: list[str], grams: set, n: int = 13) -> list[int]:
    """Lengths of the stretches of w covered by an item's 13-grams ``grams`` (a plain
    rereading of the rule, one pair at a time)."""
    covered = [False] * len(w)
    for i in range(len(w) - n + 1):
        if tuple(w[i:i + n]) in grams:
            covered[i:i + n] = [True] * n
    runs, length = [], 0
    for c in covered + [False]:
        if c:
            length += 1
        elif length:
            runs, length = runs + [length], 0
    return runs


@pytest.fixture(scope="module")
def usmle(tmp_path_factory):
    """400 made-up MedQA items (medqa/test.jsonl) and 150 made-up cases built from the same
    parts, each sharing a 13-15-word run with at least one item and no more than one such run
    with any item, besides lead-ins and openings common to many items."""
    rng = random.Random(26)
    root = tmp_path_factory.mktemp("usmle")
    items = [_vignette(rng) for _ in range(400)]
    (root / "medqa").mkdir()
    (root / "medqa" / "test.jsonl").write_text("".join(
        json.dumps({"question": q, "options": dict(zip("ABCD", o)), "answer_idx": "A", "answer": o[0]}) + "\n"
        for q, o in items))
    grams = [_grams([words(q)] + [words(x) for x in o]) for q, o in items]
    df = collections.Counter(g for item in grams for g in item)
    # n-grams of many items (lead-ins, openings) are no item's evidence
    grams = [{g for g in item if df[g] <= DecontaminateConfig.common_ngram_items} for item in grams]
    holders = collections.defaultdict(set)
    for k, item in enumerate(grams):
        for g in item:
            holders[g].add(k)
    cases = []
    while len(cases) < 150:
        q, o = _vignette(rng)
        w = words(q)
        runs = [_runs(w, grams[k]) for k in set().union(*(holders.get(g, ()) for g in _grams([w])))]
        if any(len(r) > 1 or max(r) > 15 for r in runs) or not runs:
            continue
        cases.append({"instruction": "Write a teaching case in the style of a board exam question.",
                      "input": "", "output": q + "\n" + "\n".join(f"{'ABCD'[i]}. {x}" for i, x in enumerate(o)),
                      "shares": len(runs)})
    return root, items, cases, grams


@pytest.mark.integration
def test_made_up_cases_sharing_one_phrase_with_an_item_are_kept(usmle, tmp_path, capsys):
    root, items, cases, grams = usmle
    records = cases + [{"instruction": "Answer the following exam question.",
                        "input": q + "\n" + "\n".join(f"{'ABCD'[i]}. {x}" for i, x in enumerate(o)), "output": o[0]}
                       for q, o in items[:40]] + [{"instruction": "What is the answer?", "input": q, "output": ""}
                                                  for q, _ in items[40:60]]
    (tmp_path / "in.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    args = ["decontaminate", "--in", str(tmp_path / "in.jsonl"), f"run_dir={tmp_path}", "tasks=[medqa]",
            f"task_data.medqa.root={root}"]
    assert main(args) == 0
    decisions = read_jsonl(tmp_path / "decontaminate" / "decisions.jsonl")
    summary = json.loads((tmp_path / "decontaminate" / "summary.json").read_text())
    # every made-up case is kept, and each is counted as sharing a phrase only
    assert [d["decision"] for d in decisions[:150]] == ["kept"] * 150
    assert all(d["phrases"] == c["shares"] for d, c in zip(decisions, cases))
    assert summary["phrase_only"] >= 150 and summary["contaminated"] == 60
    # copies (question and options, or the question alone) name their own item by n-grams, and
    # another only where they hold more of it than one phrase (or are its near-duplicate)
    ids = [f"medqa-{k:05d}" for k in range(len(items))]
    for k, (record, d) in enumerate(zip(records[150:], decisions[150:])):
        w = words(record_text(record))
        assert d["decision"] == "dropped" and ids[k] in [h["item_id"] for h in d["hits"] if h["method"] == "ngram"]
        for h in d["hits"]:
            runs = _runs(w, grams[ids.index(h["item_id"])])
            assert h["item_id"] == ids[k] or h["method"] == "near_duplicate" or len(runs) > 1 or max(runs) >= 20, h
    touched = {h["item_id"] for d in decisions for h in d.get("hits", ())}
    assert summary["tasks"]["medqa"]["items_touched"] == len(touched)
    from bioinstruct.stages.decontaminate import touched_items
    assert touched_items(str(tmp_path / "decontaminate" / "decisions.jsonl")) == {"medqa": touched}
    # the same records under the older rule (any shared 13-gram): every case would be dropped
    assert main(args + ["min_runs=1", "common_ngram_items=100000", "--force"]) == 0
    older = read_jsonl(tmp_path / "decontaminate" / "decisions.jsonl")
    assert [d["decision"] for d in older[:150]] == ["dropped"] * 150


@pytest.mark.integration
def test_the_card_counts_phrases_apart(usmle, tmp_path):
    from bioinstruct.stages import stats

    root, items, cases, _ = usmle
    (tmp_path / "in.jsonl").write_text("".join(json.dumps(r) + "\n" for r in cases[:30]))
    assert main(["decontaminate", "--in", str(tmp_path / "in.jsonl"), f"run_dir={tmp_path}", "tasks=[medqa]",
                 f"task_data.medqa.root={root}"]) == 0
    stats.run(stats.StatsConfig(input=str(tmp_path / "decontaminate" / "clean.jsonl"), run_dir=str(tmp_path),
                                spacy_model=None, similarity_sample=10))
    section = (tmp_path / "stats" / "card.md").read_text().split("## Contamination with evaluation items")[1]
    assert "0 of 30 instructions" in section and "30 more shared only one phrase" in section
    assert "| medqa | 400 | 0 | 0 |" in section


@pytest.mark.integration
def test_a_copy_names_another_item_only_beyond_one_phrase(usmle):
    """Copies of one item joined to two phrases of another (two runs), or to one long run of
    it: that other item is named too; joined to one phrase of it: not."""
    _, items, _, grams = usmle
    idx = Index([Item("medqa", str(k), [("question", q)] + [("option", x) for x in o]) for k, (q, o) in enumerate(items)],
                DecontaminateConfig(tasks=[], near_duplicate=False))
    other = words(items[1][0])
    phrase = " ".join(other[30:44])
    two = phrase + " and then " + " ".join(other[60:74])
    long = " ".join(other[30:54])
    assert [[len(r) for r in [_runs(words(t), grams[1])]] for t in (phrase, two, long)] == [[1], [2], [1]]
    named = [sorted(h["item"] for h in hits) for hits in idx.match(
        [rec("Copy.", items[0][0] + "\n" + extra) for extra in (phrase, two, long)])]
    assert named == [[0], [0, 1], [0, 1]]
    assert len(_runs(words(two), grams[1])) == 2
