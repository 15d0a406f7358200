"""The batched scorer: log-likelihoods equal one-at-a-time full forwards (shared rows, logits
kept only where read, no attention mask, left truncation, empty contexts as lm-eval scores
them), batched generation equals one prompt at a time, and the base model is reachable
without reloading."""

import pytest
import torch

from bioinstruct.modeling.metrics import extract_choice, macro_f1, normalize_item, prf, split_items
from bioinstruct.modeling.scoring import LM, _rows

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


def reference_pair(lm, context, continuation):
    """lm-eval's HFLM._encode_pair, one request at a time."""
    ctx = lm.encode(context.rstrip())
    return ctx, lm.encode(context + continuation)[len(ctx):]


def full_forward(lm, ctx, cont):
    """One request alone: a full forward and a full-vocabulary log-softmax at every position."""
    tokens = (ctx + cont)[-(lm.max_length + 1):]
    with torch.no_grad():
        logprobs = torch.log_softmax(lm.model(torch.tensor([tokens[:-1]])).logits.float(), -1)[0]
    span, target = logprobs[-len(cont):], torch.tensor(cont)
    return float(span.gather(1, target[:, None]).sum()), bool((span.argmax(-1) == target).all())


def one_at_a_time(lm, context, continuation):
    return full_forward(lm, *reference_pair(lm, context, continuation))


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


@pytest.mark.unit
def test_rows_serve_each_window_from_the_longest_window_it_begins():
    windows = {0: (1, 2), 1: (1, 2, 3), 2: (1, 2, 4), 3: (1,), 4: (5,), 5: (1, 2, 3)}
    rows = {row: sorted(keys) for row, keys in _rows(windows).items()}
    assert rows == {(1, 2, 3): [0, 1, 3, 5], (1, 2, 4): [2], (5,): [4]}


@pytest.mark.integration
@pytest.mark.parametrize("max_length", [None, 20])  # 20: contexts are cut from the left
def test_shared_rows_and_kept_logits_equal_full_forwards(tiny_model_dir, max_length):
    lm = LM(str(tiny_model_dir), batch_size=3, max_length=max_length)
    context = REQUESTS[0][0]
    # Choices that share a row (one token; several tokens whose first is another choice's), and
    # ones that do not; an empty continuation (certain) and an empty context (BOS).
    requests = REQUESTS + [(context, " metformin"), (context, " metformin twice"), (context + " ", "A"),
                           ("Name a statin:", ""), ("", " metformin")]
    pairs = lm.encode_pairs(requests)
    assert pairs[:-1] == [reference_pair(lm, c, x) for c, x in requests[:-1]]
    for (ctx, cont), (score, greedy) in zip(pairs, lm.loglikelihoods(requests)):
        ref_score, ref_greedy = full_forward(lm, ctx, cont) if cont else (0.0, True)
        assert score == pytest.approx(ref_score, abs=1e-5) and greedy == ref_greedy


@pytest.mark.integration
def test_empty_context_scores_as_lm_eval_does(tiny_model_dir):
    """lm-eval conditions an empty context on the prefix token (BOS, else EOS), or on the
    continuation's first token when that is the prefix token; a whitespace-only context, which
    lm-eval refuses, is an empty context followed by that whitespace."""
    huggingface = pytest.importorskip("lm_eval.models.huggingface")
    from lm_eval.api.instance import Instance

    lm = LM(str(tiny_model_dir), device="cpu", dtype="float32")
    bos = lm.tokenizer.bos_token_id
    requests = [("", " metformin"), ("", "<s> aspirin"), ("", " A")]
    assert lm.encode_pairs(requests + [("  ", "metformin")]) == [
        ([bos], lm.encode(" metformin")), ([bos], lm.encode(" aspirin")), ([bos], lm.encode(" A")),
        ([bos], lm.encode("  metformin"))]
    hflm = huggingface.HFLM(pretrained=str(tiny_model_dir), device="cpu", dtype="float32", add_bos_token=False)
    theirs = hflm.loglikelihood([Instance(request_type="loglikelihood", doc={}, arguments=r, idx=0)
                                 for r in requests], disable_tqdm=True)
    for (score, greedy), (ref_score, ref_greedy) in zip(lm.loglikelihoods(requests), theirs):
        assert score == pytest.approx(ref_score, abs=1e-5) and greedy == ref_greedy


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
    assert {k: scores[k] for k in ("precision", "recall", "f1")} == pytest.approx(
        {"precision": 2 / 3, "recall": 2 / 3, "f1": 2 / 3})
    assert macro_f1([0, 1, 2, 0], [0, 1, 1, None], [0, 1, 2]) == pytest.approx((2 / 3 + 2 / 3 + 0) / 3)


@pytest.mark.unit
def test_bootstrap_intervals_are_the_resamples_percentiles():
    """The vectorised intervals equal the textbook loop over the same resamples: the mean's,
    and micro F1's from per-example counts (F1 = 2tp / (2tp + fp + fn))."""
    import numpy as np

    from bioinstruct.modeling import metrics as M

    rng = np.random.default_rng(7)
    values = rng.integers(0, 2, size=300).astype(float)
    idx = np.random.default_rng(0).integers(0, len(values), size=(M.BOOTSTRAP, len(values)))
    means = sorted(values[row].mean() for row in idx)
    assert M.bootstrap_ci(values) == pytest.approx((means[25], means[975]))
    assert means[25] < values.mean() < means[975]

    pred = [[f"d{rng.integers(6)}" for _ in range(rng.integers(0, 4))] for _ in range(200)]
    gold = [[f"d{rng.integers(6)}" for _ in range(rng.integers(1, 4))] for _ in range(200)]
    idx = np.random.default_rng(0).integers(0, len(pred), size=(M.BOOTSTRAP, len(pred)))
    f1s = sorted(prf([pred[i] for i in row], [gold[i] for i in row])["f1"] for row in idx[:, :, None].squeeze(2))
    assert prf(pred, gold)["f1_ci95"] == pytest.approx((f1s[25], f1s[975]))


@pytest.mark.integration
def test_batched_encoding_equals_the_tokenizers_own(tiny_model_dir):
    """encode_many calls a fast tokenizer's backend directly (no offsets): the same ids as the
    tokenizer's call, special-token text, spaces and non-ASCII included."""
    lm = LM(str(tiny_model_dir), batch_size=4)
    texts = [c + x for c, x in REQUESTS] + ["", " ", "<s> aspirin </s>", "naïve T-cells\r\n  ß-blocker", "A" * 3000]
    assert lm.encode_many(texts) == lm.tokenizer(texts, add_special_tokens=False)["input_ids"]


@pytest.mark.unit
def test_generation_is_cut_at_the_next_alpaca_header():
    from bioinstruct.modeling.scoring import _cut
    assert _cut("B. aspirin\n\n### Instruction:\nName a statin") == "B. aspirin\n\n"
    assert _cut("Metformin.### Response:") == "Metformin."
    assert _cut("## Heading\nno header here") == "## Heading\nno header here"
