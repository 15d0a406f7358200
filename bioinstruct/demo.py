"""The real-model demo's data (`make demo`, i.e. `bioinstruct quickstart model=smollm2`): a real
biomedical training set and the evaluation questions, both from the public data in
../shared/data (its README says where each file comes from); nothing is downloaded.

Training set (demo-data/train.jsonl, {id, instruction, input, output}), none of it evaluated:
  PubMedQA PQA-L    the expert-labelled questions outside the official 500-question test
                    split (ori_pqal.json less test_ground_truth.json), the first
                    ``pubmedqa_train`` in file order: the question alone (closed book, no
                    abstract: a tenth of the tokens) -> "Yes." / "No." / "Maybe." and the
                    paper's own conclusion (LONG_ANSWER)
  MTS-Dialog        doctor-patient conversations -> a section of the clinical note, the first
                    ``mts_dialog_train`` of the validation set whose dialogue has at most
                    ``mts_dialog_max_chars`` characters (short ones: CPU time)
Evaluation questions (evaluate's task_data; decontaminate checks the training set against
every question of both sets, not only these):
  MedMCQA dev       the first ``medmcqa_questions`` of dev.json (evaluate's limit), every
                    answer letter among them
  PubMedQA test     ``pubmedqa_questions`` of the 500 drawn with a seeded shuffle
                    (demo-data/pubmedqa/: test_set.json and test_ground_truth.json in the
                    loader's layout); the file lists them by label, so its first 100 are all
                    "yes": the draw keeps every label
"""

from __future__ import annotations

import csv
import dataclasses
import random
from collections import Counter
from pathlib import Path

from .errors import UserError
from .io.rows import atomic_write_json, read_json, write_jsonl
from .paths import SOURCE_TREE

SHARED_DATA = SOURCE_TREE.parent / "shared" / "data"
PUBMEDQA_INSTRUCTION = ("Answer the biomedical research question with yes, no or maybe, "
                        "then give the conclusion that supports the answer.")
NEEDED = ("pubmedqa/ori_pqal.json", "pubmedqa/test_set.json", "pubmedqa/test_ground_truth.json",
          "medmcqa/dev.json", "mts_dialog/MTS-Dialog-ValidationSet.csv")


@dataclasses.dataclass
class DemoData:
    root: str = str(SHARED_DATA)  # the shared data folder (../shared/data beside the checkout)
    pubmedqa_train: int = 120
    mts_dialog_train: int = 20
    mts_dialog_max_chars: int = 800
    medmcqa_questions: int = 200
    pubmedqa_questions: int = 100
    seed: int = 0


def check_data(root: str | Path) -> Path:
    """The shared data folder, or one line saying what is missing."""
    root = Path(root).expanduser()
    missing = [name for name in NEEDED if not (root / name).is_file()]
    if missing:
        raise UserError(f"the real-model demo needs the public data in {root} (../shared/data beside the "
                        f"checkout; data.root=DIR elsewhere): missing {', '.join(missing)}")
    return root


def training_records(cfg: DemoData) -> list[dict]:
    root = check_data(cfg.root)
    pqal = read_json(root / "pubmedqa/ori_pqal.json")
    test = set(read_json(root / "pubmedqa/test_ground_truth.json"))
    records = []
    for pmid, item in pqal.items():
        if pmid in test:
            continue
        if len(records) == cfg.pubmedqa_train:
            break
        records.append({"id": f"pqal-{pmid}", "instruction": PUBMEDQA_INSTRUCTION, "input": item["QUESTION"],
                        "output": f"{item['final_decision'].capitalize()}. {item['LONG_ANSWER']}"})
    with open(root / "mts_dialog/MTS-Dialog-ValidationSet.csv", newline="", encoding="utf-8") as f:
        dialogues = [row for row in csv.DictReader(f) if len(row["dialogue"]) <= cfg.mts_dialog_max_chars]
    for row in dialogues[:cfg.mts_dialog_train]:
        section = row["section_header"].strip().lower()
        records.append({"id": f"mts-dialog-{row['ID']}",
                        "instruction": f"Write the '{section}' section of the clinical note for this "
                                       "doctor-patient conversation.",
                        "input": row["dialogue"].strip(), "output": row["section_text"].strip()})
    return records


def pubmedqa_sample(cfg: DemoData, out: Path) -> Counter:
    """``pubmedqa_questions`` test questions by a seeded shuffle, written in the loader's layout."""
    root = check_data(cfg.root)
    truth = read_json(root / "pubmedqa/test_ground_truth.json")
    items = read_json(root / "pubmedqa/test_set.json")
    pmids = sorted(truth)
    random.Random(cfg.seed).shuffle(pmids)
    chosen = pmids[:cfg.pubmedqa_questions]
    labels = Counter(truth[p] for p in chosen)
    if set(labels) != {"yes", "no", "maybe"}:
        raise UserError(f"pubmedqa_questions={cfg.pubmedqa_questions} draws labels {dict(labels)}: "
                        "take more questions so that every label occurs")
    atomic_write_json(out / "test_set.json", {p: items[p] for p in chosen})
    atomic_write_json(out / "test_ground_truth.json", {p: truth[p] for p in chosen})
    return labels


def prepare(cfg: DemoData, folder: Path) -> dict:
    """Write the training set and the PubMedQA sample into ``folder``; what it wrote."""
    records = training_records(cfg)
    folder.mkdir(parents=True, exist_ok=True)
    write_jsonl(folder / "train.jsonl", records)
    labels = pubmedqa_sample(cfg, folder / "pubmedqa")
    sources = Counter(r["id"].rsplit("-", 1)[0] for r in records)
    print(f"demo data: {len(records)} training records ({', '.join(f'{n} {s}' for s, n in sources.items())}) "
          f"-> {folder / 'train.jsonl'}; PubMedQA test sample {dict(labels)}; MedMCQA dev first "
          f"{cfg.medmcqa_questions}", flush=True)
    return {"train": folder / "train.jsonl", "pubmedqa_root": folder}
