"""A causal LM scored in large batches: log-likelihoods (lm-evaluation-harness compatible)
and greedy generation, for a base model and the same base with a LoRA adapter.

    lm = LM("runs/v1/base-llama2-7b", adapter="runs/v1/train/llama2-7b__all/adapter")
    lm.loglikelihoods([("Question: ...\\nAnswer:", " A"), ...])   # [(sum logprob, is_greedy), ...]
    lm.generate(["Below is an instruction ..."], max_new_tokens=64)
    with lm.base():                                              # the same weights, adapter off
        lm.loglikelihoods(...)

Work is planned before it runs: ``loglik_batches`` / ``generate_batches`` tokenize every
request in one call and cut the whole set into batches, longest first (an out-of-memory shows
in the first batch, and similar lengths share a batch); ``run_loglik`` / ``run_generate``
run one batch. A batch's results depend only on the batch, so a caller that plans the same
requests again and reruns only some batches (a resumed shard) gets the same numbers.

Log-likelihoods follow lm-eval's HF backend: context and continuation are encoded without
special tokens, trailing context whitespace moves to the continuation, the continuation's
tokens are those of context+continuation past the context's, a context without tokens is
the BOS token (EOS without one), and sequences are cut from the left to the model's length.
Each request feeds context+continuation less its last token and reads the continuation's
log-probs off the last positions; a request whose fed tokens begin a longer request's is
read off that request's row (a question's single-token choices share one forward).
Rows are padded on the right, without an attention mask, and the LM head runs only at the
positions read. Generation pads on the left; generate() derives positions from the
attention mask, so a padded row sees the positions it would alone.
"""

from __future__ import annotations

import contextlib
import dataclasses
from typing import Iterator

from .precision import resolve_dtype

# The Alpaca template's section headers: a model that starts one has finished its answer
# (a base model, or a tuned one that missed its EOS). Generation stops there and cuts them.
STOP_STRINGS = ("### Instruction:", "### Input:", "### Response:")


@dataclasses.dataclass(frozen=True)
class Batch:
    """One forward pass (or one generate call): its rows, longest first, and per item it
    answers, the item's index in the planned list and (log-likelihoods) its read
    (row, first position, continuation ids)."""
    rows: list[tuple[int, ...]]
    items: list[int]
    reads: list[tuple[int, int, tuple[int, ...]]] = dataclasses.field(default_factory=list)


