"""Training examples as the model gets them: Alpaca-format records tokenized with the
prompt masked, and collated into batches (rows, or packed rows: see packing.py)."""

from __future__ import annotations

from ..errors import ConfigError
from ..prompts import alpaca_prompt


def tokenize(records: list[dict], tokenizer, cfg) -> tuple[list[dict], int]:
    """Alpaca-format examples as input_ids/labels, the prompt masked unless train_on_inputs
    (``cfg``: the recipe's DataConfig, its max_length and train_on_inputs).
    Returns the examples and how many were dropped because the prompt filled max_length."""
    bare = len(tokenizer(alpaca_prompt(""))["input_ids"])
    if bare >= cfg.max_length:
        raise ConfigError(f"data.max_length={cfg.max_length} is smaller than the prompt template itself "
                          f"({bare} tokens)")
    examples, dropped = [], 0
    for record in records:
        prompt = alpaca_prompt(record["instruction"], record["input"])
        ids = tokenizer(prompt + record["output"])["input_ids"] + [tokenizer.eos_token_id]
        n_prompt = len(tokenizer(prompt)["input_ids"])
        ids = ids[:cfg.max_length]
        labels = list(ids) if cfg.train_on_inputs else [-100] * min(n_prompt, len(ids)) + ids[n_prompt:]
        if all(label == -100 for label in labels):
            dropped += 1  # nothing of the response fits: no signal, only cost
            continue
        examples.append({"input_ids": ids, "labels": labels})
    return examples, dropped


class Collator:
    """Right padding (training never generates); labels padded with -100. Packed rows carry
    position_ids; their padding gets positions of its own from 0, a segment that no example
    attends to. flatten: the micro-batch as one row without padding, the only packed layout
    flash-attention recognises (see bioinstruct/modeling/packing.py)."""

    def __init__(self, pad_id: int, flatten: bool = False):
        self.pad_id = pad_id
        self.flatten = flatten

    def __call__(self, batch: list[dict]) -> dict:
        import torch

        if self.flatten:
            batch = [{key: [v for b in batch for v in b[key]] for key in batch[0]}]
        width = max(len(b["input_ids"]) for b in batch)
        pads = [width - len(b["input_ids"]) for b in batch]
        out = {"input_ids": [b["input_ids"] + [self.pad_id] * n for b, n in zip(batch, pads)],
               "labels": [b["labels"] + [-100] * n for b, n in zip(batch, pads)],
               "attention_mask": [[1] * len(b["input_ids"]) + [0] * n for b, n in zip(batch, pads)]}
        if "position_ids" in batch[0]:
            out["position_ids"] = [b["position_ids"] + list(range(n)) for b, n in zip(batch, pads)]
        return {key: torch.tensor(value) for key, value in out.items()}


def collator(pad_id: int, packing: bool, attn_implementation: str) -> Collator:
    # Only flash-attention needs a flat micro-batch; sdpa and eager keep rows, as their mask
    # over a flat one would be (micro_batch x max_length)^2.
    return Collator(pad_id, flatten=packing and attn_implementation == "flash_attention_2")
