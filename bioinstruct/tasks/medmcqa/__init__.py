"""MedMCQA (dev set): the loader of bioinstruct/tasks/medmcqa/medmcqa.yaml."""

from __future__ import annotations

from typing import Any

from ...errors import ConfigError, DataError
from ..reader import (LETTERS, example_id, Examples, hub_rows, letter_example, need_path, object_rows, string_field)

# Allowed values of enumerated data options: load_task checks overrides against them.
OPTION_CHOICES: dict[str, tuple] = {"cop_base": ("auto", 0, 1)}


def medmcqa_context(question: str, options: list[str]) -> str:
    """lm-eval 0.4.13 ``medmcqa`` (utils_medmcqa.doc_to_text): ``"Question: " + question +
    "\\nChoices:\\n" + "A. opa\\n" ... "D. opd\\n" + "Answer:"``."""
    prompt = "Question: " + question + "\nChoices:\n"
    for k, v in zip(LETTERS, options):
        prompt += f"{k}. {v}\n"
    return prompt + "Answer:"


def _cop_base(value: Any) -> str | int:
    if value in ("auto", None):
        return "auto"
    if str(value) in ("0", "1"):
        return int(value)
    raise ConfigError(f"data.cop_base must be auto, 0 or 1, got {value!r}")


def load_medmcqa(data: dict) -> list[dict]:
    """MedMCQA dev set: JSON Lines ``{"id", "question", "opa".."opd", "cop", "subject_name",
    "topic_name", "choice_type", "exp"}``.

    ``cop`` is 1-based (1..4) in the released ``dev.json`` and 0-based (0..3) in the HF copy
    (``openlifescienceai/medmcqa``, lm-eval's source). ``data.cop_base``: ``auto`` looks at
    the whole file: a 4 anywhere means 1-based, a 0 anywhere 0-based, both is an error and
    neither (only 1..3, e.g. a small sample) asks you to set ``cop_base`` to 0 or 1.
    """
    base = _cop_base(data.get("cop_base"))
    if data.get("hub"):
        rows, source = list(hub_rows(data)), data["hub"]
    else:
        path = need_path(data.get("path"), "path")
        rows, source = list(object_rows(path)), str(path)
    cops = []
    for where, row in rows:
        cop = row.get("cop")
        if isinstance(cop, str) and cop.strip().isdigit():
            cop = int(cop)
        if not isinstance(cop, int) or isinstance(cop, bool) or not 0 <= cop <= 4:
            raise DataError(f"{where}: 'cop' must be an integer (1..4 in the raw file, 0..3 in the "
                            f"HF copy), got {cop!r}")
        cops.append(cop)
    if base == "auto":
        first = {c: next(w for (w, _), cc in zip(rows, cops) if cc == c) for c in (0, 4) if c in cops}
        if 0 in first and 4 in first:
            raise DataError(f"{source}: 'cop' has both 0 ({first[0]}) and 4 ({first[4]}): mixed bases")
        if not first:
            raise DataError(f"{source}: cannot tell whether 'cop' is 0- or 1-based (only values 1..3 "
                            "occur): set data.cop_base=1 (MedMCQA's released files) or 0 (the HF copy)")
        base = 0 if 0 in first else 1
    out = Examples()
    for n, ((where, row), cop) in enumerate(zip(rows, cops)):
        gold = cop - base
        if not 0 <= gold <= 3:
            raise DataError(f"{where}: 'cop' {cop} is out of range for cop_base={base}")
        question = string_field(row, "question", where)
        texts = [string_field(row, k, where, allow_empty=True) for k in ("opa", "opb", "opc", "opd")]
        eid = example_id(row, ("id",), f"medmcqa-{n:05d}", where)
        meta = {k: row[k] for k in ("subject_name", "topic_name", "choice_type") if row.get(k) is not None}
        out.add(letter_example(eid, medmcqa_context(question, texts), question, texts, gold,
                           data["instruction"], meta), where)
    if not out:
        raise DataError(f"{source}: no questions")
    return list(out)
