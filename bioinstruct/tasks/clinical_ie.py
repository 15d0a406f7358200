"""Clinical information extraction: medication status and coreference: one loader for two tasks (see their YAML files)."""

from __future__ import annotations

from ..errors import DataError
from ..modeling.metrics import normalize_item
from .reader import example_id, Examples, need_path, object_rows, string_field


def load_clinical_ie(data: dict) -> list[dict]:
    """Clinical information extraction (medication status, coreference), JSON Lines:

        {"id": "note-17", "text": "<clinical note>", "question": "<optional>",
         "instruction": "<optional, overrides data.instruction>", "gold": ["item", ...]}

    ``input`` is ``text``, followed by a blank line and ``"Question: {question}"`` when the
    record has a question (coreference: which mention to resolve). ``gold`` is a list of
    strings (may be empty: nothing to extract). Items are matched under
    :func:`normalize_item` (NFKC, lowercase, punctuation to spaces, whitespace collapsed);
    gold items that normalise to the same string are kept once, and an item that normalises
    to nothing is an error. Medication status items are written ``"<medication> (<status>)"``
    with status active, discontinued or neither, e.g. ``"metoprolol (active)"``.
    Ids: the record's ``id``, else ``ie-NNNNN`` (0-based position).
    """
    path = need_path(data.get("path"), "path")
    out = Examples()
    for n, (where, row) in enumerate(object_rows(path)):
        text = string_field(row, "text", where)
        gold = row.get("gold")
        if not isinstance(gold, list) or not all(isinstance(g, str) for g in gold):
            raise DataError(f"{where}: 'gold' must be a list of strings")
        items, seen = [], set()
        for g in gold:
            key = normalize_item(g)
            if not key:
                raise DataError(f"{where}: gold item {g!r} is empty after normalisation")
            if key not in seen:
                seen.add(key)
                items.append(g.strip())
        question = string_field(row, "question", where) if row.get("question") not in (None, "") else None
        instruction = string_field(row, "instruction", where) if row.get("instruction") else data["instruction"]
        out.add({
            "id": example_id(row, ("id",), f"ie-{n:05d}", where),
            "instruction": instruction,
            "input": text.strip() + (f"\n\nQuestion: {question.strip()}" if question else ""),
            "gold": items,
            "meta": {},
        }, where)
    if not out:
        raise DataError(f"{path}: no examples")
    return list(out)
