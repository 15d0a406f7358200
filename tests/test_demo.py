"""The real-model demo's plumbing (make demo = bioinstruct quickstart model=smollm2): its data
from ../shared/data, and what each stage's quickstart hook asks for. The run itself is in the
README (minutes of CPU); these check what it is built from, in seconds."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from bioinstruct.demo import DemoData, prepare
from bioinstruct.errors import UserError
from bioinstruct.quickstart import QuickstartConfig, Step
from bioinstruct.stages.pipeline import STAGES
from bioinstruct.tasks import load_examples, load_task

from conftest import SHARED_DATA

pytestmark = pytest.mark.unit
needs_data = pytest.mark.skipif(not SHARED_DATA.is_dir(), reason=f"no shared data at {SHARED_DATA}")


@needs_data
def test_training_set_is_real_and_outside_every_evaluated_question(tmp_path):
    cfg = DemoData(root=str(SHARED_DATA))
    files = prepare(cfg, tmp_path)
    records = [json.loads(line) for line in files["train"].read_text().splitlines()]
    assert len(records) == cfg.pubmedqa_train + cfg.mts_dialog_train
    test_pmids = set(json.loads((SHARED_DATA / "pubmedqa/test_ground_truth.json").read_text()))
    pqal = json.loads((SHARED_DATA / "pubmedqa/ori_pqal.json").read_text())
    for r in records:
        if r["id"].startswith("pqal-"):
            pmid = r["id"].removeprefix("pqal-")
            assert pmid not in test_pmids  # never a test question
            assert r["input"] == pqal[pmid]["QUESTION"]
            assert r["output"].lower().startswith(pqal[pmid]["final_decision"] + ".")
    # The sample evaluate reads: the loader's layout, every label, a subset of the test split.
    task = load_task("pubmedqa", {"root": str(files["pubmedqa_root"])})
    sample = load_examples(task)
    assert len(sample) == cfg.pubmedqa_questions
    assert {ex["gold"] for ex in sample} == {0, 1, 2}
    assert {ex["id"] for ex in sample} <= test_pmids
    assert not {r["id"].removeprefix("pqal-") for r in records} & {ex["id"] for ex in sample}
    # Seeded: the same questions again; another seed, others.
    again = prepare(cfg, tmp_path / "again")
    assert (again["pubmedqa_root"] / "pubmedqa/test_set.json").read_bytes() == \
        (files["pubmedqa_root"] / "pubmedqa/test_set.json").read_bytes()
    other = prepare(DemoData(root=str(SHARED_DATA), seed=1), tmp_path / "other")
    assert (other["pubmedqa_root"] / "pubmedqa/test_set.json").read_bytes() != \
        (files["pubmedqa_root"] / "pubmedqa/test_set.json").read_bytes()


def test_missing_shared_data_is_one_line(tmp_path):
    with pytest.raises(UserError, match="missing pubmedqa/ori_pqal.json"):
        prepare(DemoData(root=str(tmp_path / "nowhere")), tmp_path / "out")
    run = subprocess.run([sys.executable, "-m", "bioinstruct", "quickstart", "model=smollm2",
                          f"run_dir={tmp_path / 'run'}", f"demo.root={tmp_path / 'nowhere'}"],
                         capture_output=True, text=True)
    assert run.returncode == 2
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1 and "shared/data" in lines[0] and "Traceback" not in run.stderr
    assert not (tmp_path / "run").exists()  # refused before any stage ran


def test_real_hooks_swap_the_model_and_data_and_train_every_subset(tmp_path):
    settings = QuickstartConfig(model="smollm2", run_dir=str(tmp_path))
    run_dir = tmp_path
    demo = {"train": tmp_path / "demo-data/train.jsonl", "pubmedqa_root": tmp_path / "demo-data"}
    outputs = {"get-model": tmp_path / "get-model", "decontaminate": tmp_path / "decontaminate"}

    def hook(name):
        return STAGES[name].quickstart(Step(settings, run_dir, run_dir / name, False, dict(outputs), demo))

    assert hook("tiny-model") is None and hook("generate") is None and hook("filter") is None
    assert hook("get-model").out == str(tmp_path / "get-model")
    decon = hook("decontaminate")
    assert decon.input == str(demo["train"]) and set(decon.tasks) == {"medmcqa", "pubmedqa"}
    assert decon.missing_data == "error"  # a training set never silently checked against nothing
    assert all(Path(d["root"]) == Path(settings.demo.root) for d in decon.task_data.values())  # every question
    trains = hook("train")
    assert [t.data.subset for t in trains] == ["size-60", "all"]
    assert {t.model.path for t in trains} == {str(tmp_path / "get-model")}
    for name in ("size-60", "all"):
        (tmp_path / "train" / f"smollm2__{name}" / "adapter").mkdir(parents=True)
    evals = hook("evaluate")
    assert [Path(e.adapter).parent.name for e in evals] == ["smollm2__all", "smollm2__size-60"]
    assert [e.compare_base for e in evals] == [True, False]  # the base scored once
    assert evals[0].task_data["pubmedqa"]["root"] == str(demo["pubmedqa_root"])
    assert evals[0].limit == settings.demo.medmcqa_questions
    # The tiny quickstart is as it was: no get-model, its own model everywhere.
    tiny = QuickstartConfig(run_dir=str(tmp_path))
    step = Step(tiny, run_dir, run_dir / "get-model", False, {"tiny-model": tmp_path / "tiny"}, {})
    assert STAGES["get-model"].quickstart(step) is None
    assert STAGES["train"].quickstart(step).model.path == str(tmp_path / "tiny")
