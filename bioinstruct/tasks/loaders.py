"""Loaders for the evaluation tasks: local files in, examples (plain dicts) out.

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
from ..io import iter_rows, read_json
from ..metrics import normalize_item

LETTERS = ["A", "B", "C", "D"]
# lm-eval's default ``target_delimiter``: each choice is scored as " " + choice.
TARGET_DELIMITER = " "

# Allowed values of enumerated options, per loader: load_task checks overrides against them.
OPTION_CHOICES: dict[str, dict[str, tuple[Any, ...]]] = {
    "load_medqa": {"layout": ("auto", "original", "hf")},
    "load_medmcqa": {"cop_base": ("auto", 0, 1)},
    "load_pubmedqa": {"split": ("test", "pqal")},
}


class MissingData(Exception):
    """An input file that is not there; ``key`` is the data option that names it."""

    def __init__(self, path: Path, key: str):
        super().__init__(str(path))
        self.path = path
        self.key = key


# ---------------------------------------------------------------------------- helpers


def _need(path: Any, key: str) -> Path:
    if path is None or path == "":
        raise ConfigError(f"data.{key} is not set")
    p = Path(path)
    if not p.exists():
        raise MissingData(p, key)
    return p


def _records(path: Path) -> Iterator[tuple[str, dict]]:
    """``(file:line, record)`` for a JSON Lines file or a JSON array of objects."""
    for where, row in iter_rows(path):
        if not isinstance(row, dict):
            raise DataError(f"{where}: expected a JSON object, got {type(row).__name__}")
        yield where, row


def _hub_records(data: dict) -> Iterator[tuple[str, dict]]:
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


def _str(row: dict, key: str, where: str, *, allow_empty: bool = False) -> str:
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


def _first_str(row: dict, keys: tuple[str, ...], where: str) -> str:
    for key in keys:
        if key in row:
            return _str(row, key, where)
    raise DataError(f"{where}: missing field '{keys[0]}' (or {', '.join(repr(k) for k in keys[1:])}); "
                    f"fields: {', '.join(map(str, row)) or 'none'}")


def _record_id(row: dict, keys: tuple[str, ...], fallback: str, where: str) -> str:
    for key in keys:
        value = row.get(key)
        if value is not None and value != "":
            if not isinstance(value, (str, int)) or isinstance(value, bool):
                raise DataError(f"{where}: field '{key}' must be a string or integer id")
            return str(value)
    return fallback


class _Examples(list):
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


def _options_block(letters: list[str], texts: list[str]) -> str:
    return "".join(f"{k}. {v}\n" for k, v in zip(letters, texts))


def _letter_mc(eid: str, context: str, question: str, texts: list[str], gold: int,
               instruction: str, meta: dict) -> dict:
    return {
        "id": eid,
        "context": context,
        "choices": [TARGET_DELIMITER + k for k in LETTERS],
        "gold": gold,
        "labels": list(LETTERS),
        "option_texts": list(texts),
        "instruction": instruction,
        "input": question.strip() + "\n" + _options_block(LETTERS, texts).rstrip("\n"),
        "meta": meta,
    }


# ---------------------------------------------------------------------------- MedQA


def medqa_context(question: str, options: list[str]) -> str:
    """lm-eval 0.4.13 ``medqa_4options`` (preprocess_medqa.doc_to_text) on the HF layout:
    ``"Question: {sent1}\\n" + "".join(f"{k}. {v}\\n") + "Answer:"``."""
    return f"Question: {question}\n{_options_block(LETTERS, options)}Answer:"


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
        rows, source = _hub_records(data), data["hub"]
    else:
        path = _need(data.get("path"), "path")
        rows, source = _records(path), str(path)
    layout = str(data.get("layout") or "auto")
    out = _Examples()
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
            question = _str(row, "sent1", where)
            texts = [_str(row, f"ending{i}", where) for i in range(4)]
            label = row.get("label")
            if not isinstance(label, int) or isinstance(label, bool) or not 0 <= label <= 3:
                raise DataError(f"{where}: 'label' must be an integer 0..3, got {label!r}")
            gold = label
        else:
            question = _str(row, "question", where)
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
            texts = [_str(options, k, f"{where}: options") for k in LETTERS]
            answer = row.get("answer_idx")
            if answer not in LETTERS:
                raise DataError(f"{where}: 'answer_idx' must be one of A, B, C, D, got {answer!r}")
            gold = LETTERS.index(answer)
        eid = _record_id(row, ("id",), f"medqa-{n:05d}", where)
        meta = {k: row[k] for k in ("meta_info",) if k in row}
        out.add(_letter_mc(eid, medqa_context(question, texts), question, texts, gold,
                           data["instruction"], meta), where)
    if not out:
        raise DataError(f"{source}: no questions")
    return list(out)


# ---------------------------------------------------------------------------- MedMCQA


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
        rows, source = list(_hub_records(data)), data["hub"]
    else:
        path = _need(data.get("path"), "path")
        rows, source = list(_records(path)), str(path)
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
    out = _Examples()
    for n, ((where, row), cop) in enumerate(zip(rows, cops)):
        gold = cop - base
        if not 0 <= gold <= 3:
            raise DataError(f"{where}: 'cop' {cop} is out of range for cop_base={base}")
        question = _str(row, "question", where)
        texts = [_str(row, k, where, allow_empty=True) for k in ("opa", "opb", "opc", "opd")]
        eid = _record_id(row, ("id",), f"medmcqa-{n:05d}", where)
        meta = {k: row[k] for k in ("subject_name", "topic_name", "choice_type") if row.get(k) is not None}
        out.add(_letter_mc(eid, medmcqa_context(question, texts), question, texts, gold,
                           data["instruction"], meta), where)
    if not out:
        raise DataError(f"{source}: no questions")
    return list(out)


# ---------------------------------------------------------------------------- PubMedQA

PUBMEDQA_LABELS = ["yes", "no", "maybe"]


def pubmedqa_context(contexts: list[str], question: str) -> str:
    """lm-eval 0.4.13 ``pubmedqa`` (preprocess_pubmedqa.doc_to_text):
    ``"Abstract: {"\\n".join(CONTEXTS)}\\nQuestion: {QUESTION}\\nAnswer:"``."""
    return "Abstract: {}\nQuestion: {}\nAnswer:".format("\n".join(contexts), question)


def _pubmedqa_item(pmid: str, item: Any, label: Any, where: str, instruction: str) -> dict:
    if not isinstance(item, dict):
        raise DataError(f"{where}: expected an object with QUESTION and CONTEXTS")
    question = _str(item, "QUESTION", where)
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
    out = _Examples()
    if data.get("hub"):  # bigbio/pubmed_qa *_source configs: QUESTION, CONTEXTS, final_decision
        for n, (where, row) in enumerate(_hub_records(data)):
            pmid = _record_id(row, ("PMID", "pubid", "id"), f"pubmedqa-{n:05d}", where)
            out.add(_pubmedqa_item(pmid, row, row.get("final_decision"), where, instruction), where)
        return list(out)
    if split == "pqal":
        path = _need(data.get("pqal_path"), "pqal_path")
        items, truth = read_json(path), None
    elif split == "test":
        truth_path = data.get("ground_truth_path")
        truth = None
        if truth_path:
            truth_path = _need(truth_path, "ground_truth_path")
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
            path = _need(test_path, "test_path")
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


# ---------------------------------------------------------------------------- BioASQ

BIOASQ_LABELS = ["yes", "no"]


def bioasq_context(snippets: list[str], question: str) -> str:
    """No lm-eval task; PubMedQA's layout with "Context:" (snippets, not an abstract):
    ``"Context: {"\\n".join(snippets)}\\nQuestion: {body}\\nAnswer:"``, or
    ``"Question: {body}\\nAnswer:"`` without snippets."""
    if not snippets:
        return f"Question: {question}\nAnswer:"
    return "Context: {}\nQuestion: {}\nAnswer:".format("\n".join(snippets), question)


def _json_files(path: Path) -> list[Path]:
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.suffix == ".json")
        if not files:
            raise MissingData(path / "*.json", "path")
        return files
    return [path]


def load_bioasq(data: dict) -> list[dict]:
    """BioASQ Task B yes/no questions from the official golden files (one file, or a folder
    of ``*.json``, e.g. the four ``12B*_golden.json`` batches): ``{"questions": [{"id",
    "body", "type", "exact_answer", "snippets": [{"text", ...}], ...}]}``.

    Only ``type == "yesno"`` is kept; ``exact_answer`` is "yes"/"no" (any case, or a
    one-element list). ``data.use_snippets`` (default true) puts the question's snippets
    (exact duplicates dropped, first ``data.max_snippets`` if set) before it. Ids: the
    question ids.
    """
    root = _need(data.get("path"), "path")
    use_snippets = bool(data.get("use_snippets", True))
    max_snippets = data.get("max_snippets")
    out = _Examples()
    for path in _json_files(root):
        doc = read_json(path)
        questions = doc.get("questions") if isinstance(doc, dict) else None
        if not isinstance(questions, list):
            raise DataError(f"{path}: expected an object with a 'questions' list (a BioASQ golden file)")
        for i, q in enumerate(questions):
            where = f"{path}: record {i}"
            if not isinstance(q, dict):
                raise DataError(f"{where}: expected an object")
            if q.get("type") != "yesno":
                continue
            qid = _str(q, "id", where)
            where = f"{path}: record {i} (id {qid})"
            body = _str(q, "body", where).strip()
            answer = q.get("exact_answer")
            if isinstance(answer, list) and len(answer) == 1:
                answer = answer[0]
            answer = answer.strip().lower() if isinstance(answer, str) else answer
            if answer not in BIOASQ_LABELS:
                raise DataError(f"{where}: exact_answer must be yes or no, got {q.get('exact_answer')!r}")
            snippets: list[str] = []
            if use_snippets:
                for s in q.get("snippets") or []:
                    text = s.get("text") if isinstance(s, dict) else None
                    if not isinstance(text, str):
                        raise DataError(f"{where}: each snippet needs a 'text' string")
                    text = " ".join(text.split())
                    if text and text not in snippets:
                        snippets.append(text)
                if max_snippets is not None:
                    snippets = snippets[: int(max_snippets)]
            input_text = (f"Context: {chr(10).join(snippets)}\n" if snippets else "") + f"Question: {body}"
            out.add({
                "id": qid,
                "context": bioasq_context(snippets, body),
                "choices": [TARGET_DELIMITER + c for c in BIOASQ_LABELS],
                "gold": BIOASQ_LABELS.index(answer),
                "labels": list(BIOASQ_LABELS),
                "option_texts": list(BIOASQ_LABELS),
                "instruction": data["instruction"],
                "input": input_text,
                "meta": {"file": path.name},
            }, where)
    if not out:
        raise DataError(f"{root}: no yes/no questions (type == 'yesno')")
    return list(out)


# ---------------------------------------------------------------------------- MedNLI

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
    path = _need(data.get("path"), "path")
    out = _Examples()
    for n, (where, row) in enumerate(_records(path)):
        premise = _str(row, "sentence1", where)
        hypothesis = _str(row, "sentence2", where)
        label = row.get("gold_label")
        if label not in MEDNLI_LABELS:
            raise DataError(f"{where}: 'gold_label' must be one of {', '.join(MEDNLI_LABELS)}, got {label!r}")
        eid = _record_id(row, ("pairID", "id"), f"mednli-{n:05d}", where)
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


# ---------------------------------------------------------------------------- clinical IE


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
    path = _need(data.get("path"), "path")
    out = _Examples()
    for n, (where, row) in enumerate(_records(path)):
        text = _str(row, "text", where)
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
        question = _str(row, "question", where) if row.get("question") not in (None, "") else None
        instruction = _str(row, "instruction", where) if row.get("instruction") else data["instruction"]
        out.add({
            "id": _record_id(row, ("id",), f"ie-{n:05d}", where),
            "instruction": instruction,
            "input": text.strip() + (f"\n\nQuestion: {question.strip()}" if question else ""),
            "gold": items,
            "meta": {},
        }, where)
    if not out:
        raise DataError(f"{path}: no examples")
    return list(out)


# ---------------------------------------------------------------------------- conv2note (MTS-Dialog)

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
    path = _need(data.get("path"), "path")
    expand = bool(data.get("expand_headers", True))
    template = data["instruction"]
    if "{section_header}" not in template:
        raise ConfigError("data.instruction for conv2note must contain {section_header}")
    out = _Examples()
    required = ("ID", "section_header", "section_text", "dialogue")
    for where, row in iter_rows(path):
        if missing := [c for c in required if c not in row]:
            raise DataError(f"{path}:1: missing column(s) {', '.join(missing)} "
                            f"(header: {','.join(row)}; expected {','.join(required)})")
        if not any((v or "").strip() for v in row.values()):
            continue
        code = _str(row, "section_header", where).strip()
        reference = _str(row, "section_text", where).strip()
        dialogue = _str(row, "dialogue", where).strip()
        eid = _str(row, "ID", where).strip()
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


# ---------------------------------------------------------------------------- iCliniq


def load_icliniq(data: dict) -> list[dict]:
    """Patient question -> doctor's answer. JSON Lines, or a JSON array such as ChatDoctor's
    ``iCliniq.json``; per record the question is ``question`` or ``input``, the reference
    answer ``answer`` or ``answer_icliniq`` (ChatDoctor's other answers, ``answer_chatgpt``
    and ``answer_chatdoctor``, are ignored). Ids: the record's ``id``, else ``icliniq-NNNNN``
    (0-based position)."""
    path = _need(data.get("path"), "path")
    out = _Examples()
    for n, (where, row) in enumerate(_records(path)):
        question = _first_str(row, ("question", "input"), where).strip()
        answer = _first_str(row, ("answer", "answer_icliniq"), where).strip()
        out.add({
            "id": _record_id(row, ("id",), f"icliniq-{n:05d}", where),
            "instruction": data["instruction"],
            "input": question,
            "reference": answer,
            "meta": {},
        }, where)
    if not out:
        raise DataError(f"{path}: no examples")
    return list(out)
