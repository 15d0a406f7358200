"""What every task loader shares: the example contract, and one reader of task data files.

Each loader takes the task's ``data`` options (paths already resolved by
:func:`bioinstruct.tasks.load_task`) and returns a list of examples. Every example has a
string ``id``, unique within the task, stable across runs (taken from the data where the
data has one, else the record's position in the file), and an optional ``meta`` dict
(subject, section header, ...) for breakdowns. The other keys depend on the task's kind:

``multiple_choice``
    ``context``  the prompt scored by log-likelihood, byte-identical to lm-evaluation-harness
                 0.4.13 (``doc_to_text``) where lm-eval has the task, ending in ``"Answer:"``;
    ``choices``  the continuations exactly as lm-eval scores them, its target delimiter
                 (one space) included: ``[" A", " B", " C", " D"]``, ``[" yes", " no", " maybe"]``;
    ``gold``     index of the correct choice;
    ``labels``   the short answer a generative model is asked to write for each choice
                 (``["A", "B", "C", "D"]``, ``["yes", "no", "maybe"]``);
    ``option_texts``  the text of each option (MedQA/MedMCQA: the option's text; label-only
                 tasks: the label word), for answer extraction by text;
    ``instruction``, ``input``  an Alpaca-style rendering of the same question for
                 instruction-tuned models (options listed as ``"A. text"`` lines).
``generation``
    ``instruction``, ``input``, ``reference``.
``extraction``
    ``instruction``, ``input``, ``gold`` (list of item strings; see :func:`normalize_item`).

A missing input file raises :class:`MissingData`, which ``load_examples`` turns into a
DataError that says how to obtain the data; a malformed record raises DataError starting
with ``file:line`` (JSONL, CSV) or ``file: record KEY`` (JSON objects and arrays).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterator

from ..errors import ConfigError, DataError
from ..io.rows import iter_rows

LETTERS = ["A", "B", "C", "D"]
# lm-eval's default ``target_delimiter``: each choice is scored as " " + choice.
TARGET_DELIMITER = " "


class MissingData(Exception):
    """An input file that is not there; ``key`` is the data option that names it."""

    def __init__(self, path: Path, key: str):
        super().__init__(str(path))
        self.path = path
        self.key = key


def need_path(path: Any, key: str) -> Path:
    if path is None or path == "":
        raise ConfigError(f"data.{key} is not set")
    p = Path(path)
    if not p.exists():
        raise MissingData(p, key)
    return p


def object_rows(path: Path) -> Iterator[tuple[str, dict]]:
    """``(file:line, record)`` for a JSON Lines file or a JSON array of objects."""
    for where, row in iter_rows(path):
        if not isinstance(row, dict):
            raise DataError(f"{where}: expected a JSON object, got {type(row).__name__}")
        yield where, row


def hub_rows(data: dict) -> Iterator[tuple[str, dict]]:
    """Rows of a Hugging Face hub dataset (``data.hub``, ``hub_config``, ``hub_split``)."""
    try:
        from datasets import load_dataset

        ds = load_dataset(data["hub"], data.get("hub_config"), split=data.get("hub_split") or "test")
    except Exception as e:  # network, auth (gated), unknown name or split
        raise DataError(f"hub dataset {data['hub']!r} (config {data.get('hub_config')!r}, split "
                        f"{data.get('hub_split')!r}) could not be loaded: {type(e).__name__}: {e}. "
                        "Set data.hub=null to read the local file instead.") from None
    for i, row in enumerate(ds):
        yield f"{data['hub']}[{data.get('hub_split')}]: row {i}", dict(row)


def string_field(row: dict, key: str, where: str, *, allow_empty: bool = False) -> str:
    if key not in row:
        raise DataError(f"{where}: missing field '{key}' (fields: {', '.join(map(str, row)) or 'none'})")
    value = row[key]
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        value = str(value)
    if not isinstance(value, str):
        raise DataError(f"{where}: field '{key}' must be a string, got {type(value).__name__}")
    if not allow_empty and not value.strip():
        raise DataError(f"{where}: field '{key}' is empty")
    return value


def first_string_field(row: dict, keys: tuple[str, ...], where: str) -> str:
    for key in keys:
        if key in row:
            return string_field(row, key, where)
    raise DataError(f"{where}: missing field '{keys[0]}' (or {', '.join(repr(k) for k in keys[1:])}); "
                    f"fields: {', '.join(map(str, row)) or 'none'}")


def example_id(row: dict, keys: tuple[str, ...], fallback: str, where: str) -> str:
    for key in keys:
        value = row.get(key)
        if value is not None and value != "":
            if not isinstance(value, (str, int)) or isinstance(value, bool):
                raise DataError(f"{where}: field '{key}' must be a string or integer id")
            return str(value)
    return fallback


class Examples(list):
    """A list of examples that refuses a duplicate id, naming both places."""

    def __init__(self) -> None:
        super().__init__()
        self._where: dict[str, str] = {}

    def add(self, example: dict, where: str) -> None:
        eid = example["id"]
        if eid in self._where:
            raise DataError(f"{where}: duplicate id {eid!r} (first at {self._where[eid]})")
        self._where[eid] = where
        self.append(example)


def options_block(letters: list[str], texts: list[str]) -> str:
    return "".join(f"{k}. {v}\n" for k, v in zip(letters, texts))


def letter_example(eid: str, context: str, question: str, texts: list[str], gold: int,
                   instruction: str, meta: dict) -> dict:
    return {
        "id": eid,
        "context": context,
        "choices": [TARGET_DELIMITER + k for k in LETTERS],
        "gold": gold,
        "labels": list(LETTERS),
        "option_texts": list(texts),
        "instruction": instruction,
        "input": question.strip() + "\n" + options_block(LETTERS, texts).rstrip("\n"),
        "meta": meta,
    }