class LM:
    def __init__(self, model: str, adapter: str | None = None, *, device: str | None = None,
                 dtype: str = "auto", batch_size: int = 32, max_length: int | None = None):
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.torch = torch
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        self.precision = resolve_dtype(dtype, device=self.device)
        self.tokenizer = AutoTokenizer.from_pretrained(adapter or model)
        if self.tokenizer.pad_token_id is None:
            self.tokenizer.pad_token = self.tokenizer.unk_token or self.tokenizer.eos_token
        base = AutoModelForCausalLM.from_pretrained(model, dtype=self.precision.torch_dtype).to(self.device).eval()
        if adapter:
            from peft import PeftModel

            base = PeftModel.from_pretrained(base, adapter).eval()
        self.model = base
        self.has_adapter = adapter is not None
        self.batch_size = batch_size
        self.max_length = max_length or getattr(base.config, "max_position_embeddings", 2048)
        # The last plan of each kind, by its exact inputs: a task scored with the adapter and
        # then without it is tokenized and planned once.
        self._plans: dict[str, tuple[tuple, list[Batch]]] = {}

    @contextlib.contextmanager
    def base(self) -> Iterator[None]:
        """Score the base model without reloading it: the adapter is bypassed meanwhile."""
        if not self.has_adapter:
            yield
            return
        with self.model.disable_adapter():
            yield

    # ---- tokenizing ------------------------------------------------------------------------

    def encode(self, text: str) -> list[int]:
        return self.encode_many([text])[0]

    def encode_many(self, texts: list[str]) -> list[list[int]]:
        """Token ids without special tokens, in one batched call. A fast tokenizer's backend
        is called directly without offsets (the same ids, for half the CPU time: per-string
        overhead is most of tokenizing a question)."""
        if not texts:
            return []
        backend = getattr(self.tokenizer, "backend_tokenizer", None) if self.tokenizer.is_fast else None
        # (A backend saved with truncation or padding set would apply it; the wrapper turns it off.)
        if backend is not None and hasattr(backend, "encode_batch_fast") and not (backend.truncation or backend.padding):
            return [e.ids for e in backend.encode_batch_fast(texts, add_special_tokens=False)]
        return self.tokenizer(texts, add_special_tokens=False)["input_ids"]

    def encode_pairs(self, requests: list[tuple[str, str]]) -> list[tuple[list[int], list[int]]]:
        """(context ids, continuation ids) per request, lm-eval's way; each distinct context is
        tokenized once, and all of them, like all the context+continuation strings, in one call."""
        split = [_move_trailing_space(context, continuation) for context, continuation in requests]
        contexts = list(dict.fromkeys(context for context, _ in split))
        context_ids = dict(zip(contexts, self.encode_many(contexts)))
        wholes = self.encode_many([context + continuation for context, continuation in split])
        return [self._split(context_ids[context], whole) for (context, _), whole in zip(split, wholes)]

    def _split(self, context: list[int], whole: list[int]) -> tuple[list[int], list[int]]:
        """(context ids, continuation ids) from the context's ids and context+continuation's."""
        if context:
            return context, whole[len(context):]
        # Nothing to condition on: lm-eval's prefix token, unless the continuation starts with it.
        prefix = self.tokenizer.bos_token_id
        prefix = self.tokenizer.eos_token_id if prefix is None else prefix
        return (whole[:1], whole[1:]) if whole[:1] == [prefix] else ([prefix], whole)

    # ---- log-likelihoods -------------------------------------------------------------------

    def loglik_batches(self, requests: list[tuple[str, str]]) -> list[Batch]:
        """Every request's forward, planned: rows shared where one request's fed tokens begin
        another's, sorted longest first, cut into batches. A request with an empty
        continuation is in no batch (it is certain; lm-eval refuses it)."""
        key = (tuple(requests), self.batch_size, self.max_length)
        if self._plans.get("loglik", (None,))[0] != key:
            self._plans["loglik"] = key, self._loglik_batches(requests)
        return self._plans["loglik"][1]

    def _loglik_batches(self, requests: list[tuple[str, str]]) -> list[Batch]:
        pairs = self.encode_pairs(requests)
        # A request feeds context+continuation less its last token, cut from the left to the
        # model's length, and reads its continuation off the last len(continuation) positions.
        fed = [tuple((ctx + cont)[-(self.max_length + 1):][:-1]) for ctx, cont in pairs]
        rows = _rows({i: fed[i] for i, (_, cont) in enumerate(pairs) if cont})
        order = sorted(rows, key=len, reverse=True)
        batches = []
        for start in range(0, len(order), self.batch_size):
            batch = order[start:start + self.batch_size]
            served = [(b, i) for b, row in enumerate(batch) for i in rows[row]]
            batches.append(Batch(rows=batch, items=[i for _, i in served],
                                 reads=[(b, len(fed[i]) - len(pairs[i][1]), tuple(pairs[i][1])) for b, i in served]))
        return batches

    def run_loglik(self, batch: Batch) -> list[tuple[float, bool]]:
        """(sum log-prob, greedy?) of each item of ``batch`` from one forward pass."""
        torch = self.torch
        ids = torch.full((len(batch.rows), len(batch.rows[0])), self.tokenizer.pad_token_id, dtype=torch.long)
        for b, row in enumerate(batch.rows):
            ids[b, :len(row)] = torch.tensor(row)
        at = torch.tensor([(b, first + k) for b, first, cont in batch.reads for k in range(len(cont))])
        targets = torch.tensor([t for *_, cont in batch.reads for t in cont], device=self.device)
        # The LM head runs only at the positions read (a full-vocabulary log-softmax at every
        # position, as lm-eval computes, is much of the cost of a small model).
        keep, column = torch.unique(at[:, 1], return_inverse=True)
        with torch.inference_mode():
            # No attention mask: padding is on the right, so causal attention keeps it out of
            # every position read, and positions count from 0 in every row as they would alone.
            logits = self.model(input_ids=ids.to(self.device), logits_to_keep=keep.to(self.device)).logits
            logits = logits[at[:, 0].to(self.device), column.to(self.device)].float()
            logprobs = logits.log_softmax(-1).gather(1, targets[:, None])[:, 0].cpu()
            hits = (logits.argmax(-1) == targets).cpu()
        lengths = [len(cont) for *_, cont in batch.reads]
        return [(float(lp.sum()), bool(hit.all())) for lp, hit in zip(logprobs.split(lengths), hits.split(lengths))]

    def loglikelihoods(self, requests: list[tuple[str, str]]) -> list[tuple[float, bool]]:
        """Sum log-probability of each continuation given its context, and whether greedy
        decoding would have produced it; in request order."""
        results = [(0.0, True)] * len(requests)
        for batch in self.loglik_batches(requests):
            for i, result in zip(batch.items, self.run_loglik(batch)):
                results[i] = result
        return results

    # ---- generation ------------------------------------------------------------------------

    def generate_batches(self, prompts: list[str], max_new_tokens: int, special_tokens: bool = True) -> list[Batch]:
        """Prompts tokenized in one call (with BOS, as in training, unless not ``special_tokens``:
        a chat template's text holds its own), cut from the left to leave room for the answer,
        sorted longest first (length buckets: little padding) and batched."""
        key = (tuple(prompts), max_new_tokens, special_tokens, self.batch_size, self.max_length)
        if self._plans.get("generate", (None,))[0] != key:
            self._plans["generate"] = key, self._generate_batches(prompts, max_new_tokens, special_tokens)
        return self._plans["generate"][1]

    def _generate_batches(self, prompts: list[str], max_new_tokens: int, special_tokens: bool) -> list[Batch]:
        encoded = self.tokenizer(prompts, add_special_tokens=special_tokens)["input_ids"] if prompts else []
        rows = [tuple(ids[-(self.max_length - max_new_tokens):]) for ids in encoded]
        order = sorted(range(len(rows)), key=lambda i: -len(rows[i]))
        return [Batch(rows=[rows[i] for i in idx], items=idx)
                for idx in (order[s:s + self.batch_size] for s in range(0, len(order), self.batch_size))]

    def run_generate(self, batch: Batch, max_new_tokens: int) -> list[str]:
        """Greedy continuations of one batch (KV cache on), each ending at EOS or a stop string."""
        torch = self.torch
        width = len(batch.rows[0])
        ids = torch.full((len(batch.rows), width), self.tokenizer.pad_token_id, dtype=torch.long)
        mask = torch.zeros((len(batch.rows), width), dtype=torch.long)
        for b, row in enumerate(batch.rows):
            ids[b, width - len(row):] = torch.tensor(row)
            mask[b, width - len(row):] = 1
        with torch.inference_mode():
            # generate() derives each row's positions from the attention mask, so left padding
            # does not shift them (tests check batched == one at a time).
            generated = self.model.generate(
                input_ids=ids.to(self.device), attention_mask=mask.to(self.device), max_new_tokens=max_new_tokens,
                do_sample=False, use_cache=True, stop_strings=list(STOP_STRINGS), tokenizer=self.tokenizer,
                pad_token_id=self.tokenizer.pad_token_id, eos_token_id=self.tokenizer.eos_token_id)
        texts = self.tokenizer.batch_decode(generated[:, width:], skip_special_tokens=True)
        return [_cut(text).strip() for text in texts]

    def generate(self, prompts: list[str], max_new_tokens: int = 128) -> list[str]:
        """Greedy continuations of ``prompts``, in their order."""
        out = [""] * len(prompts)
        for batch in self.generate_batches(prompts, max_new_tokens):
            for i, text in zip(batch.items, self.run_generate(batch, max_new_tokens)):
                out[i] = text
        return out


def _cut(text: str) -> str:
    """The text before the first stop string (generation stops after it, which it keeps)."""
    return text[:min((k for k in map(text.find, STOP_STRINGS) if k >= 0), default=len(text))]


def _move_trailing_space(context: str, continuation: str) -> tuple[str, str]:
    stripped = context.rstrip()
    return stripped, context[len(stripped):] + continuation


def _rows(windows: dict[int, tuple[int, ...]]) -> dict[tuple[int, ...], list[int]]:
    """The rows to feed, each with the keys of the windows it serves: the longest window that
    each begins. With causal attention and positions from 0, a window's logits are the same at
    the start of any longer sequence, so a question's single-token choices share a row, as do
    continuations that differ only in their last token."""
    rows: dict[tuple[int, ...], list[int]] = {}
    row: tuple[int, ...] = ()
    # Sorted, a window that begins any other begins the next one, and so that one's row.
    for window, key in sorted(((w, k) for k, w in windows.items()), reverse=True):
        if row[:len(window)] != window:
            row = window
            rows[row] = []
        rows[row].append(key)
    return rows
