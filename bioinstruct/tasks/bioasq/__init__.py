"""BioASQ Task B yes/no questions: the loader of bioinstruct/tasks/bioasq/bioasq.yaml."""

from __future__ import annotations

from pathlib import Path

from ...errors import DataError
from ...io.rows import read_json
from ..reader import TARGET_DELIMITER, Examples, MissingData, need_path, string_field


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
    root = need_path(data.get("path"), "path")
    use_snippets = bool(data.get("use_snippets", True))
    max_snippets = data.get("max_snippets")
    out = Examples()
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
            qid = string_field(q, "id", where)
            where = f"{path}: record {i} (id {qid})"
            body = string_field(q, "body", where).strip()
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
