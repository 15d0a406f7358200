"""Instruction records: ``{instruction, input, output}`` plus whatever provenance a stage adds.

Every stage from filter on reads them through :func:`read_records`, which accepts JSONL
(our stages' outputs), a JSON list (the released ``biomed_instruct_25k.json``, Alpaca data)
and CSV, and names the file and line of the first bad one, before any work starts.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

from ..errors import DataError
from .rows import iter_rows

FIELDS = ("instruction", "input", "output")
# The paper's four task categories; classify writes "unknown" when the model never gave one.
CATEGORIES = ("qa", "ie", "generation", "other")
UNKNOWN = "unknown"
LABELS = (*CATEGORIES, UNKNOWN)
PAPER_SHARES = {"qa": 22.8, "ie": 33.8, "generation": 33.5, "other": 10.0}  # percent, Figure 1A


def _check(record: Any, where: str, required: tuple[str, ...]) -> dict:
    if not isinstance(record, dict):
        raise DataError(f"{where}: expected a JSON object with {', '.join(FIELDS)}, got {type(record).__name__}")
    for field in required:
        if field not in record:
            raise DataError(f"{where}: record has no '{field}' (keys: {', '.join(record) or 'none'})")
    for field in FIELDS:
        if field in record and not isinstance(record[field], str):
            raise DataError(f"{where}: '{field}' must be a string, got {type(record[field]).__name__}")
    if not record.get("instruction", "x").strip():
        raise DataError(f"{where}: empty 'instruction'")
    if record.get("category") is not None and record["category"] not in LABELS:
        raise DataError(f"{where}: category {record['category']!r} is not one of {', '.join(LABELS)}")
    return record


def read_records(path: str | os.PathLike, required: tuple[str, ...] = ("instruction", "output")) -> list[dict]:
    """All records of a JSONL, JSON-list or CSV file (:func:`bioinstruct.io.rows.iter_rows`); a
    missing ``input`` means "" (as in Alpaca data). ``hf://OWNER/DATASET/FILE`` reads from the
    hub (see :func:`resolve_input`). Raises DataError at the first malformed record, and for a
    file with none."""
    path = resolve_input(str(path))
    if not path.exists():
        raise DataError(f"{path}: no such file")
    if path.is_dir():
        raise DataError(f"{path}: a folder, not a data file")
    records = []
    for where, record in iter_rows(path):
        record = _check(record, where, required)
        record.setdefault("input", "")
        records.append(record)
    if not records:
        raise DataError(f"{path}: no records")
    return records


def record_id(record: dict) -> str:
    """A record's id: its own ``id``, else a hash of instruction and input, so the same
    instruction keeps its id across files, orders and re-runs (what label sets join on)."""
    if record.get("id") is not None:
        return str(record["id"])
    digest = hashlib.sha256((record["instruction"] + "\0" + record.get("input", "")).encode()).hexdigest()
    return f"sha:{digest[:16]}"


HUB_PREFIX = "hf://"
RELEASED = "hf://bio-nlp-umass/bioinstruct/biomed_instruct_25k.json"


def resolve_input(spec: str) -> Path:
    """A local path for ``spec``: a file, or ``hf://OWNER/DATASET/FILE`` downloaded from
    the Hugging Face hub (when online; cached in HF_HOME, never in $HOME on clusters
    that set it). The released BioInstruct data is ``hf://bio-nlp-umass/bioinstruct/biomed_instruct_25k.json``."""
    if not spec.startswith(HUB_PREFIX):
        return Path(spec)
    parts = spec[len(HUB_PREFIX):].split("/", 2)
    if len(parts) != 3:
        raise DataError(f"{spec}: a hub input is hf://OWNER/DATASET/FILE")
    from huggingface_hub import hf_hub_download

    try:
        return Path(hf_hub_download(repo_id=f"{parts[0]}/{parts[1]}", filename=parts[2], repo_type="dataset"))
    except Exception as e:  # noqa: BLE001 - offline, gated, missing: all mean "bring the file"
        raise DataError(f"{spec}: could not download it ({type(e).__name__}); on a machine without "
                        f"internet download {parts[2]} elsewhere and pass its path instead") from None
