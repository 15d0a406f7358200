"""prompt.format (alpaca | chat): training examples and generative answers in either format,
the loss on the response only; the adapter records its format and evaluate prompts with it,
refusing another. On SmolLM2-135M-Instruct's own ChatML template (realmodel tier)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bioinstruct.cli import main
from bioinstruct.errors import ConfigError
from bioinstruct.modeling.examples import encode, tokenize
from bioinstruct.modeling.scoring import STOP_STRINGS
from bioinstruct.prompts import alpaca_prompt, record_format, resolve_format, trained_format
from bioinstruct.stages.generate import load_seeds
from bioinstruct.stages.train import DataConfig

REPO = Path(__file__).resolve().parent.parent


def seed_records() -> list[dict]:
    """Every instance of every packaged seed task: real clinical instructions, inputs and outputs."""
    return [{"instruction": s["instruction"], "input": i["input"], "output": i["output"]}
            for s in load_seeds(None) for i in s["instances"]]


@pytest.mark.unit
def test_the_adapter_format_decides_and_another_is_refused_naming_both(tmp_path):
    assert trained_format(tmp_path) == "alpaca"  # an adapter from before formats
    assert resolve_format("auto", None) == "alpaca" and resolve_format("chat", None) == "chat"
    record_format(tmp_path, "chat")
    assert resolve_format("auto", str(tmp_path)) == resolve_format("chat", str(tmp_path)) == "chat"
    with pytest.raises(ConfigError, match=r"prompt.format: alpaca, but the adapter .* was trained with "
                                          r"prompt.format=chat"):
        resolve_format("alpaca", str(tmp_path))


@pytest.mark.integration
def test_alpaca_examples_are_the_papers_and_chat_needs_a_template(tiny_model_dir):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    record = seed_records()[0]
    prompt, response = encode(record, tokenizer, "alpaca")
    whole = tokenizer(alpaca_prompt(record["instruction"], record["input"]) + record["output"])["input_ids"]
    assert prompt + response == whole + [tokenizer.eos_token_id] and prompt[0] == tokenizer.bos_token_id
    with pytest.raises(ConfigError, match="has no chat template; use prompt.format=alpaca"):
        tokenize([record], tokenizer, DataConfig(), "chat")


@pytest.mark.realmodel
def test_chat_examples_split_the_template_at_the_answer_without_merging_a_token(smollm2_dir, short_instructions):
    """For every packaged seed task and every Self-Instruct seed (255 real records, some with
    inputs and outputs that start or end with spaces, newlines or digits): the prompt's tokens
    then the response's are exactly the tokens
    of the template applied to the whole conversation; the prompt's are the template's
    generation prompt; the labels mask exactly the prompt; the response ends the turn."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(smollm2_dir)
    records = seed_records() + [json.loads(line) for line in short_instructions.read_text().splitlines()]
    examples, dropped = tokenize(records, tokenizer, DataConfig(max_length=4096), "chat")
    assert not dropped and len(examples) == len(records) == 80 + 175
    end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    for record, example in zip(records, examples):
        user = {"role": "user", "content": f"{record['instruction']}\n\n{record['input']}" if record["input"]
                else record["instruction"]}
        whole = tokenizer.apply_chat_template([user, {"role": "assistant", "content": record["output"]}],
                                              tokenize=True, return_dict=True)["input_ids"]
        prompt = tokenizer.apply_chat_template([user], tokenize=True, add_generation_prompt=True,
                                               return_dict=True)["input_ids"]
        n = len(prompt)
        assert example["input_ids"] == whole, record["instruction"][:60]
        assert example["labels"] == [-100] * n + whole[n:]
        assert tokenizer.decode(whole[n:], skip_special_tokens=True).strip() == record["output"].strip()
        assert end in whole[n:] and tokenizer.decode(prompt).endswith("<|im_start|>assistant\n")


