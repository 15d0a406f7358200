"""Training examples as the model gets them: records in the prompt format (alpaca or chat,
bioinstruct/prompts.py) tokenized with the prompt masked, and collated into batches (rows, or
packed rows: see packing.py)."""

from __future__ import annotations

from ..errors import ConfigError
from ..prompts import alpaca_prompt, chat_prompt, chat_response


def encode(record: dict, tokenizer, fmt: str) -> tuple[list[int], list[int]]:
    """(prompt ids, response ids) of one record. alpaca: the whole text tokenized as the paper's
    recipe does (with the tokenizer's BOS) and EOS appended, split where the prompt's own
    tokens end. chat: the two texts tokenized apart, as the template renders them (its special
    tokens are in the text), so no token spans the boundary; the response ends with the
    template's end of turn."""
    if fmt == "chat":
        prompt = chat_prompt(tokenizer, record["instruction"], record["input"])
        response = chat_response(tokenizer, record["instruction"], record["input"], record["output"])
        return (tokenizer(prompt, add_special_tokens=False)["input_ids"],
                tokenizer(response, add_special_tokens=False)["input_ids"])
    prompt = alpaca_prompt(record["instruction"], record["input"])
    ids = tokenizer(prompt + record["output"])["input_ids"] + [tokenizer.eos_token_id]
    n_prompt = len(tokenizer(prompt)["input_ids"])
    return ids[:n_prompt], ids[n_prompt:]


def tokenize(records: list[dict], tokenizer, cfg, fmt: str = "alpaca") -> tuple[list[dict], int]:
    """Examples as input_ids/labels in prompt format ``fmt``, the prompt masked unless
    train_on_inputs (``cfg``: the recipe's DataConfig, its max_length and train_on_inputs).
    Returns the examples and how many were dropped because the prompt filled max_length."""
    bare = len(encode({"instruction": "", "input": "", "output": ""}, tokenizer, fmt)[0])
    if bare >= cfg.max_length:
        raise ConfigError(f"data.max_length={cfg.max_length} is smaller than the prompt template itself "
                          f"({bare} tokens)")
    examples, dropped = [], 0
    for record in records:
        prompt, response = encode(record, tokenizer, fmt)
        ids = (prompt + response)[:cfg.max_length]
        labels = list(ids) if cfg.train_on_inputs else [-100] * min(len(prompt), len(ids)) + ids[len(prompt):]
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
