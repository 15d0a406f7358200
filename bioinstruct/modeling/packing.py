"""Packing (data.packing=true): several tokenized examples in one row of at most
data.max_length tokens, so short examples stop paying for padding.

Exact, not approximate: in a row, no example attends to another, positions restart at 0
for each, and no loss crosses a boundary. The rows carry only ``position_ids`` that restart
per example; the model gets no attention_mask, and transformers 5 then reads the example
boundaries from position_ids itself: the sdpa and eager paths build a block-diagonal causal
mask from them (masking_utils.find_packed_sequence_indices), flash-attention runs varlen
over them (_is_packed_sequence), but only for a batch of one row, which is why the collator
flattens a micro-batch for flash_attention_2. That keeps one data layout for CPU tests and
bf16 GPU training alike, where a hand-built 4D mask would not reach flash-attention. The
masks are derived only when the model keeps no KV cache (train.load_model turns it off).

With packing a Trainer sample is a row: optim.effective_batch counts rows (each holding
several examples) and an epoch is every row once, so a run makes fewer, fuller steps.
"""

from __future__ import annotations

import bisect


def pack(examples: list[dict], max_length: int) -> list[dict]:
    """Rows of examples by best-fit decreasing: longest first, each into the fullest row it
    still fits. A function of the examples alone (ties go by position), so every rank and a
    resumed run build the same rows; the Trainer's seeded sampler shuffles their order."""
    order = sorted(range(len(examples)), key=lambda i: (-len(examples[i]["input_ids"]), i))
    rows: list[list[int]] = []
    room: list[tuple[int, int]] = []  # (tokens left, row), ascending: the first that fits is the fullest
    for i in order:
        length = len(examples[i]["input_ids"])
        at = bisect.bisect_left(room, (length, -1))
        if at < len(room):
            left, row = room.pop(at)
        else:
            left, row = max_length, len(rows)
            rows.append([])
        rows[row].append(i)
        if left > length:
            bisect.insort(room, (left - length, row))
    return [join([examples[i] for i in row]) for row in rows]


def join(examples: list[dict]) -> dict:
    """One row of ``examples``. The first label of each is -100: the causal-LM loss predicts
    token t+1 from token t, so that label would be learned from the previous example's last
    token (alone, nothing predicts a first token either, so the loss stays the same)."""
    row: dict[str, list[int]] = {"input_ids": [], "labels": [], "position_ids": []}
    for example in examples:
        row["input_ids"] += example["input_ids"]
        row["labels"] += [-100] + example["labels"][1:]
        row["position_ids"] += range(len(example["input_ids"]))
    return row


def model_inputs(batch: dict) -> dict:
    """A packed batch as the model gets it: without the attention_mask. The collator still
    makes one because the Trainer counts real tokens from it (include_num_input_tokens_seen=
    "non_padding", so tokens/s and MFU count no padding); the model must not see it, since
    transformers only reads boundaries from position_ids when attention_mask is None."""
    return {key: value for key, value in batch.items() if key != "attention_mask"}


def packed_trainer():
    """The HF Trainer, handing the model only model_inputs(batch)."""
    from transformers import Trainer

    class PackedTrainer(Trainer):
        def compute_loss(self, model, inputs, *args, **kwargs):
            return super().compute_loss(model, model_inputs(inputs), *args, **kwargs)

    return PackedTrainer
