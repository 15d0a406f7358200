"""bioinstruct's scorer against lm-evaluation-harness's own HF backend, question by question,
on the tiny model (integration tier) and on SmolLM2-135M-Instruct (realmodel tier: a real
49k-token BPE tokenizer and a tied LM head, on real questions drawn so that every label occurs).

lm-eval 0.4.13 runs its own task YAMLs (medqa_4options, medmcqa, pubmedqa; ``include``d by a
local YAML that points them at a local JSON Lines copy of the same questions) with
``HFLM(pretrained=<tiny model>)`` on CPU through ``lm_eval.simple_evaluate(log_samples=True)``;
bioinstruct scores the same questions with ``bioinstruct.stages.evaluate.predict``. Per question
we compare the prompt and continuations, every choice's log-likelihood (1e-4) and greedy
flag, the argmax (lm-eval's ``acc``) and the length-normalised argmax (``acc_norm``: lm-eval
divides by the length of ``doc_to_choice``'s string, "yes" not " yes").

HFLM is built with ``add_bos_token=False``: bioinstruct encodes prompts without special
tokens (lm-eval's causal convention up to 0.4.2, and what the paper's harness did), while
lm-eval 0.4.13 with ``add_bos_token`` unset lets the tokenizer add its BOS (LLaMA's ``<s>``),
which shifts every log-likelihood; ``test_lm_eval_default_prepends_bos`` pins that down so a
change on either side shows up here.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

import bioinstruct
from bioinstruct.modeling.predictions import predict
from bioinstruct.stages.evaluate import EvaluateConfig
from bioinstruct.tasks import load_examples, load_task


try:
    import lm_eval
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager
except Exception as e:  # not installed, or broken
    pytest.skip(f"lm_eval is not importable ({type(e).__name__}: {e}); pip install lm-eval==0.4.13",
                allow_module_level=True)

DEMO = Path(bioinstruct.__file__).parent / "data" / "demo_tasks"
LM_EVAL_TASKS = Path(lm_eval.__file__).parent / "tasks"
LETTERS = ["A", "B", "C", "D"]
BATCH = 16


def both(model_dir: Path):
    """(bioinstruct's LM, lm-eval's HFLM) on the same model, CPU, float32."""
    from bioinstruct.modeling.scoring import LM

    ours = LM(str(model_dir), device="cpu", dtype="float32", batch_size=BATCH)
    theirs = HFLM(pretrained=str(model_dir), device="cpu", dtype="float32", batch_size=BATCH, add_bos_token=False)
    return ours, theirs


@pytest.fixture(scope="module")
def models(tiny_model_dir):
    return both(tiny_model_dir)


@pytest.fixture(scope="module")
def smollm2_models(smollm2_dir):
    return both(smollm2_dir)


@pytest.fixture(scope="module")
def run_lm_eval(models, tmp_path_factory):
    return runner(models[1], tmp_path_factory.mktemp("lm_eval_parity"))


@pytest.fixture(scope="module")
def smollm2_lm_eval(smollm2_models, tmp_path_factory):
    return runner(smollm2_models[1], tmp_path_factory.mktemp("lm_eval_parity_smollm2"))


def runner(hflm, work: Path):
    """``fn(name, task_dir/yaml, docs, extra_yaml="") -> samples`` (lm-eval's logged samples,
    in doc order) for lm-eval's task YAML run on a local JSON Lines copy of ``docs``."""

    def run(name: str, yaml_path: str, docs: list[dict], extra_yaml: str = "") -> list[dict]:
        data = work / f"{name}.jsonl"
        data.write_text("".join(json.dumps(d) + "\n" for d in docs), encoding="utf-8")
        folder = work / name
        folder.mkdir()
        (folder / f"{name}.yaml").write_text(
            f"include: {LM_EVAL_TASKS / yaml_path}\ntask: {name}\ndataset_path: json\ndataset_name: null\n"
            f"dataset_kwargs:\n  data_files:\n    test: {data}\n  cache_dir: {work / 'hf_cache'}\n"
            f"training_split: null\nvalidation_split: null\ntest_split: test\n{extra_yaml}")
        out = lm_eval.simple_evaluate(model=hflm, tasks=[name], log_samples=True, bootstrap_iters=0,
                                      task_manager=TaskManager(include_defaults=False, include_path=str(folder)),
                                      verbosity="WARNING")
        samples = sorted(out["samples"][name], key=lambda s: s["doc_id"])
        assert [s["doc_id"] for s in samples] == list(range(len(docs)))
        return samples

    return run