def reference_answers(model_dir: Path, adapter: Path, fmt: str, examples: list[dict]) -> list[str]:
    """Greedy answers one question at a time with plain transformers + peft: the chat template
    through apply_chat_template, alpaca's prompt through the tokenizer (with its BOS, if any)."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(adapter)
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(model_dir), adapter).eval()
    answers = []
    for ex in examples:
        if fmt == "chat":
            user = f"{ex['instruction']}\n\n{ex['input']}" if ex["input"] else ex["instruction"]
            ids = tokenizer.apply_chat_template([{"role": "user", "content": user}],
                                                add_generation_prompt=True, return_tensors="pt",
                                                return_dict=True)["input_ids"]
        else:
            ids = tokenizer(alpaca_prompt(ex["instruction"], ex["input"]), return_tensors="pt")["input_ids"]
        with torch.no_grad():
            out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=16,
                                 do_sample=False, pad_token_id=tokenizer.pad_token_id)
        text = tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True)
        answers.append(text[:min([k for k in map(text.find, STOP_STRINGS) if k >= 0], default=len(text))].strip())
    return answers


@pytest.mark.realmodel
@pytest.mark.parametrize("fmt", ["alpaca", "chat"])
def test_a_tuned_model_answers_in_the_format_it_was_trained_with(smollm2_dir, short_instructions, shared_data,
                                                                  tmp_path, capsys, fmt):
    """LoRA on SmolLM2 for 2 steps in ``fmt``, then evaluate's generative answers to MedMCQA dev
    questions: each is the tuned model's greedy answer to that format's prompt, the unparseable
    rate is reported, and evaluating in the other format is refused, naming both."""
    from bioinstruct.tasks import load_examples, load_task

    run_dir = tmp_path / "run"
    assert main(["train", "--config", str(REPO / "configs/train/tiny/lora.yaml"), f"run_dir={run_dir}",
                 f"model.path={smollm2_dir}", "model.name=smollm2", f"data.path={short_instructions}",
                 "data.max_length=64", "optim.max_steps=2", "optim.effective_batch=2", "optim.micro_batch=1",
                 "deepspeed=null", f"prompt.format={fmt}"]) == 0
    adapter = run_dir / "train" / "smollm2__train" / "adapter"
    assert trained_format(adapter) == fmt
    capsys.readouterr()
    evaluate = ["evaluate", "--model", str(smollm2_dir), "--adapter", str(adapter), "--tasks", "medmcqa",
                "--out", str(tmp_path / "eval"), "limit=4", "compare_base=false", "batch_size=1",
                f"task_data.medmcqa.root={shared_data}"]
    assert main(evaluate) == 0
    table = capsys.readouterr().out
    results = json.loads((tmp_path / "eval" / "smollm2__train" / "medmcqa" / "results.json").read_text())
    rows = [json.loads(line) for line in
            (tmp_path / "eval" / "smollm2__train" / "medmcqa" / "shard-1-of-1" / "predictions.jsonl").read_text().splitlines()]
    unparseable = results["metrics"]["unparseable_rate"]
    assert unparseable["n"] == len(rows) == 4 and "generative_acc" in results["metrics"]
    assert unparseable["value"] == sum(r["gen_pred"] is None for r in rows) / 4
    assert "unparseable_rate" in table and "generative_acc" in table
    with capsys.disabled():  # the figures, in the test log
        print(f"\nSmolLM2 + LoRA ({fmt}), 4 MedMCQA questions: generative acc "
              f"{results['metrics']['generative_acc']['value']:.2f}, unparseable {unparseable['value']:.2f}; "
              f"answers {[r['generated'] for r in rows]}")

    examples = load_examples(load_task("medmcqa", {"root": str(shared_data)}))[:4]
    by_id = {r["id"]: r["generated"] for r in rows}
    assert [by_id[ex["id"]] for ex in examples] == reference_answers(smollm2_dir, adapter, fmt, examples)

    other = "alpaca" if fmt == "chat" else "chat"
    assert main([*evaluate, f"prompt.format={other}", "--out", str(tmp_path / "other")]) == 2
    err = capsys.readouterr().err
    assert f"prompt.format: {other}, but the adapter" in err and f"prompt.format={fmt}" in err
    assert not (tmp_path / "other").exists()
