"""A causal LM scored in large batches: log-likelihoods (lm-evaluation-harness compatible)
and greedy generation, for a base model and the same base with a LoRA adapter.

    lm = LM("runs/v1/base-llama2-7b", adapter="runs/v1/train/llama2-7b__all/adapter")
    lm.loglikelihoods([("Question: ...\\nAnswer:", " A"), ...])   # [(sum logprob, is_greedy), ...]
    lm.generate(["Below is an instruction ..."], max_new_tokens=64)
    with lm.base():                                              # the same weights, adapter off
        lm.loglikelihoods(...)

Log-likelihoods follow lm-eval's HF backend: context and continuation are encoded without
special tokens, trailing context whitespace moves to the continuation, the continuation's
tokens are those of context+continuation past the context's, a context without tokens is
the BOS token (EOS without one), and sequences are cut from the left to the model's length.
Each request feeds context+continuation less its last token and reads the continuation's
log-probs off the last positions; a request whose fed tokens begin a longer request's is
read off that request's row (a question's single-token choices, for one, share a forward).
Rows are padded on the right, without an attention mask, and the LM head runs only at the
positions read. Generation pads on the left; generate() derives positions from the
attention mask, so a padded row sees the positions it would alone.
"""

from __future__ import annotations

import contextlib
from typing import Iterator

from .progress import progress


class LM:
    def __init__(self, model: str, adapter: str | None = None, *, device: str | None = None,
                 dtype: str = "auto", batch_size: int = 32, max_length: int | None = None):
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.torch = torch
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        gpu = self.device.startswith("cuda")
        torch_dtype = {"auto": torch.bfloat16 if gpu and torch.cuda.is_bf16_supported() else torch.float32,
                       "bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}[dtype]
        self.tokenizer = AutoTokenizer.from_pretrained(adapter or model)
        if self.tokenizer.pad_token_id is None:
            self.tokenizer.pad_token = self.tokenizer.unk_token or self.tokenizer.eos_token
        base = AutoModelForCausalLM.from_pretrained(model, dtype=torch_dtype).to(self.device).eval()
        if adapter:
            from peft import PeftModel

            base = PeftModel.from_pretrained(base, adapter).eval()
        self.model = base
        self.has_adapter = adapter is not None
        self.batch_size = batch_size
        self.max_length = max_length or getattr(base.config, "max_position_embeddings", 2048)

    @contextlib.contextmanager
    def base(self) -> Iterator[None]:
        """Score the base model without reloading it: the adapter is bypassed meanwhile."""
        if not self.has_adapter:
            yield
            return
        with self.model.disable_adapter():
            yield

    def encode(self, text: str) -> list[int]:
        return self.encode_many([text])[0]

    def encode_many(self, texts: list[str]) -> list[list[int]]:
        return self.tokenizer(texts, add_special_tokens=False)["input_ids"] if texts else []

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

    def loglikelihoods(self, requests: list[tuple[str, str]], desc: str = "loglik") -> list[tuple[float, bool]]:
        """Sum log-probability of each continuation given its context, and whether greedy
        decoding would have produced it; in request order."""
        pairs = self.encode_pairs(requests)
        # A request feeds context+continuation less its last token, cut from the left to the
        # model's length, and reads its continuation off the last len(continuation) positions.
        fed = [tuple((ctx + cont)[-(self.max_length + 1):][:-1]) for ctx, cont in pairs]
        rows = _rows({i: fed[i] for i, (_, cont) in enumerate(pairs) if cont})
        order = sorted(rows, key=len, reverse=True)  # similar lengths share a batch: less padding
        results = [(0.0, True)] * len(requests)  # an empty continuation is certain (lm-eval refuses it)
        bar = progress(total=sum(map(len, rows.values())), desc=desc, unit="req")
        for start in range(0, len(order), self.batch_size):
            batch = order[start:start + self.batch_size]
            served = [(b, i) for b, row in enumerate(batch) for i in rows[row]]
            reads = [(b, len(fed[i]) - len(pairs[i][1]), pairs[i][1]) for b, i in served]
            for (_, i), result in zip(served, self._read(batch, reads)):
                results[i] = result
            bar.update(len(served))
        bar.close()
        return results

    def _read(self, rows: list[tuple[int, ...]], reads: list[tuple[int, int, list[int]]]) -> list[tuple[float, bool]]:
        """(sum log-prob, greedy?) of each read (row, first position, continuation ids) from one
        forward pass over ``rows``, longest first."""
        torch = self.torch
        ids = torch.full((len(rows), len(rows[0])), self.tokenizer.pad_token_id, dtype=torch.long)
        for b, row in enumerate(rows):
            ids[b, :len(row)] = torch.tensor(row)
        at = torch.tensor([(b, first + k) for b, first, cont in reads for k in range(len(cont))])
        targets = torch.tensor([t for *_, cont in reads for t in cont], device=self.device)
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
        lengths = [len(cont) for *_, cont in reads]
        return [(float(lp.sum()), bool(hit.all())) for lp, hit in zip(logprobs.split(lengths), hits.split(lengths))]

    def generate(self, prompts: list[str], max_new_tokens: int = 128, desc: str = "generate") -> list[str]:
        """Greedy continuations of ``prompts`` (the tokenizer adds BOS as in training)."""
        torch = self.torch
        order = sorted(range(len(prompts)), key=lambda i: -len(prompts[i]))
        out: list[str] = [""] * len(prompts)
        bar = progress(total=len(prompts), desc=desc, unit="ex")
        with torch.inference_mode():
            for start in range(0, len(order), self.batch_size):
                idx = order[start:start + self.batch_size]
                encoded = [self.tokenizer(prompts[i])["input_ids"][-(self.max_length - max_new_tokens):] for i in idx]
                width = max(len(e) for e in encoded)
                ids = torch.full((len(idx), width), self.tokenizer.pad_token_id, dtype=torch.long)
                mask = torch.zeros((len(idx), width), dtype=torch.long)
                for b, e in enumerate(encoded):
                    ids[b, width - len(e):] = torch.tensor(e)
                    mask[b, width - len(e):] = 1
                # generate() derives each row's positions from the attention mask, so left
                # padding does not shift them (tests check batched == one at a time).
                generated = self.model.generate(
                    input_ids=ids.to(self.device), attention_mask=mask.to(self.device),
                    max_new_tokens=max_new_tokens, do_sample=False,
                    pad_token_id=self.tokenizer.pad_token_id, eos_token_id=self.tokenizer.eos_token_id)
                for b, i in enumerate(idx):
                    out[i] = self.tokenizer.decode(generated[b, width:], skip_special_tokens=True).strip()
                bar.update(len(idx))
        bar.close()
        return out


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
