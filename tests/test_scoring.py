"""The batched scorer: log-likelihoods equal one-at-a-time forwards, batched generation equals
one prompt at a time, and the base model is reachable without reloading."""

import pytest
import torch

from bioinstruct.metrics import extract_choice, macro_f1, normalize_item, prf, split_items
from bioinstruct.scoring import LM

REQUESTS = [("Question: Which drug treats diabetes?\nA. metformin\nB. aspirin\nAnswer:", c) for c in (" A", " B")]
REQUESTS += [("Abstract: Metformin lowers glucose.\nQuestion: Does metformin lower glucose?\nAnswer:", c)
             for c in (" yes", " no", " maybe")]
REQUESTS += [("Name a statin:", " atorvastatin"), ("The patient takes", " metformin twice daily ")]


@pytest.fixture(scope="module")
def adapter(tiny_model_dir, tmp_path_factory):
    """A LoRA adapter with random (non-zero) weights, so it changes the model's outputs."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer
    torch.manual_seed(0)
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_model_dir),
                           LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False))
    out = tmp_path_factory.mktemp("adapter")
    model.save_pretrained(out)
    AutoTokenizer.from_pretrained(tiny_model_dir).save_pretrained(out)
    return out


def one_at_a_time(lm, context, continuation):
    ctx, cont = lm._pair(context, continuation)
    with torch.no_grad():
        logprobs = torch.log_softmax(lm.model(torch.tensor([ctx + cont])).logits.float(), -1)[0]
    span = logprobs[len(ctx) - 1:len(ctx) - 1 + len(cont)]
    return float(span.gather(1, torch.tensor(cont)[:, None]).sum()), bool((span.argmax(-1) == torch.tensor(cont)).all())


@pytest.mark.integration
def test_loglikelihoods_match_single_forwards_with_and_without_adapter(tiny_model_dir, adapter):
    lm = LM(str(tiny_model_dir), str(adapter), batch_size=3)
    tuned = lm.loglikelihoods(REQUESTS)
    for (c, x), (score, greedy) in zip(REQUESTS, tuned):
        ref_score, ref_greedy = one_at_a_time(lm, c, x)
        assert score == pytest.approx(ref_score, abs=1e-4) and greedy == ref_greedy
    with lm.base():
        base = lm.loglikelihoods(REQUESTS)
        for (c, x), (score, _) in zip(REQUESTS, base):
            assert score == pytest.approx(one_at_a_time(lm, c, x)[0], abs=1e-4)
    assert [s for s, _ in base] != [s for s, _ in tuned]
    plain = LM(str(tiny_model_dir), batch_size=16).loglikelihoods(REQUESTS)
    assert [s for s, _ in plain] == pytest.approx([s for s, _ in base], abs=1e-4)


@pytest.mark.integration
def test_batched_left_padded_generation_equals_one_at_a_time(tiny_model_dir, adapter):
    lm = LM(str(tiny_model_dir), str(adapter), batch_size=4)
    prompts = ["Name a statin.", "Below is an instruction that describes a task.\n\n### Instruction:\nList two "
               "loop diuretics.\n\n### Response:\n", "Hypertension is", "The patient denies fever"]
    batched = lm.generate(prompts, max_new_tokens=10)
    assert batched == [lm.generate([p], max_new_tokens=10)[0] for p in prompts]


@pytest.mark.unit
@pytest.mark.parametrize("text, pred", [("B", 1), ("B. aspirin", 1), ("(c)", 2), ("The answer is D.", 3),
                                        ("Answer: A", 0), ("metformin is correct", 0), ("no idea", None),
                                        ("metformin or aspirin", None)])
def test_extract_choice(text, pred):
    assert extract_choice(text, ["A", "B", "C", "D"], ["metformin", "aspirin", "insulin", "diet"]) == pred


@pytest.mark.unit
def test_extract_yes_no_maybe():
    assert extract_choice("Yes, it does.", ["yes", "no", "maybe"]) == 0
    assert extract_choice("maybe", ["yes", "no", "maybe"]) == 2


@pytest.mark.unit
def test_item_metrics():
    assert split_items("- Metformin\n- lisinopril, aspirin; 1) atorvastatin") == \
        ["Metformin", "lisinopril", "aspirin", "atorvastatin"]
    assert normalize_item("  Metformin-XR, ") == "metformin xr"  # one rule for gold and predictions
    scores = prf([["metformin", "aspirin"], ["insulin"]], [["Metformin", "lisinopril"], ["insulin"]])
    assert scores == pytest.approx({"precision": 2 / 3, "recall": 2 / 3, "f1": 2 / 3})
    assert macro_f1([0, 1, 2, 0], [0, 1, 1, None], [0, 1, 2]) == pytest.approx((2 / 3 + 2 / 3 + 0) / 3)
