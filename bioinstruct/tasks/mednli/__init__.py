"""MedNLI: the loader of bioinstruct/tasks/mednli/mednli.yaml."""

from __future__ import annotations

from ...errors import DataError
from ..reader import TARGET_DELIMITER, example_id, Examples, need_path, object_rows, string_field


MEDNLI_LABELS = ["entailment", "neutral", "contradiction"]
# lm-eval's ``mnli`` (glue) choices, in the same order as its labels 0/1/2.
MEDNLI_CHOICES = ["True", "Neither", "False"]


def mednli_context(premise: str, hypothesis: str) -> str:
    """No lm-eval MedNLI task; lm-eval 0.4.13 ``mnli``'s layout (glue/mnli/utils.doc_to_text):
    ``"{premise}\\nQuestion: {hypothesis, stripped, '.' added if missing} True, False or
    Neither?\\nAnswer:"`` with choices " True" (entailment), " Neither" (neutral), " False"
    (contradiction)."""
    h = hypothesis.strip()
    return "{}\nQuestion: {} True, False or Neither?\nAnswer:".format(
        premise, h + ("" if h.endswith(".") else "."))


def load_mednli(data: dict) -> list[dict]:
    """MedNLI (PhysioNet ``mli_test_v1.jsonl``): ``{"pairID", "sentence1" (premise),
    "sentence2" (hypothesis), "gold_label": entailment|neutral|contradiction}``. Ids: pairID."""
    path = need_path(data.get("path"), "path")
    out = Examples()
    for n, (where, row) in enumerate(object_rows(path)):
        premise = string_field(row, "sentence1", where)
        hypothesis = string_field(row, "sentence2", where)
        label = row.get("gold_label")
        if label not in MEDNLI_LABELS:
            raise DataError(f"{where}: 'gold_label' must be one of {', '.join(MEDNLI_LABELS)}, got {label!r}")
        eid = example_id(row, ("pairID", "id"), f"mednli-{n:05d}", where)
        out.add({
            "id": eid,
            "context": mednli_context(premise, hypothesis),
            "choices": [TARGET_DELIMITER + c for c in MEDNLI_CHOICES],
            "gold": MEDNLI_LABELS.index(label),
            "labels": list(MEDNLI_LABELS),
            "option_texts": list(MEDNLI_LABELS),
            "instruction": data["instruction"],
            "input": f"Premise: {premise.strip()}\nHypothesis: {hypothesis.strip()}",
            "meta": {},
        }, where)
    if not out:
        raise DataError(f"{path}: no examples")
    return list(out)
