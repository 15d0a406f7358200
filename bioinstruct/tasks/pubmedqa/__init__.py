"""PubMedQA (PQA-L): the loader of bioinstruct/tasks/pubmedqa/pubmedqa.yaml."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ...errors import ConfigError, DataError
from ...io.rows import read_json
from ..reader import TARGET_DELIMITER, example_id, Examples, hub_rows, need_path, string_field

# Allowed values of enumerated data options: load_task checks overrides against them.
OPTION_CHOICES: dict[str, tuple] = {"split": ("test", "pqal")}


PUBMEDQA_LABELS = ["yes", "no", "maybe"]


def pubmedqa_context(contexts: list[str], question: str) -> str:
    """lm-eval 0.4.13 ``pubmedqa`` (preprocess_pubmedqa.doc_to_text):
    ``"Abstract: {"\\n".join(CONTEXTS)}\\nQuestion: {QUESTION}\\nAnswer:"``."""
    return "Abstract: {}\nQuestion: {}\nAnswer:".format("\n".join(contexts), question)


def _pubmedqa_item(pmid: str, item: Any, label: Any, where: str, instruction: str) -> dict:
    if not isinstance(item, dict):
        raise DataError(f"{where}: expected an object with QUESTION and CONTEXTS")
    question = string_field(item, "QUESTION", where)
    contexts = item.get("CONTEXTS")
    if not isinstance(contexts, list) or not all(isinstance(c, str) for c in contexts):
        raise DataError(f"{where}: 'CONTEXTS' must be a list of strings")
    if label not in PUBMEDQA_LABELS:
        raise DataError(f"{where}: label must be yes, no or maybe, got {label!r}")
    abstract = "\n".join(contexts)
    return {
        "id": pmid,
        "context": pubmedqa_context(contexts, question),
        "choices": [TARGET_DELIMITER + c for c in PUBMEDQA_LABELS],
        "gold": PUBMEDQA_LABELS.index(label),
        "labels": list(PUBMEDQA_LABELS),
        "option_texts": list(PUBMEDQA_LABELS),
        "instruction": instruction,
        "input": f"Abstract: {abstract}\nQuestion: {question}",
        "meta": {k: item[k] for k in ("YEAR",) if k in item},
    }


def load_pubmedqa(data: dict) -> list[dict]:
    """PubMedQA, expert-labelled (PQA-L) questions; files as in the pubmedqa/pubmedqa repo:
    ``{PMID: {"QUESTION", "CONTEXTS": [...], "LABELS", "MESHES", "final_decision", ...}}``.

    ``data.split``:
    - ``test`` (default): the official 500-question test split, ``test_path`` (contexts)
      joined with ``ground_truth_path`` (``{PMID: "yes"|"no"|"maybe"}``); the ground truth
      wins, and a ``final_decision`` in the test file that disagrees with it is an error
      (mismatched files). ``ground_truth_path: null`` reads ``final_decision`` instead.
      Without ``test_path`` on disk, the test questions are taken from ``pqal_path`` for
      the ground truth's PMIDs (in its order): what the repo's split script writes.
      (lm-eval's ``pubmedqa`` reads bigbio/pubmed_qa's labeled fold0 ``test`` split, 500
      questions from that same split script, not all 1000.)
    - ``pqal``: all 1000 PQA-L questions from ``pqal_path`` (``ori_pqal.json``).
    Ids are the PMIDs, in file order.
    """
    split = data.get("split") or "test"
    instruction = data["instruction"]
    out = Examples()
    if data.get("hub"):  # bigbio/pubmed_qa *_source configs: QUESTION, CONTEXTS, final_decision
        for n, (where, row) in enumerate(hub_rows(data)):
            pmid = example_id(row, ("PMID", "pubid", "id"), f"pubmedqa-{n:05d}", where)
            out.add(_pubmedqa_item(pmid, row, row.get("final_decision"), where, instruction), where)
        return list(out)
    if split == "pqal":
        path = need_path(data.get("pqal_path"), "pqal_path")
        items, truth = read_json(path), None
    elif split == "test":
        truth_path = data.get("ground_truth_path")
        truth = None
        if truth_path:
            truth_path = need_path(truth_path, "ground_truth_path")
            truth = read_json(truth_path)
            if not isinstance(truth, dict):
                raise DataError(f"{truth_path}: expected an object {{PMID: yes|no|maybe}}")
        test_path, pqal_path = data.get("test_path"), data.get("pqal_path")
        if truth is not None and test_path and not Path(test_path).exists() \
                and pqal_path and Path(pqal_path).exists():
            # The repo ships ori_pqal.json and test_ground_truth.json; test_set.json is
            # ori_pqal's entries for the ground truth's PMIDs, in its order.
            path = Path(pqal_path)
            pqal = read_json(path)
            if not isinstance(pqal, dict):
                raise DataError(f"{path}: expected an object keyed by PMID")
            absent = [k for k in truth if k not in pqal]
            if absent:
                raise DataError(f"{truth_path}: PMIDs {', '.join(absent[:3])} are not in {path}")
            items = {k: pqal[k] for k in truth}
        else:
            path = need_path(test_path, "test_path")
            items = read_json(path)
    else:
        raise ConfigError(f"data.split must be test or pqal, got {split!r}")
    if not isinstance(items, dict):
        raise DataError(f"{path}: expected an object keyed by PMID")
    for pmid, item in items.items():
        where = f"{path}: record {pmid}"
        label = item.get("final_decision") if isinstance(item, dict) else None
        if truth is not None:
            if pmid not in truth:
                raise DataError(f"{where}: PMID not in {data['ground_truth_path']}")
            if label is not None and label != truth[pmid]:
                raise DataError(f"{where}: final_decision {label!r} but {data['ground_truth_path']} says "
                                f"{truth[pmid]!r}: are these files from the same release?")
            label = truth[pmid]
        out.add(_pubmedqa_item(str(pmid), item, label, where, instruction), where)
    if truth is not None and len(truth) != len(out):
        extra = sorted(set(truth) - set(items))[:3]
        raise DataError(f"{data['ground_truth_path']}: {len(truth)} labels for {len(out)} questions "
                        f"in {path} (e.g. {', '.join(extra)} have no question)")
    if not out:
        raise DataError(f"{path}: no questions")
    return list(out)
