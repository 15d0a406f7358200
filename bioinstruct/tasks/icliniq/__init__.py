"""iCliniq: patient question to doctor's answer: the loader of bioinstruct/tasks/icliniq/icliniq.yaml."""

from __future__ import annotations

from ...errors import DataError
from ..reader import example_id, Examples, first_string_field, need_path, object_rows


def load_icliniq(data: dict) -> list[dict]:
    """Patient question -> doctor's answer. JSON Lines, or a JSON array such as ChatDoctor's
    ``iCliniq.json``; per record the question is ``question`` or ``input``, the reference
    answer ``answer`` or ``answer_icliniq`` (ChatDoctor's other answers, ``answer_chatgpt``
    and ``answer_chatdoctor``, are ignored). Ids: the record's ``id``, else ``icliniq-NNNNN``
    (0-based position)."""
    path = need_path(data.get("path"), "path")
    out = Examples()
    for n, (where, row) in enumerate(object_rows(path)):
        question = first_string_field(row, ("question", "input"), where).strip()
        answer = first_string_field(row, ("answer", "answer_icliniq"), where).strip()
        out.add({
            "id": example_id(row, ("id",), f"icliniq-{n:05d}", where),
            "instruction": data["instruction"],
            "input": question,
            "reference": answer,
            "meta": {},
        }, where)
    if not out:
        raise DataError(f"{path}: no examples")
    return list(out)
