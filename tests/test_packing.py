"""Packing (data.packing): rows keep examples apart exactly (same loss as one at a time, on the
tiny model and on SmolLM2-135M), no label crosses a boundary, positions restart, and training
with it writes an adapter."""

import json
import random
from pathlib import Path

import pytest
import torch

from bioinstruct.stages.generate import load_seeds
from bioinstruct.modeling.packing import model_inputs, pack
from bioinstruct.modeling.examples import Collator, tokenize
from bioinstruct.stages.train import DataConfig, ModelConfig, TrainConfig, load_model, run

REPO = Path(__file__).resolve().parent.parent


def synthetic_examples(n=40, seed=0):
    """Examples of 3..60 tokens whose prompt (label -100) is a random share of them."""
    rng = random.Random(seed)
    examples = []
    for _ in range(n):
        ids = [rng.randrange(3, 1000) for _ in range(rng.randrange(3, 61))]
        prompt = rng.randrange(1, len(ids))
        examples.append({"input_ids": ids, "labels": [-100] * prompt + ids[prompt:]})
    return examples


def segments(positions):
    """(start, end) of each run of positions counting up from 0."""
    starts = [i for i, p in enumerate(positions) if p == 0] + [len(positions)]
    return list(zip(starts, starts[1:]))


def short_records():
    """Seed tasks cut short, so several fit in one row of the tiny model's max_length."""
    return [{"instruction": s["instruction"][:60], "input": s["instances"][0]["input"][:40],
             "output": s["instances"][0]["output"][:60]} for s in load_seeds(None)[:10]]


@pytest.mark.unit
def test_rows_keep_every_example_whole_and_no_label_crosses_a_boundary():
    examples = synthetic_examples()
    rows = pack(examples, max_length=128)
    assert rows == pack(examples, max_length=128)  # a function of the data: ranks and resumes agree
    assert len(rows) < len(examples) and all(len(r["input_ids"]) <= 128 for r in rows)
    found = []
    for row in rows:
        assert len(row["input_ids"]) == len(row["labels"]) == len(row["position_ids"])
        for start, end in segments(row["position_ids"]):
            assert row["position_ids"][start:end] == list(range(end - start))
            assert row["labels"][start] == -100  # would be predicted from the previous example
            found.append((row["input_ids"][start:end], row["labels"][start + 1:end]))
    expected = [(e["input_ids"], e["labels"][1:]) for e in examples]
    assert sorted(found) == sorted(expected)

    for flatten in (False, True):
        batch = Collator(pad_id=0, flatten=flatten)(rows[:3])
        for ids, labels, positions, mask in zip(*(batch[k].tolist() for k in
                                                  ("input_ids", "labels", "position_ids", "attention_mask"))):
            # A label is learned from the token before it: both must sit in one example.
            assert all(positions[t + 1] == positions[t] + 1 for t in range(len(ids) - 1) if labels[t + 1] != -100)
            real = sum(mask)
            assert all(label == -100 for label in labels[real:])  # padding: no loss, positions of its own
            assert positions[real:] == list(range(len(ids) - real))
    flat = Collator(pad_id=0, flatten=True)(rows[:3])
    assert flat["input_ids"].shape == (1, sum(len(r["input_ids"]) for r in rows[:3]))
    assert flat["attention_mask"].all()


def assert_packed_loss_equals_separate(model_dir, attn: str, train_on_inputs: bool, fmt: str = "alpaca",
                                       n: int = 10, max_length: int = 512) -> None:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    examples, dropped = tokenize(short_records()[:n], tokenizer,
                                 DataConfig(max_length=max_length, train_on_inputs=train_on_inputs), fmt)
    assert not dropped
    rows = pack(examples, max_length=max_length)
    assert len(rows) <= len(examples) // 2  # several examples per row: the test means something
    model = load_model(ModelConfig(path=str(model_dir), attn_implementation=attn), torch.float32).eval()
    with torch.no_grad():
        total, count = 0.0, 0
        for e in examples:
            labels = torch.tensor([e["labels"]])
            n = int((labels[:, 1:] != -100).sum())  # the loss predicts token t+1 from token t
            total += model(input_ids=torch.tensor([e["input_ids"]]), labels=labels).loss.item() * n
            count += n
        for flatten in (False, True):  # rows with padding (sdpa, eager) and flat (flash-attention's layout)
            batch = Collator(tokenizer.pad_token_id, flatten=flatten)(rows)
            assert (batch["labels"][:, 1:] != -100).sum() == count
            assert model(**model_inputs(batch)).loss.item() == pytest.approx(total / count, abs=1e-5)


@pytest.mark.integration
@pytest.mark.parametrize("attn", ["sdpa", "eager"])
@pytest.mark.parametrize("train_on_inputs", [False, True], ids=["response-only", "train-on-inputs"])
def test_packed_loss_equals_examples_run_one_at_a_time(tiny_model_dir, attn, train_on_inputs):
    assert_packed_loss_equals_separate(tiny_model_dir, attn, train_on_inputs)


@pytest.mark.realmodel
def test_packed_loss_equals_examples_run_one_at_a_time_on_smollm2(smollm2_dir):
    """The real tokenizer (49k BPE, no BOS), chat template and model (tied head, GQA): 6
    examples in rows of 192 tokens (a 135M model's forward is the cost here)."""
    assert_packed_loss_equals_separate(smollm2_dir, "sdpa", False, "chat", n=6, max_length=192)


@pytest.mark.integration
def test_training_with_packing_writes_an_adapter(tiny_model_dir, tmp_path):
    from bioinstruct.runs.config import load_config

    data = tmp_path / "train.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in short_records() * 4))
    cfg = load_config(TrainConfig, REPO / "configs/train/tiny/lora.yaml",
                      [f"run_dir={tmp_path}", f"model.path={tiny_model_dir}", f"data.path={data}",
                       "data.packing=true", "data.max_length=512", "deepspeed=null", "optim.max_steps=3", "optim.effective_batch=4",
                       "optim.warmup_steps=1"])
    m = run(cfg)
    assert m["status"] == "complete"
    s = m["summary"]
    assert s["examples"] == 40 and s["rows"] < s["examples"] // 2 and s["steps"] == 3
    stage = tmp_path / "train" / "tiny__train"
    assert (stage / "adapter" / "adapter_model.safetensors").exists()
    rows = [json.loads(line) for line in (stage / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3] and all(r["loss"] == r["loss"] for r in rows)
