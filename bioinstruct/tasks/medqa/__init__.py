"""MedQA (USMLE, 4 options): the loader of bioinstruct/tasks/medqa/medqa.yaml."""

from __future__ import annotations

from ...errors import DataError
from ..reader import (LETTERS, example_id, Examples, hub_rows, letter_example, need_path, object_rows, options_block, string_field)

# Allowed values of enumerated data options: load_task checks overrides against them.
OPTION_CHOICES: dict[str, tuple] = {"layout": ("auto", "original", "hf")}


def medqa_context(question: str, options: list[str]) -> str:
    """lm-eval 0.4.13 ``medqa_4options`` (preprocess_medqa.doc_to_text) on the HF layout:
    ``"Question: {sent1}\\n" + "".join(f"{k}. {v}\\n") + "Answer:"``."""
    return f"Question: {question}\n{options_block(LETTERS, options)}Answer:"


def load_medqa(data: dict) -> list[dict]:
    """MedQA (USMLE, 4 options). ``data.layout``: ``auto`` (per file, from the first
    record), ``original`` or ``hf``.

    - original (MedQA ``data_clean/questions/US/4_options/phrases_no_exclude_test.jsonl``):
      ``{"question", "options": {"A".."D"}, "answer_idx": "C", "answer", "meta_info"}``;
    - hf (``GBaker/MedQA-USMLE-4-options-hf``, lm-eval's source):
      ``{"id"?, "sent1", "ending0".."ending3", "label": 0..3}``.

    Ids: the record's ``id`` when it has one, else ``medqa-NNNNN`` (0-based position).
    """
    if data.get("hub"):
        rows, source = hub_rows(data), data["hub"]
    else:
        path = need_path(data.get("path"), "path")
        rows, source = object_rows(path), str(path)
    layout = str(data.get("layout") or "auto")
    out = Examples()
    for n, (where, row) in enumerate(rows):
        if n == 0 and layout == "auto":
            if "sent1" in row:
                layout = "hf"
            elif "options" in row:
                layout = "original"
            else:
                raise DataError(f"{where}: cannot tell the MedQA layout: expected 'question'+'options' "
                                f"(original) or 'sent1'+'ending0..3' (HF); set data.layout")
        if layout == "hf" and "sent1" not in row and "options" in row:
            raise DataError(f"{where}: no 'sent1': this looks like the original layout "
                            "(question, options): set data.layout=original or auto")
        if layout == "original" and "options" not in row and "sent1" in row:
            raise DataError(f"{where}: no 'options': this looks like the HF layout "
                            "(sent1, ending0..3): set data.layout=hf or auto")
        if layout == "hf":
            question = string_field(row, "sent1", where)
            texts = [string_field(row, f"ending{i}", where) for i in range(4)]
            label = row.get("label")
            if not isinstance(label, int) or isinstance(label, bool) or not 0 <= label <= 3:
                raise DataError(f"{where}: 'label' must be an integer 0..3, got {label!r}")
            gold = label
        else:
            question = string_field(row, "question", where)
            options = row.get("options")
            if not isinstance(options, dict):
                raise DataError(f"{where}: 'options' must be an object {{\"A\": ..., \"D\": ...}}")
            extra = sorted(set(options) - set(LETTERS))
            if extra:
                raise DataError(f"{where}: options {', '.join(extra)} beyond A-D: medqa is the 4-option "
                                "set (use the files under questions/US/4_options)")
            missing = [k for k in LETTERS if k not in options]
            if missing:
                raise DataError(f"{where}: options {', '.join(missing)} missing")
            texts = [string_field(options, k, f"{where}: options") for k in LETTERS]
            answer = row.get("answer_idx")
            if answer not in LETTERS:
                raise DataError(f"{where}: 'answer_idx' must be one of A, B, C, D, got {answer!r}")
            gold = LETTERS.index(answer)
        eid = example_id(row, ("id",), f"medqa-{n:05d}", where)
        meta = {k: row[k] for k in ("meta_info",) if k in row}
        out.add(letter_example(eid, medqa_context(question, texts), question, texts, gold,
                           data["instruction"], meta), where)
    if not out:
        raise DataError(f"{source}: no questions")
    return list(out)