def read_jsonl(path: Path, limit: int | None = None) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()][:limit]


def ours(models, task_name: str, picked: list[int] | None = None, root: Path | None = None,
         **data) -> tuple[list[dict], list[dict]]:
    """bioinstruct's rows for the task's questions at ``picked`` (all: None)."""
    data = {**data, **({"root": str(root)} if root else {})}
    examples = load_examples(load_task(task_name, data))
    examples = [examples[i] for i in picked] if picked is not None else examples
    rows = predict(models[0], load_task(task_name, data), examples, tuned=False, cfg=EvaluateConfig())
    return examples, rows


def compare(samples: list[dict], examples: list[dict], rows: list[dict], choices: list[str]) -> dict:
    """Assert per-question parity; return lm-eval's accuracy and acc_norm (for the log)."""
    assert len(samples) == len(examples) == len(rows)
    length = np.array([float(len(c)) for c in choices])  # lm-eval's completion_len
    for s, ex, row in zip(samples, examples, rows):
        where = f"question {s['doc_id']} ({ex['id']})"
        assert [a[0] for a in s["arguments"]] == [ex["context"]] * len(choices), where
        assert [a[1] for a in s["arguments"]] == ex["choices"] == [" " + c for c in choices], where
        lls = np.array([float(ll) for ll, _ in s["filtered_resps"]])
        gold = s["target"] if isinstance(s["target"], int) else choices.index(s["target"])
        pred, pred_norm = int(np.argmax(lls)), int(np.argmax(lls / length))
        # lm-eval's own per-sample metrics agree with the argmaxes derived here
        assert s["acc"] == float(pred == gold) and s["acc_norm"] == float(pred_norm == gold), where
        assert row["gold"] == gold, where
        assert row["loglik"] == pytest.approx(lls.tolist(), abs=1e-4), where
        assert row["greedy"] == [bool(g) for _, g in s["filtered_resps"]], where
        assert (row["pred"], row["pred_norm"]) == (pred, pred_norm), \
            f"{where}: bioinstruct pred/pred_norm {row['pred']}/{row['pred_norm']}, lm-eval {pred}/{pred_norm}"
    return {"acc": float(np.mean([s["acc"] for s in samples])),
            "acc_norm": float(np.mean([s["acc_norm"] for s in samples]))}


@pytest.mark.integration
def test_medqa_demo_both_layouts(models, run_lm_eval):
    hf_docs = read_jsonl(DEMO / "medqa" / "test_hf.jsonl")
    examples, rows = ours(models, "medqa", root=str(DEMO), path="medqa/test_hf.jsonl")
    compare(run_lm_eval("bi_parity_medqa_hf", "medqa/medqa.yaml", hf_docs), examples, rows, LETTERS)
    # The original layout, converted to the HF layout lm-eval reads.
    raw = read_jsonl(DEMO / "medqa" / "test.jsonl")
    as_hf = [{"sent1": r["question"], **{f"ending{i}": r["options"][k] for i, k in enumerate(LETTERS)},
              "label": LETTERS.index(r["answer_idx"])} for r in raw]
    examples, rows = ours(models, "medqa", root=str(DEMO), path="medqa/test.jsonl")
    compare(run_lm_eval("bi_parity_medqa_orig", "medqa/medqa.yaml", as_hf), examples, rows, LETTERS)


