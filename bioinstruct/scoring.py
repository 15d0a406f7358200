"""A causal LM scored in large batches: log-likelihoods (lm-evaluation-harness compatible)
and greedy generation, for a base model and the same base with a LoRA adapter.

    lm = LM("runs/v1/base-llama2-7b", adapter="runs/v1/train/llama2-7b__all/adapter")
    lm.loglikelihoods([("Question: ...\\nAnswer:", " A"), ...])   # [(sum logprob, is_greedy), ...]
    lm.generate(["Below is an instruction ..."], max_new_tokens=64)
    with lm.base():                                              # the same weights, adapter off
        lm.loglikelihoods(...)

Log-likelihoods follow lm-eval's HF backend: context and continuation are encoded without
special tokens, trailing context whitespace moves to the continuation, the continuation's
tokens are those of context+continuation past the context's, and sequences are cut from the
left to the model's length. Requests are sorted by length and padded on the right (positions
then start at 0 for every row); a question whose choices are each one token after a shared
context is scored with a single forward pass. Generation pads on the left; generate()
derives positions from the attention mask, so a padded row sees the positions it would alone.
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
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def _pair(self, context: str, continuation: str) -> tuple[list[int], list[int]]:
        n_spaces = len(context) - len(context.rstrip())
        if n_spaces:
            continuation = context[-n_spaces:] + continuation
            context = context[:-n_spaces]
        whole = self.encode(context + continuation)
        ctx = self.encode(context)
        return ctx, whole[len(ctx):]

    def loglikelihoods(self, requests: list[tuple[str, str]], desc: str = "loglik") -> list[tuple[float, bool]]:
        """Sum log-probability of each continuation given its context, and whether greedy
        decoding would have produced it; in request order."""
        encoded = [self._pair(c, x) for c, x in requests]
        results: list[tuple[float, bool] | None] = [None] * len(requests)
        # Requests sharing a context whose continuations are all single tokens: one forward.
        groups: dict[tuple[int, ...], list[int]] = {}
        # (tokens fed, request indices, continuation ids, shared context?)
        rows: list[tuple[list[int], list[int], list[int], bool]] = []
        for i, (ctx, cont) in enumerate(encoded):
            if len(cont) == 1 and ctx:
                groups.setdefault(tuple(ctx), []).append(i)
            else:
                rows.append(((ctx + cont)[-(self.max_length + 1):][:-1], [i], cont, False))
        rows += [(list(ctx)[-self.max_length:], idx, [encoded[i][1][0] for i in idx], True)
                 for ctx, idx in groups.items()]
        rows.sort(key=lambda r: -len(r[0]))
        torch = self.torch
        bar = progress(total=len(requests), desc=desc, unit="req")
        with torch.inference_mode():
            for start in range(0, len(rows), self.batch_size):
                batch = rows[start:start + self.batch_size]
                width = max(len(r[0]) for r in batch)
                ids = torch.full((len(batch), width), self.tokenizer.pad_token_id, dtype=torch.long)
                mask = torch.zeros((len(batch), width), dtype=torch.long)
                for b, (tokens, *_) in enumerate(batch):
                    ids[b, :len(tokens)] = torch.tensor(tokens)
                    mask[b, :len(tokens)] = 1
                logits = self.model(input_ids=ids.to(self.device), attention_mask=mask.to(self.device)).logits
                logprobs = torch.log_softmax(logits.float(), dim=-1).cpu()
                for b, (tokens, indices, conts, shared) in enumerate(batch):
                    n = len(tokens)
                    if shared:  # every choice is the next token after the context
                        last = logprobs[b, n - 1]
                        greedy = int(last.argmax())
                        for i, token in zip(indices, conts):
                            results[i] = (float(last[token]), greedy == token)
                    else:
                        span = logprobs[b, n - len(conts):n]
                        target = torch.tensor(conts)
                        results[indices[0]] = (float(span.gather(1, target[:, None]).sum()),
                                               bool((span.argmax(-1) == target).all()))
                bar.update(sum(len(r[1]) for r in batch))
        bar.close()
        return results  # type: ignore[return-value]

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
