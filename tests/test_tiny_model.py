import json

import pytest
import torch
from safetensors.torch import load_file

from bioinstruct.runs.rundir import read_manifest
from bioinstruct.modeling.tiny_model import TinyModelConfig, make_tiny_model

pytestmark = pytest.mark.integration


def test_saves_reloads_and_gives_identical_logits(tiny_model_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaForCausalLM

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    assert isinstance(model, LlamaForCausalLM)
    assert (tok.bos_token, tok.eos_token, tok.pad_token) == ("<s>", "</s>", "<pad>")
    assert len({tok.bos_token_id, tok.eos_token_id, tok.pad_token_id}) == 3
    enc = tok(["Metformin lowers glucose.", "Which drug treats asthma?"], return_tensors="pt",
              padding=True)
    assert enc["input_ids"][0, 0].item() == tok.bos_token_id
    with torch.no_grad():
        a = model(**enc).logits
        again = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
        b = again(**enc).logits
    assert torch.equal(a, b)
    assert tok.decode(enc["input_ids"][0], skip_special_tokens=True) == "Metformin lowers glucose."


def test_pretraining_learned_something(tiny_model_dir):
    losses = json.loads((tiny_model_dir / "pretrain_log.json").read_text())["loss"]
    assert len(losses) == 60
    # From uniform (ln 1024 = 6.9) to well below it in 60 steps.
    assert sum(losses[-10:]) / 10 < 0.7 * sum(losses[:10]) / 10


def test_deterministic_for_a_seed(tmp_path, tiny_model_dir):
    cfg = TinyModelConfig(pretrain_steps=60)
    make_tiny_model(tmp_path / "again", cfg)
    ref = load_file(tiny_model_dir / "model.safetensors")
    again = load_file(tmp_path / "again" / "model.safetensors")
    assert ref.keys() == again.keys()
    assert all(torch.equal(ref[k], again[k]) for k in ref)
    assert (tmp_path / "again" / "tokenizer.json").read_bytes() == (tiny_model_dir / "tokenizer.json").read_bytes()

    make_tiny_model(tmp_path / "other", TinyModelConfig(pretrain_steps=60, seed=1))
    other = load_file(tmp_path / "other" / "model.safetensors")
    assert not torch.equal(ref["model.embed_tokens.weight"], other["model.embed_tokens.weight"])


def test_complete_model_is_not_rebuilt(tiny_model_dir):
    before = (tiny_model_dir / "model.safetensors").stat().st_mtime_ns
    m = make_tiny_model(tiny_model_dir, TinyModelConfig(pretrain_steps=60))
    assert m["status"] == "complete" and m["attempt"] == 1
    assert (tiny_model_dir / "model.safetensors").stat().st_mtime_ns == before
    assert read_manifest(tiny_model_dir)["summary"]["parameters"] > 100_000