def drawn(shared_data: Path, task: str, per_label: int | None, n: int | None = None) -> list[int]:
    """Indices of the task's questions, in file order: the first ``n``, or the first
    ``per_label`` of each gold label (every label occurs)."""
    if per_label is None:
        return list(range(n))
    golds = [ex["gold"] for ex in load_examples(load_task(task, {"root": str(shared_data)}))]
    return sorted(i for label in set(golds) for i in [j for j, g in enumerate(golds) if g == label][:per_label])


def medmcqa_parity(models, run_lm_eval, shared_data: Path, picked: list[int], name: str) -> dict:
    raw = read_jsonl(shared_data / "medmcqa" / "dev.json", picked[-1] + 1)
    docs = [{**raw[i], "cop": raw[i]["cop"] - 1} for i in picked]  # lm-eval reads the 0-based HF copy
    return compare(run_lm_eval(name, "medmcqa/medmcqa.yaml", docs), *ours(models, "medmcqa", picked, shared_data),
                   LETTERS)


def pubmedqa_parity(models, run_lm_eval, shared_data: Path, picked: list[int], name: str) -> dict:
    items = list(json.loads((shared_data / "pubmedqa" / "test_set.json").read_text(encoding="utf-8")).items())
    truth = json.loads((shared_data / "pubmedqa" / "test_ground_truth.json").read_text(encoding="utf-8"))
    docs = [{"QUESTION": v["QUESTION"], "CONTEXTS": v["CONTEXTS"], "final_decision": truth[k]}
            for k, v in (items[i] for i in picked)]
    # lm-eval's pubmedqa lists only acc: ask for acc_norm too, to compare pred_norm.
    extra = "metric_list:\n  - metric: acc\n    aggregation: mean\n  - metric: acc_norm\n    aggregation: mean\n"
    return compare(run_lm_eval(name, "pubmedqa/pubmedqa.yaml", docs, extra),
                   *ours(models, "pubmedqa", picked, shared_data), ["yes", "no", "maybe"])


@pytest.mark.integration
def test_medmcqa_real_dev(models, run_lm_eval, shared_data):
    medmcqa_parity(models, run_lm_eval, shared_data, drawn(shared_data, "medmcqa", None, 60), "bi_parity_medmcqa")


@pytest.mark.integration
def test_pubmedqa_real_test(models, run_lm_eval, shared_data):
    pubmedqa_parity(models, run_lm_eval, shared_data, drawn(shared_data, "pubmedqa", None, 40), "bi_parity_pubmedqa")


@pytest.mark.realmodel
def test_smollm2_medmcqa_and_pubmedqa_every_label(smollm2_models, smollm2_lm_eval, shared_data):
    """SmolLM2-135M, question for question: 3 MedMCQA dev questions of each answer letter and 2
    PubMedQA test questions of each of yes / no / maybe (long abstracts: the costly part)."""
    for task, per_label, parity in (("medmcqa", 3, medmcqa_parity), ("pubmedqa", 2, pubmedqa_parity)):
        picked = drawn(shared_data, task, per_label)
        scores = parity(smollm2_models, smollm2_lm_eval, shared_data, picked, f"bi_parity_smollm2_{task}")
        print(f"SmolLM2-135M {task}: {len(picked)} questions, lm-eval acc {scores['acc']:.3f} "
              f"acc_norm {scores['acc_norm']:.3f}; bioinstruct the same, question for question")


@pytest.mark.integration
def test_lm_eval_default_prepends_bos(tiny_model_dir, models):
    """lm-eval 0.4.13's default HFLM (add_bos_token unset) encodes the context with the
    tokenizer's BOS; bioinstruct (and HFLM(add_bos_token=False)) do not, so parity needs the
    flag. If this fails, one side changed its convention: revisit the scorer's encoding."""
    context = "Question: Which vitamin deficiency causes night blindness?\nA. C\nB. A\nAnswer:"
    lm, hflm = models
    [(ctx, cont)] = lm.encode_pairs([(context, " B")])
    assert hflm._encode_pair(context, " B") == (ctx, cont)
    default = HFLM(pretrained=str(tiny_model_dir), device="cpu", dtype="float32", batch_size=1)
    assert default._encode_pair(context, " B") == ([lm.tokenizer.bos_token_id] + ctx, cont)
