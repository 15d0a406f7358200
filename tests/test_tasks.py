"""The task registry and loaders: every task on synthetic fixtures (bioinstruct/data/demo_tasks) and,
where public, on the real files in ../shared/data; the multiple-choice prompts against
lm-evaluation-harness's own task code."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

import bioinstruct

from bioinstruct.errors import ConfigError, DataError
from bioinstruct.tasks import Task, load_examples, load_task, task_names
from bioinstruct.modeling.metrics import normalize_item
from bioinstruct.tasks.conv2note import MTS_SECTION_NAMES

pytestmark = pytest.mark.unit

FIXTURES = Path(bioinstruct.__file__).parent / "data" / "demo_tasks"
ALL_TASKS = ["bioasq", "conv2note", "coreference", "icliniq", "medication_status", "medmcqa",
             "mednli", "medqa", "pubmedqa"]


@pytest.fixture
def fixture_root(monkeypatch) -> Path:
    monkeypatch.setenv("BIOINSTRUCT_DATA", str(FIXTURES))
    return FIXTURES


@pytest.fixture
def real_root(monkeypatch, shared_data) -> Path:
    monkeypatch.setenv("BIOINSTRUCT_DATA", str(shared_data))
    return shared_data


def examples(name: str, **overrides) -> list[dict]:
    return load_examples(load_task(name, overrides))


def write_jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows),
                    encoding="utf-8")
    return path


# ---------------------------------------------------------------------------- registry


def test_registry_lists_every_task_with_its_metadata():
    assert task_names() == ALL_TASKS
    kinds = {n: load_task(n).kind for n in ALL_TASKS}
    assert kinds == {"bioasq": "multiple_choice", "medmcqa": "multiple_choice", "mednli": "multiple_choice",
                     "medqa": "multiple_choice", "pubmedqa": "multiple_choice", "conv2note": "generation",
                     "icliniq": "generation", "coreference": "extraction", "medication_status": "extraction"}
    for name in ALL_TASKS:
        task = load_task(name)
        assert isinstance(task, Task) and task.name == name
        assert task.metrics and task.description and "\n" not in task.description
        assert len(task.obtain) > 40 and "\n" not in task.obtain
        assert "acc" in task.metrics or "f1" in task.metrics or "rougeL" in task.metrics
    assert load_task("pubmedqa").metrics == ["acc", "macro_f1"]
    assert load_task("medqa").metrics == ["acc", "acc_norm"]


def test_unknown_task_names_the_closest():
    with pytest.raises(ConfigError, match="unknown task 'pubmedq'.*did you mean 'pubmedqa'"):
        load_task("pubmedq")
    with pytest.raises(ConfigError, match="did you mean 'medmcqa'"):
        load_task("med_mcqa")


def test_overrides_are_checked_and_typed(fixture_root):
    with pytest.raises(ConfigError, match=r"unknown data option 'splt' \(closest: data.split\)"):
        load_task("pubmedqa", {"splt": "pqal"})
    with pytest.raises(ConfigError, match="data.split must be one of test, pqal"):
        load_task("pubmedqa", {"split": "train"})
    with pytest.raises(ConfigError, match="data.cop_base must be one of auto, 0, 1"):
        load_task("medmcqa", {"cop_base": 2})
    assert load_task("pubmedqa", {"data.split": "pqal"}).data["split"] == "pqal"  # data. prefix
    assert load_task("bioasq", {"use_snippets": "false"}).data["use_snippets"] is False  # CLI string
    assert load_task("pubmedqa", {"ground_truth_path": "null"}).data["ground_truth_path"] is None


def test_paths_resolve_under_the_data_root(monkeypatch, tmp_path):
    monkeypatch.delenv("BIOINSTRUCT_DATA", raising=False)
    monkeypatch.chdir(tmp_path)
    task = load_task("medmcqa")
    assert task.data["path"] == str(tmp_path / "data" / "medmcqa" / "dev.json")
    monkeypatch.setenv("BIOINSTRUCT_DATA", "/srv/bio")
    assert load_task("medmcqa").data["path"] == "/srv/bio/medmcqa/dev.json"
    assert load_task("medmcqa", {"path": "mine/dev.jsonl"}).data["path"] == "/srv/bio/mine/dev.jsonl"
    assert load_task("medmcqa", {"path": "/abs/dev.jsonl"}).data["path"] == "/abs/dev.jsonl"
    assert load_task("medmcqa", {"root": "/r"}).data["path"] == "/r/medmcqa/dev.json"


def test_missing_file_says_how_to_obtain_it(monkeypatch, tmp_path):
    monkeypatch.setenv("BIOINSTRUCT_DATA", str(tmp_path))
    for name in ALL_TASKS:
        task = load_task(name)
        with pytest.raises(DataError) as e:
            load_examples(task)
        msg = str(e.value)
        assert msg.startswith(str(tmp_path)) and "not found" in msg, msg
        assert task.obtain in msg and "BIOINSTRUCT_DATA" in msg
    with pytest.raises(DataError, match="registration"):
        load_examples(load_task("bioasq"))
    with pytest.raises(DataError, match="physionet.org"):
        load_examples(load_task("mednli"))


def test_every_task_loads_from_the_fixture_root(fixture_root):
    counts = {name: len(examples(name)) for name in ALL_TASKS}
    assert counts == {"bioasq": 3, "conv2note": 3, "coreference": 2, "icliniq": 2, "medication_status": 3,
                      "medmcqa": 3, "mednli": 3, "medqa": 3, "pubmedqa": 2}
    for name in ALL_TASKS:
        exs = examples(name)
        ids = [e["id"] for e in exs]
        assert all(isinstance(i, str) and i for i in ids) and len(set(ids)) == len(ids)
        assert [e["id"] for e in examples(name)] == ids  # stable


# ---------------------------------------------------------------------------- MedQA


def test_medqa_both_layouts_give_the_same_prompts(fixture_root):
    orig = examples("medqa")
    hf = examples("medqa", path="medqa/test_hf.jsonl")
    assert [e["id"] for e in orig] == ["medqa-00000", "medqa-00001", "medqa-00002"]
    assert [e["id"] for e in hf] == ["hf-0", "hf-1", "hf-2"]
    assert [e["gold"] for e in orig] == [0, 2, 1] and [e["gold"] for e in hf] == [0, 2, 3]
    for a, b in zip(orig[:2], hf[:2]):
        for key in ("context", "choices", "gold", "labels", "option_texts", "instruction", "input"):
            assert a[key] == b[key]
    e = orig[1]
    assert e["context"] == ("Question: Which vitamin deficiency is classically linked to night blindness?\n"
                            "A. Vitamin C\nB. Vitamin D\nC. Vitamin A\nD. Vitamin K\nAnswer:")
    assert e["choices"] == [" A", " B", " C", " D"] and e["labels"] == ["A", "B", "C", "D"]
    assert e["option_texts"] == ["Vitamin C", "Vitamin D", "Vitamin A", "Vitamin K"]
    assert e["instruction"] == "Answer the multiple-choice question with the letter of the correct option."
    assert e["input"] == ("Which vitamin deficiency is classically linked to night blindness?\n"
                          "A. Vitamin C\nB. Vitamin D\nC. Vitamin A\nD. Vitamin K")
    assert e["meta"] == {"meta_info": "step1"}
    # Forcing the other layout is an error that says so.
    with pytest.raises(DataError, match=r"test_hf.jsonl:1: no 'options': this looks like the HF layout"):
        examples("medqa", path="medqa/test_hf.jsonl", layout="original")
    with pytest.raises(DataError, match=r"test.jsonl:1: no 'sent1': this looks like the original layout"):
        examples("medqa", layout="hf")


def test_medqa_malformed_records_name_file_and_line(fixture_root, tmp_path):
    good = json.loads((FIXTURES / "medqa" / "test.jsonl").read_text().splitlines()[0])
    path = write_jsonl(tmp_path / "q.jsonl", [good, "{not json"])
    with pytest.raises(DataError, match=rf"^{path}:2: invalid JSON"):
        examples("medqa", path=str(path))
    path = write_jsonl(tmp_path / "q.jsonl", [good, {**good, "answer_idx": "E"}])
    with pytest.raises(DataError, match=rf"^{path}:2: 'answer_idx' must be one of A, B, C, D"):
        examples("medqa", path=str(path))
    five = {**good, "options": {**good["options"], "E": "Gout again"}}
    path = write_jsonl(tmp_path / "q.jsonl", [five])
    with pytest.raises(DataError, match=rf"^{path}:1: options E beyond A-D.*4_options"):
        examples("medqa", path=str(path))
    path = write_jsonl(tmp_path / "q.jsonl", [good, good])  # ids by position: no clash
    assert len(examples("medqa", path=str(path))) == 2
    path = write_jsonl(tmp_path / "q.jsonl", [{**good, "id": "x"}, {**good, "id": "x"}])
    with pytest.raises(DataError, match=rf"^{path}:2: duplicate id 'x' \(first at {path}:1\)"):
        examples("medqa", path=str(path))


# ---------------------------------------------------------------------------- MedMCQA


def test_medmcqa_cop_bases(fixture_root, tmp_path):
    one = examples("medmcqa")  # released layout, 1-based, detected from the 4
    zero = examples("medmcqa", path="medmcqa/dev_hf.jsonl")  # HF, 0-based, detected from the 0
    assert [e["gold"] for e in one] == [1, 3, 2]
    assert [e["gold"] for e in zero] == [1, 3, 0]
    assert one[0]["context"] == zero[0]["context"] == (
        "Question: Which bone of the wrist most commonly fractures after a fall on an outstretched hand?\n"
        "Choices:\nA. Lunate\nB. Scaphoid\nC. Pisiform\nD. Hamate\nAnswer:")
    assert one[1]["meta"] == {"subject_name": "Physiology", "topic_name": "Endocrine", "choice_type": "single"}
    # Only 1..3 present: auto cannot tell; the user says.
    rows = [json.loads(line) for line in (FIXTURES / "medmcqa" / "dev.json").read_text().splitlines()]
    path = write_jsonl(tmp_path / "m.jsonl", [r for r in rows if r["cop"] != 4])
    with pytest.raises(DataError, match="cannot tell whether 'cop' is 0- or 1-based.*data.cop_base"):
        examples("medmcqa", path=str(path))
    assert [e["gold"] for e in examples("medmcqa", path=str(path), cop_base=1)] == [1, 2]
    assert [e["gold"] for e in examples("medmcqa", path=str(path), cop_base="0")] == [2, 3]
    path = write_jsonl(tmp_path / "m.jsonl", rows + [{**rows[0], "id": "z", "cop": 0}])
    with pytest.raises(DataError, match="both 0 .* and 4 .*mixed bases"):
        examples("medmcqa", path=str(path))
    with pytest.raises(DataError, match=rf"^{path}:4: 'cop' 0 is out of range for cop_base=1"):
        examples("medmcqa", path=str(path), cop_base=1)
    path = write_jsonl(tmp_path / "m.jsonl", [rows[0], {**rows[1], "cop": "b"}])
    with pytest.raises(DataError, match=rf"^{path}:2: 'cop' must be an integer"):
        examples("medmcqa", path=str(path))


def test_medmcqa_real_dev_set(real_root):
    exs = examples("medmcqa")
    assert len(exs) == 4183
    raw = [json.loads(line) for line in (real_root / "medmcqa" / "dev.json").read_text().splitlines()]
    assert [e["gold"] for e in exs] == [r["cop"] - 1 for r in raw]  # cop is 1-based there
    assert [e["id"] for e in exs] == [r["id"] for r in raw]
    assert sum(e["gold"] == 3 for e in exs) == 825


# ---------------------------------------------------------------------------- PubMedQA


def test_pubmedqa_fixture_splits(fixture_root, tmp_path):
    test = examples("pubmedqa")  # no test_set.json: taken from ori_pqal for the ground truth's PMIDs
    assert [e["id"] for e in test] == ["90000003", "90000001"] and [e["gold"] for e in test] == [2, 0]
    e = test[1]
    assert e["context"] == ("Abstract: We enrolled 120 synthetic office workers and randomised them to a daily "
                            "30-minute walk or usual activity.\nAfter 12 weeks, resting heart rate fell by 6 "
                            "beats per minute in the walking group and was unchanged in controls.\n"
                            "Question: Does a daily walk lower resting heart rate in office workers?\nAnswer:")
    assert e["choices"] == [" yes", " no", " maybe"]
    assert e["labels"] == e["option_texts"] == ["yes", "no", "maybe"]
    assert e["input"] == e["context"][: -len("\nAnswer:")]
    pqal = examples("pubmedqa", split="pqal")
    assert [e["gold"] for e in pqal] == [0, 1, 2, 0]
    # An explicit test file, and a ground truth that disagrees with it.
    items = json.loads((FIXTURES / "pubmedqa" / "ori_pqal.json").read_text())
    (tmp_path / "t.json").write_text(json.dumps({k: items[k] for k in ("90000003", "90000001")}))
    assert [e["id"] for e in examples("pubmedqa", test_path=str(tmp_path / "t.json"))] == ["90000003", "90000001"]
    (tmp_path / "g.json").write_text(json.dumps({"90000003": "maybe", "90000001": "no"}))
    with pytest.raises(DataError, match="record 90000001: final_decision 'yes' but .*g.json says 'no'"):
        examples("pubmedqa", test_path=str(tmp_path / "t.json"), ground_truth_path=str(tmp_path / "g.json"))
    (tmp_path / "bad.json").write_text('{"1": {"QUESTION": "q?",\n "CONTEXTS": "not a list"}}')
    with pytest.raises(DataError, match=r"bad.json: record 1: 'CONTEXTS' must be a list"):
        examples("pubmedqa", split="pqal", pqal_path=str(tmp_path / "bad.json"))
    (tmp_path / "bad.json").write_text('{"1": {"QUESTION": "q?",\n "CONTEXTS": [}}')
    with pytest.raises(DataError, match=r"bad.json:2: invalid JSON"):
        examples("pubmedqa", split="pqal", pqal_path=str(tmp_path / "bad.json"))


def test_pubmedqa_real_splits(real_root):
    test = examples("pubmedqa")
    assert len(test) == 500
    truth = json.loads((real_root / "pubmedqa" / "test_ground_truth.json").read_text())
    assert {e["id"]: ["yes", "no", "maybe"][e["gold"]] for e in test} == truth
    assert [sum(e["gold"] == i for e in test) for i in range(3)] == [276, 169, 55]
    # Without test_set.json the same 500 come from ori_pqal.json.
    derived = examples("pubmedqa", test_path="pubmedqa/absent.json")
    assert derived == test
    pqal = examples("pubmedqa", split="pqal")
    assert len(pqal) == 1000 and {e["id"] for e in test} <= {e["id"] for e in pqal}


# ---------------------------------------------------------------------------- BioASQ, MedNLI


def test_bioasq_yesno_from_golden_files(fixture_root, tmp_path):
    exs = examples("bioasq")
    assert [e["id"][-1] for e in exs] == ["1", "3", "4"]  # the factoid is dropped
    assert [e["gold"] for e in exs] == [0, 1, 0]  # "yes", "No", ["yes"]
    assert exs[0]["context"] == ("Context: Synthetic snippet: beta cells of the pancreatic islets secrete insulin.\n"
                                 "Synthetic snippet: insulin lowers blood glucose.\n"
                                 "Question: Is insulin produced by pancreatic beta cells?\nAnswer:")
    assert exs[2]["context"] == "Question: Can vitamin D be made in the skin?\nAnswer:"
    assert exs[0]["choices"] == [" yes", " no"] and exs[0]["labels"] == ["yes", "no"]
    no_snip = examples("bioasq", use_snippets=False, path="bioasq/golden.json")
    assert no_snip[0]["context"] == "Question: Is insulin produced by pancreatic beta cells?\nAnswer:"
    assert examples("bioasq", max_snippets=1)[0]["context"].count("Synthetic snippet") == 1
    doc = json.loads((FIXTURES / "bioasq" / "golden.json").read_text())
    doc["questions"][2]["exact_answer"] = "perhaps"
    (tmp_path / "g.json").write_text(json.dumps(doc))
    with pytest.raises(DataError, match=r"g.json: record 2 \(id 5f0+3\): exact_answer must be yes or no"):
        examples("bioasq", path=str(tmp_path / "g.json"))


def test_mednli_uses_lm_eval_mnli_layout(fixture_root, tmp_path):
    exs = examples("mednli")
    assert [e["id"] for e in exs] == ["syn-nli-1", "syn-nli-2", "syn-nli-3"]
    assert [e["gold"] for e in exs] == [0, 2, 1]
    assert exs[0]["context"] == ("Patient was started on oral antibiotics for a urinary tract infection.\n"
                                 "Question: The patient has an infection. True, False or Neither?\nAnswer:")
    assert exs[2]["context"].endswith("Question: The patient has a history of migraine. True, False or Neither?\nAnswer:")
    assert exs[0]["choices"] == [" True", " Neither", " False"]
    assert exs[0]["labels"] == ["entailment", "neutral", "contradiction"]
    path = write_jsonl(tmp_path / "n.jsonl", [{"sentence1": "a", "sentence2": "b", "gold_label": "-", "pairID": "1"}])
    with pytest.raises(DataError, match=rf"^{path}:1: 'gold_label' must be one of"):
        examples("mednli", path=str(path))


# ---------------------------------------------------------------------------- clinical IE


def test_normalize_item():
    assert normalize_item("  Metoprolol (Active). ") == "metoprolol active"
    assert normalize_item("beta-blocker") == "beta blocker"
    assert normalize_item("Tylenol\u00a0#3,  5 mg/day") == "tylenol 3 5 mg day"
    assert normalize_item("K+ > 5%, 38°C") == "k+ > 5 38°c"  # symbols (+ > °) stay; % is punctuation
    assert normalize_item("“it”") == "it"


def test_clinical_ie(fixture_root, tmp_path):
    med = examples("medication_status")
    assert med[0]["gold"] == ["lisinopril (active)", "metformin (discontinued)", "statin (neither)"]
    assert med[1]["gold"] == []
    assert med[2]["gold"] == ["Tylenol (active)"]  # normalised duplicates kept once
    assert med[0]["input"].startswith("Continue lisinopril") and "(active, discontinued or neither)" in med[0]["instruction"]
    coref = examples("coreference")
    assert coref[0]["input"] == ('A 2 cm nodule was seen in the left lobe. It was biopsied on Monday.\n\n'
                                 'Question: What does "It" in the second sentence refer to?')
    assert coref[0]["gold"] == ["A 2 cm nodule"]
    path = write_jsonl(tmp_path / "c.jsonl", [{"id": "1", "text": "t", "gold": ["ok"]},
                                              {"id": "2", "text": "t", "gold": "aspirin"}])
    with pytest.raises(DataError, match=rf"^{path}:2: 'gold' must be a list of strings"):
        examples("coreference", path=str(path))
    path = write_jsonl(tmp_path / "c.jsonl", [{"id": "1", "text": "t", "gold": ["..."]}])
    with pytest.raises(DataError, match=rf"^{path}:1: gold item '...' is empty after normalisation"):
        examples("coreference", path=str(path))
    path = write_jsonl(tmp_path / "c.jsonl", [{"id": "1", "gold": []}])
    with pytest.raises(DataError, match=rf"^{path}:1: missing field 'text'"):
        examples("coreference", path=str(path))


# ---------------------------------------------------------------------------- conv2note, iCliniq


def test_conv2note_fixture(fixture_root, tmp_path):
    exs = examples("conv2note")
    assert [e["id"] for e in exs] == ["0", "1", "2"]
    assert exs[0]["instruction"] == ("Write the history of present illness section of the clinical note for this "
                                     "doctor-patient conversation.")
    assert exs[0]["input"].startswith("Doctor: What brings you in today? \nPatient:")
    assert 'I\'ve had a "low" fever.' in exs[0]["input"]
    assert exs[2]["reference"] == "Penicillin, which causes hives."
    assert exs[1]["meta"] == {"section_header": "FAM/SOCHX"}
    raw = examples("conv2note", expand_headers=False)
    assert raw[1]["instruction"].startswith("Write the FAM/SOCHX section")
    # A row with a missing field: named by the line it starts on (records span lines).
    rows = list(csv.reader((FIXTURES / "mts_dialog" / "MTS-Dialog-TestSet-1-MEDIQA-Chat-2023.csv").open(newline="")))
    with (tmp_path / "m.csv").open("w", newline="") as f:
        csv.writer(f).writerows(rows + [["3", "CC", "Sore throat."]])
    with pytest.raises(DataError, match=r"m.csv:12: 3 fields, the header has 4"):
        examples("conv2note", path=str(tmp_path / "m.csv"))
    with (tmp_path / "m.csv").open("w", newline="") as f:
        csv.writer(f).writerows([["ID", "header", "section_text", "dialogue"]] + rows[1:])
    with pytest.raises(DataError, match=r"m.csv:1: missing column\(s\) section_header"):
        examples("conv2note", path=str(tmp_path / "m.csv"))


def test_conv2note_real_mts_dialog(real_root):
    test = examples("conv2note")
    val = examples("conv2note", path="mts_dialog/MTS-Dialog-ValidationSet.csv")
    assert len(test) == 200 and len(val) == 100
    assert all(e["reference"] and e["input"] for e in test + val)
    assert sum(e["input"].startswith("Doctor:") for e in test) > 150
    # Every header is one of the 20 MTS-Dialog sections, written out in the instruction.
    assert {e["meta"]["section_header"] for e in test + val} == set(MTS_SECTION_NAMES)
    assert not any(e["meta"]["section_header"] in e["instruction"] for e in test + val)


def test_icliniq_layouts(fixture_root, tmp_path):
    exs = examples("icliniq")
    assert [e["id"] for e in exs] == ["icliniq-00000", "icliniq-00001"]
    assert exs[0]["input"].startswith("Hi doctor, I have had a dry cough")
    assert exs[0]["reference"].startswith("Hi. A dry cough")
    path = write_jsonl(tmp_path / "i.jsonl", [{"id": "q1", "question": "Q?", "answer": "A."}])
    assert examples("icliniq", path=str(path)) == [
        {"id": "q1", "instruction": load_task("icliniq").data["instruction"], "input": "Q?", "reference": "A.",
         "meta": {}}]
    path = write_jsonl(tmp_path / "i.jsonl", [{"question": "Q?", "reply": "A."}])
    with pytest.raises(DataError, match=rf"^{path}:1: missing field 'answer' \(or 'answer_icliniq'\)"):
        examples("icliniq", path=str(path))


def test_hub_rows_go_through_the_same_loader(fixture_root, monkeypatch):
    rows = [json.loads(line) for line in (FIXTURES / "medqa" / "test_hf.jsonl").read_text().splitlines()]
    calls = []

    def fake_load_dataset(name, config=None, split=None):
        calls.append((name, config, split))
        return rows

    import datasets

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    hub = examples("medqa", hub="GBaker/MedQA-USMLE-4-options-hf")
    assert calls == [("GBaker/MedQA-USMLE-4-options-hf", None, "test")]
    assert hub == examples("medqa", path="medqa/test_hf.jsonl")

    def offline(*a, **k):
        raise ConnectionError("offline")

    monkeypatch.setattr(datasets, "load_dataset", offline)
    with pytest.raises(DataError, match="hub dataset 'x/y'.*ConnectionError: offline.*data.hub=null"):
        examples("medqa", hub="x/y")


# ---------------------------------------------------------------------------- lm-eval parity


@pytest.fixture(scope="module")
def lm_eval_requests(tmp_path_factory):
    """``fn(task_dir, yaml_file, docs) -> [(context, [continuations], gold index)]`` built by
    lm-eval itself: its YAML task (``include``d) on a local JSON Lines copy of ``docs``."""
    try:
        import lm_eval
        from lm_eval.tasks import TaskManager
    except Exception as e:  # not installed, or broken
        pytest.skip(f"lm_eval is not importable ({type(e).__name__}: {e}); pip install lm-eval==0.4.13")
    tasks_dir = Path(lm_eval.__file__).parent / "tasks"
    work = tmp_path_factory.mktemp("lm_eval")
    manager = TaskManager(include_defaults=False)
    counter = iter(range(10**6))

    def build(task_dir: str, yaml_file: str, docs: list[dict]) -> list[tuple[str, list[str], int]]:
        name = f"bioinstruct_parity_{task_dir.replace('/', '_')}_{next(counter)}"
        data = write_jsonl(work / f"{name}.jsonl", docs)
        config = work / f"{name}.yaml"
        config.write_text(
            f"include: {tasks_dir / task_dir / yaml_file}\ntask: {name}\ndataset_path: json\n"
            f"dataset_name: null\ndataset_kwargs:\n  data_files:\n    test: {data}\n"
            f"  cache_dir: {work / 'hf_cache'}\n"
            "training_split: null\nvalidation_split: null\ntest_split: test\n")
        task = manager.load(str(config))["tasks"][name]
        assert task.config.num_fewshot in (None, 0) and task.config.description == ""
        task.build_all_requests(limit=None, rank=0, world_size=1)
        by_doc: dict[int, list] = {}
        for inst in sorted(task.instances, key=lambda i: (i.doc_id, i.idx)):
            by_doc.setdefault(inst.doc_id, []).append(inst)
        out = []
        for doc_id in sorted(by_doc):
            insts = by_doc[doc_id]
            contexts = {i.arguments[0] for i in insts}
            assert len(contexts) == 1
            target = task.doc_to_target(insts[0].doc)
            choices = task.doc_to_choice(insts[0].doc)
            gold = choices.index(target) if isinstance(target, str) else target
            out.append((contexts.pop(), [i.arguments[1] for i in insts], gold))
        return out

    return build


def ours(exs: list[dict]) -> list[tuple[str, list[str], int]]:
    return [(e["context"], e["choices"], e["gold"]) for e in exs]


def test_lm_eval_parity_on_fixtures(fixture_root, lm_eval_requests):
    hf_docs = [json.loads(line) for line in (FIXTURES / "medqa" / "test_hf.jsonl").read_text().splitlines()]
    assert ours(examples("medqa", path="medqa/test_hf.jsonl")) == lm_eval_requests("medqa", "medqa.yaml", hf_docs)
    # The original layout, as lm-eval's HF layout.
    orig = examples("medqa")
    as_hf = [{"sent1": e["input"].split("\nA. ")[0], **{f"ending{i}": t for i, t in enumerate(e["option_texts"])},
              "label": e["gold"]} for e in orig]
    assert ours(orig) == lm_eval_requests("medqa", "medqa.yaml", as_hf)
    mm_docs = [json.loads(line) for line in (FIXTURES / "medmcqa" / "dev_hf.jsonl").read_text().splitlines()]
    assert ours(examples("medmcqa", path="medmcqa/dev_hf.jsonl")) == lm_eval_requests("medmcqa", "medmcqa.yaml", mm_docs)
    nli = [json.loads(line) for line in (FIXTURES / "mednli" / "mli_test_v1.jsonl").read_text().splitlines()]
    label = {"entailment": 0, "neutral": 1, "contradiction": 2}
    mnli_docs = [{"premise": r["sentence1"], "hypothesis": r["sentence2"], "label": label[r["gold_label"]]} for r in nli]
    assert ours(examples("mednli")) == lm_eval_requests("glue/mnli", "default.yaml", mnli_docs)


def test_lm_eval_parity_on_real_data(real_root, lm_eval_requests):
    raw = [json.loads(line) for line in (real_root / "medmcqa" / "dev.json").read_text().splitlines()]
    hf = [{**r, "cop": r["cop"] - 1} for r in raw]  # lm-eval reads the 0-based HF copy
    assert ours(examples("medmcqa")) == lm_eval_requests("medmcqa", "medmcqa.yaml", hf)
    items = json.loads((real_root / "pubmedqa" / "test_set.json").read_text())
    truth = json.loads((real_root / "pubmedqa" / "test_ground_truth.json").read_text())
    docs = [{"QUESTION": v["QUESTION"], "CONTEXTS": v["CONTEXTS"], "final_decision": truth[k]} for k, v in items.items()]
    assert ours(examples("pubmedqa")) == lm_eval_requests("pubmedqa", "pubmedqa.yaml", docs)
