"""conv2note: MTS-Dialog conversation to clinical note section: the loader of bioinstruct/tasks/conv2note/conv2note.yaml."""

from __future__ import annotations

from ...errors import ConfigError, DataError
from ...io.rows import iter_rows
from ..reader import Examples, need_path, string_field


# MTS-Dialog's 20 normalised section headers (Ben Abacha et al., EACL 2023), in words.
MTS_SECTION_NAMES = {
    "FAM/SOCHX": "family history/social history",
    "GENHX": "history of present illness",
    "PASTMEDICALHX": "past medical history",
    "CC": "chief complaint",
    "PASTSURGICAL": "past surgical history",
    "ALLERGY": "allergies",
    "ROS": "review of systems",
    "MEDICATIONS": "medications",
    "ASSESSMENT": "assessment",
    "EXAM": "exam",
    "DIAGNOSIS": "diagnosis",
    "DISPOSITION": "disposition",
    "PLAN": "plan",
    "EDCOURSE": "emergency department course",
    "IMMUNIZATIONS": "immunizations",
    "IMAGING": "imaging",
    "GYNHX": "gynecologic history",
    "PROCEDURES": "procedures",
    "OTHER_HISTORY": "other history",
    "LABS": "labs",
}


def load_conv2note(data: dict) -> list[dict]:
    """Doctor-patient conversation -> clinical note section, MTS-Dialog CSV
    (``ID,section_header,section_text,dialogue``).

    ``instruction`` is ``data.instruction`` with ``{section_header}`` filled in: the header
    in words (``GENHX`` -> "history of present illness", see MTS_SECTION_NAMES) when
    ``data.expand_headers`` is true (default), else the code as written; ``input`` is the
    dialogue, ``reference`` the section text (both stripped of outer whitespace); ``meta``
    keeps the raw ``section_header``. Ids: the ``ID`` column.
    """
    path = need_path(data.get("path"), "path")
    expand = bool(data.get("expand_headers", True))
    template = data["instruction"]
    if "{section_header}" not in template:
        raise ConfigError("data.instruction for conv2note must contain {section_header}")
    out = Examples()
    required = ("ID", "section_header", "section_text", "dialogue")
    for where, row in iter_rows(path):
        if missing := [c for c in required if c not in row]:
            raise DataError(f"{path}:1: missing column(s) {', '.join(missing)} "
                            f"(header: {','.join(row)}; expected {','.join(required)})")
        if not any((v or "").strip() for v in row.values()):
            continue
        code = string_field(row, "section_header", where).strip()
        reference = string_field(row, "section_text", where).strip()
        dialogue = string_field(row, "dialogue", where).strip()
        eid = string_field(row, "ID", where).strip()
        name = MTS_SECTION_NAMES.get(code.upper(), code) if expand else code
        out.add({
            "id": eid,
            "instruction": template.replace("{section_header}", name),
            "input": dialogue,
            "reference": reference,
            "meta": {"section_header": code},
        }, where)
    if not out:
        raise DataError(f"{path}: no rows")
    return list(out)
