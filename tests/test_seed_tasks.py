"""The 80 human-curated biomedical seed tasks shipped in bioinstruct/data/seed_tasks.jsonl."""

from __future__ import annotations

import itertools
import json
import re
from collections import Counter
from pathlib import Path

import pytest

import bioinstruct
from bioinstruct.modeling.metrics import rouge_scorer

pytestmark = pytest.mark.unit

SEED_PATH = Path(bioinstruct.__file__).parent / "data" / "seed_tasks.jsonl"
EXPECTED_COUNTS = {"qa": 18, "ie": 27, "generation": 27, "other": 8}
BLACKLIST = re.compile(r"\b(image|picture|graph|chart|diagram)\b", re.IGNORECASE)
MAX_ROUGE_L = 0.7


@pytest.fixture(scope="module")
def seeds() -> list[dict]:
    records = []
    with SEED_PATH.open(encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            assert line.strip(), f"blank line {lineno} in {SEED_PATH}"
            records.append(json.loads(line))
    return records


def test_file_exists_and_has_80_records(seeds):
    assert SEED_PATH.is_file()
    assert len(seeds) == 80


def test_ids_are_sequential_and_unique(seeds):
    ids = [r["id"] for r in seeds]
    assert ids == [f"seed_task_{i}" for i in range(80)]
    assert len(set(ids)) == 80


def test_names_unique_snake_case(seeds):
    names = [r["name"] for r in seeds]
    assert len(set(names)) == len(names)
    for n in names:
        assert re.fullmatch(r"[a-z0-9]+(_[a-z0-9]+)*", n), n


def test_required_fields_and_types(seeds):
    for r in seeds:
        assert set(r) >= {"id", "name", "instruction", "instances", "category"}, r.get("id")
        assert isinstance(r["id"], str)
        assert isinstance(r["name"], str) and r["name"]
        assert isinstance(r["instruction"], str) and r["instruction"].strip()
        assert isinstance(r["category"], str)
        assert isinstance(r["instances"], list) and len(r["instances"]) >= 1, r["id"]
        for inst in r["instances"]:
            assert isinstance(inst, dict)
            assert isinstance(inst.get("input"), str), r["id"]
            assert isinstance(inst.get("output"), str), r["id"]
            assert inst["output"].strip(), f"{r['id']}: empty output"


def test_category_counts(seeds):
    cats = Counter(r["category"] for r in seeds)
    assert set(cats) <= set(EXPECTED_COUNTS), set(cats) - set(EXPECTED_COUNTS)
    assert dict(cats) == EXPECTED_COUNTS


def test_no_blacklisted_words_in_instructions(seeds):
    bad = [(r["id"], m.group(0)) for r in seeds if (m := BLACKLIST.search(r["instruction"]))]
    assert not bad


def test_instruction_lengths(seeds):
    for r in seeds:
        n = len(r["instruction"].split())
        assert 4 <= n <= 150, (r["id"], n)


def test_instructions_are_mutually_distinct(seeds):
    scorer = rouge_scorer(("rougeL",), False)
    worst = (0.0, "", "")
    for a, b in itertools.combinations(seeds, 2):
        f = scorer.score(a["instruction"], b["instruction"])["rougeL"].fmeasure
        if f > worst[0]:
            worst = (f, a["id"], b["id"])
    assert worst[0] <= MAX_ROUGE_L, worst
