"""One dtype resolver for train, evaluate and doctor (issue 25): bf16 only where the GPU computes
it natively, fp16 with loss scaling on older GPUs, float32 on CPU. The GPU is faked the way real
torch answers on it: a V100 (sm_70) says is_bf16_supported() True, counting emulation."""

import types

import pytest
import torch

from bioinstruct.modeling.precision import resolve_dtype
from bioinstruct.stages.train import TrainConfig, mixed_precision

V100 = ("Tesla V100-SXM2-32GB", (7, 0))
A100 = ("NVIDIA A100-SXM4-80GB", (8, 0))


@pytest.fixture
def gpu(monkeypatch):
    def fake(name, capability):
        major, minor = capability
        monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
        monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
        monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: name)
        monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (major, minor))
        monkeypatch.setattr(torch.cuda, "get_device_properties", lambda device=None: types.SimpleNamespace(
            name=name, major=major, minor=minor, total_memory=32 * 2**30))
        # torch's answer on a V100 or T4 too: emulation counts (including_emulation=True by default)
        monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: True)
    return fake


@pytest.mark.integration
@pytest.mark.parametrize("card, dtype", [(V100, "float16"), (A100, "bfloat16")], ids=["sm_70", "sm_80"])
def test_train_and_evaluate_resolve_by_compute_capability_and_deepspeed_agrees(gpu, card, dtype, monkeypatch,
                                                                                tiny_model_dir, tmp_path):
    from transformers import AutoModelForCausalLM, TrainingArguments

    from bioinstruct.modeling.scoring import LM

    gpu(*card)
    precision, ds, amp = mixed_precision(TrainConfig(deepspeed="configs/deepspeed/zero2.json"), world_size=1)
    assert precision.dtype == dtype and amp == {"bf16": dtype == "bfloat16", "fp16": dtype == "float16"}
    assert (ds["bf16"]["enabled"], ds["fp16"]["enabled"]) == (amp["bf16"], amp["fp16"])
    if dtype == "float16":  # loss_scale 0, DeepSpeed's default: the dynamic loss scale fp16 needs
        assert ds["fp16"].get("loss_scale", 0) == 0
    # evaluate: LM loads the weights in the dtype resolved for its device (cuda here)
    loaded = {}

    class Loaded(Exception):
        pass

    def from_pretrained(path, dtype=None, **kwargs):
        loaded["dtype"] = dtype
        raise Loaded

    monkeypatch.setattr(AutoModelForCausalLM, "from_pretrained", from_pretrained)
    with pytest.raises(Loaded):
        LM(str(tiny_model_dir))
    assert loaded["dtype"] == getattr(torch, dtype)
    monkeypatch.undo()  # the Trainer's own check, on the real (CPU) machine: the two configs agree
    args = TrainingArguments(output_dir=str(tmp_path), use_cpu=True, deepspeed=ds, **amp)
    assert (args.bf16, args.fp16) == (amp["bf16"], amp["fp16"])
    assert [m for m in args.hf_deepspeed_config.mismatches if "fp16" in m or "bf16" in m] == []


@pytest.mark.unit
def test_the_trainer_refuses_a_deepspeed_config_that_disagrees(tmp_path):
    """The Trainer's check that the test above passes is real: fp16 in DeepSpeed's config without
    the Trainer's flag is a mismatch (raised once the model is there)."""
    from transformers import TrainingArguments

    _, ds, _ = mixed_precision(TrainConfig(deepspeed="configs/deepspeed/zero2.json"), world_size=1)
    ds = {**ds, "fp16": {**ds["fp16"], "enabled": True}}
    args = TrainingArguments(output_dir=str(tmp_path), use_cpu=True, deepspeed=ds)
    assert any("fp16.enabled" in m for m in args.hf_deepspeed_config.mismatches)


@pytest.mark.unit
def test_cpu_resolves_float32_and_an_explicit_choice_is_kept():
    assert torch.cuda.is_available() is False
    assert resolve_dtype("auto").dtype == "float32"
    assert mixed_precision(TrainConfig(deepspeed=None), world_size=1)[2] == {"bf16": False, "fp16": False}
    assert resolve_dtype("bfloat16").dtype == "bfloat16"


@pytest.mark.unit
def test_explicit_bf16_on_an_older_gpu_warns_naming_the_emulation(gpu, capsys):
    gpu(*V100)
    assert resolve_dtype("bfloat16").dtype == "bfloat16"
    err = capsys.readouterr().err
    assert "warning: dtype=bfloat16 on Tesla V100-SXM2-32GB (sm_70)" in err and "emulates" in err
    gpu(*A100)
    resolve_dtype("bfloat16")
    assert capsys.readouterr().err == ""


@pytest.mark.unit
@pytest.mark.parametrize("card, says", [
    (V100, "float16: Tesla V100-SXM2-32GB (sm_70) has no native bf16"),
    (A100, "bfloat16: NVIDIA A100-SXM4-80GB (sm_80) computes bf16 natively"),
    (None, "float32: no GPU visible"),
], ids=["sm_70", "sm_80", "cpu"])
def test_doctor_says_which_dtype_it_would_pick_and_why(gpu, card, says, monkeypatch, capsys):
    import argparse

    from bioinstruct import doctor

    if card:
        gpu(*card)
    monkeypatch.setattr(doctor, "_deepspeed_row", lambda: ("DeepSpeed accelerator", "not asked here"))
    assert doctor.main(argparse.Namespace(key_env="OPENAI_API_KEY")) == 0
    line = next(x for x in capsys.readouterr().out.splitlines() if x.startswith("dtype=auto"))
    assert says in line, line
    assert "bf16: yes" not in line
