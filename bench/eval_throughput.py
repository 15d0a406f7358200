"""Evaluation throughput: `bioinstruct evaluate`'s own code path against lm-evaluation-harness's
HF backend and against the model's forward pass alone, side by side in one run.

    python bench/eval_throughput.py                          # SmolLM2-135M, MedQA-, MedMCQA-, PubMedQA-shaped, 300 each
    python bench/eval_throughput.py --quick                  # CI: tiny model, 48 questions per task, 2 rounds, seconds
    python bench/eval_throughput.py --tasks pubmedqa --questions 500 --rounds 5
    python bench/eval_throughput.py --model /models/llama2-7b --batch-size 32 --threads 16
    python bench/eval_throughput.py --gpu-7b --with-lm-eval  # LLaMA-7B shapes, random bf16 weights, on cuda
    python bench/eval_throughput.py --gpu-7b --arch tiny     # the --gpu-7b code path on CPU (gpu_check --dry-run)

Model. Default: SmolLM2-135M-Instruct, the real model (a 49,152-token BPE whose " A".." D",
" yes", " no", " maybe" are single tokens; tied LM head), from models/smollm2-135m
(`bioinstruct get-model smollm2-135m models/smollm2-135m`) or $BIOINSTRUCT_SMOLLM2; without it
(and always with --quick) a tiny LLaMA built here, with a printed note. That tiny model's
tokenizer, like LLaMA's, has the answers as single tokens (its corpus gets "Answer: X" lines;
the packaged tiny model splits " D" in two, which made lm-eval run a forward per choice and
flattered us). Questions: MedMCQA dev and PubMedQA test from ../shared/data (--data),
MedQA-layout prompts from the packaged demo questions with their options rotated (every prompt
distinct); a task whose data is absent is skipped with a note.

Rows, per task, all on the same model and questions, interleaved over --rounds after a warm-up
(best round counts):
  bioinstruct evaluate   predictions.score_shard into a fresh shard folder: what `bioinstruct
                         evaluate` runs once the model is loaded (tokenizing, planning,
                         forwards, predictions.jsonl with fsync)
  lm-eval HFLM           HFLM.loglikelihood (add_bos_token=False: bioinstruct encodes prompts
                         without special tokens, as the paper-era harness did) plus lm-eval's
                         acc / acc_norm argmax
  forward only (limit)   the model's forward passes over bioinstruct's batches, tensors built
                         beforehand: no tokenizing, no log-softmax, no writing
CPU seconds (the process's, all threads) are the figure; wall seconds on a loaded 2-core machine
mean little. Predictions (acc and acc_norm argmax) are compared with lm-eval's. Goals: identical
predictions and >= 95 % of the forward-only limit in CPU time, every task; the ratio to lm-eval
is printed (what lm-eval's own overhead costs on this model). Exit status 1 when a prediction
differs. Then generative answers (Alpaca prompts, greedy, KV cache, stop strings):
generated tokens/s at --batch-size and one prompt at a time.

--gpu-7b: a LLaMA-7B architecture (hidden 4096, MLP 11008, 32 layers, 32 heads, vocab 32000)
with random weights built in bf16 on cuda, nothing downloaded; the LLaMA-shaped tiny tokenizer
(ids < 32000 index the embedding as they are); synthetic MedQA-layout prompts of
~--context-tokens tokens with single-token " A".." D". Reports questions/s, context tokens/s
and peak memory at batch sizes --gpu-batch-sizes, with --with-lm-eval lm-eval's rate on the
same model object, and generated tokens/s at --gen-batch-sizes.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import os
import random
import shutil
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
os.environ.setdefault("BIOINSTRUCT_PROGRESS", "0")

import numpy as np  # noqa: E402
import torch  # noqa: E402

from figures import record  # noqa: E402
from real_model import note_fallback, smollm2_dir  # noqa: E402

from bioinstruct.modeling.predictions import predict, score_shard  # noqa: E402
from bioinstruct.stages.evaluate import EvaluateConfig  # noqa: E402
from bioinstruct.io.rows import read_jsonl  # noqa: E402
from bioinstruct.paths import DATA  # noqa: E402
from bioinstruct.reporting.tables import format_table  # noqa: E402
from bioinstruct.tasks import load_examples, load_task  # noqa: E402
from bioinstruct.tasks.medqa import medqa_context  # noqa: E402
from bioinstruct.tasks.reader import LETTERS  # noqa: E402

SHARED_DATA = REPO.parent / "shared" / "data"
DEMO = DATA / "demo_tasks"
GOAL_OF_LIMIT = 0.95
LLAMA_7B = dict(hidden_size=4096, intermediate_size=11008, num_hidden_layers=32, num_attention_heads=32,
                num_key_value_heads=32, vocab_size=32000)
LLAMA_TINY = dict(hidden_size=64, intermediate_size=176, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=4, vocab_size=32000)
# Lines that give a small BPE the merges LLaMA's tokenizer has for answers: one token each.
ANSWER_LINES = [f"Answer: {k}" for k in LETTERS] * 50 + [f"Answer: {w}" for w in ("yes", "no", "maybe")] * 50


# ---- questions and model ------------------------------------------------------------------

def demo_medqa(n: int) -> list[dict]:
    """The demo MedQA questions with their options rotated (4 orders each), as many distinct
    prompts as asked for."""
    task = load_task("medqa", {"root": str(DEMO), "path": "medqa/test.jsonl"})
    base = load_examples(task)
    out = []
    for i in range(n):
        ex, shift = base[i % len(base)], (i // len(base)) % 4
        texts = ex["option_texts"][shift:] + ex["option_texts"][:shift]
        question = ex["input"].split("\nA. ")[0]
        copy = i // (4 * len(base))
        if copy:  # beyond the 4 rotations: still distinct prompts
            question = f"{question} (variant {copy})"
        out.append({**ex, "id": f"{ex['id']}-r{i}", "option_texts": texts,
                    "gold": (ex["gold"] - shift) % 4, "context": medqa_context(question, texts)})
    return out


def load_questions(name: str, data: Path, n: int):
    """(task, its first n examples, where they came from), or None when the data is absent."""
    if name == "medqa":
        return load_task("medqa"), demo_medqa(n), f"MedQA layout, {n} demo prompts (options rotated)"
    try:
        task = load_task(name, {"root": str(data)})
        examples = load_examples(task)[:n]
    except Exception as e:  # noqa: BLE001 - absent or unreadable: say so and go on
        print(f"note: {name} skipped: no usable data under {data} ({type(e).__name__}: {str(e)[:100]})",
              file=sys.stderr)
        return None
    return task, examples, f"{name}, the first {len(examples)} under {data}"


def llama_shaped_tiny(folder: Path) -> str:
    """A tiny LLaMA with random weights whose tokenizer has single-token answers (ANSWER_LINES);
    random, so that it does not end its answers at once as a briefly trained one does."""
    from bioinstruct.modeling.tiny_model import TinyModelConfig, corpus_lines, make_tiny_model

    corpus = folder / "corpus.txt"
    corpus.write_text("\n".join(corpus_lines(TinyModelConfig()) + ANSWER_LINES) + "\n")
    make_tiny_model(folder / "model", TinyModelConfig(corpus=str(corpus), pretrain_steps=0))  # random weights
    return str(folder / "model")


# ---- the scorers --------------------------------------------------------------------------

def make_hflm(model, batch_size: int, device: str, dtype: str, *, tokenizer=None):
    from lm_eval.models.huggingface import HFLM

    kwargs = {} if isinstance(model, str) else {"tokenizer": tokenizer}
    return HFLM(pretrained=model, device=device, dtype=dtype, batch_size=batch_size, add_bos_token=False, **kwargs)


def lm_eval_requests(examples: list[dict]):
    from lm_eval.api.instance import Instance

    return [Instance(request_type="loglikelihood", doc={}, arguments=(ex["context"], c), idx=i)
            for ex in examples for i, c in enumerate(ex["choices"])]


def lm_eval_predictions(examples: list[dict], results: list[tuple[float, bool]]) -> list[dict]:
    """lm-eval's argmax and acc_norm argmax (ConfigurableTask.process_results) per question."""
    out, k = [], 0
    for ex in examples:
        lls = np.array([float(ll) for ll, _ in results[k:k + len(ex["choices"])]])
        k += len(ex["choices"])
        length = np.array([float(len(c[1:] if c.startswith(" ") else c)) for c in ex["choices"]])
        out.append({"id": ex["id"], "loglik": lls.tolist(), "pred": int(np.argmax(lls)),
                    "pred_norm": int(np.argmax(lls / length))})
    return out


def evaluate_path(lm, task, examples: list[dict], folder: Path) -> Path:
    """What `bioinstruct evaluate` runs for one shard once the model is loaded; tokenizing
    and planning included (the LM keeps its last plan for the next model on the same task:
    each round starts without it, as a task's first pass does)."""
    lm._plans.clear()
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    score_shard(lm, task, examples, False, EvaluateConfig(generative=False), folder)
    return folder / "predictions.jsonl"


def file_rows(path: Path, examples: list[dict]) -> list[dict]:
    """A predictions file's rows in question order (it holds them in batch order)."""
    rows = {row["id"]: row for row in read_jsonl(path)}
    return [rows[ex["id"]] for ex in examples]


def forward_only(lm, examples: list[dict]):
    """The forward passes of bioinstruct's batches over prebuilt tensors: the limit."""
    batches = lm.loglik_batches([(ex["context"], c) for ex in examples for c in ex["choices"]])
    tensors = []
    for batch in batches:
        ids = torch.full((len(batch.rows), len(batch.rows[0])), lm.tokenizer.pad_token_id, dtype=torch.long)
        for b, row in enumerate(batch.rows):
            ids[b, :len(row)] = torch.tensor(row)
        keep = torch.tensor(sorted({first + k for _, first, cont in batch.reads for k in range(len(cont))}))
        tensors.append((ids.to(lm.device), keep.to(lm.device)))

    def run():
        with torch.inference_mode():
            for ids, keep in tensors:
                lm.model(input_ids=ids, logits_to_keep=keep)
    return run


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def timed(fn, device: str):
    """(wall seconds, this process's CPU seconds, fn's result)."""
    sync(device)
    t0, c0 = time.perf_counter(), time.process_time()
    out = fn()
    sync(device)
    return time.perf_counter() - t0, time.process_time() - c0, out


def disagreement(ours: list[dict], theirs: list[dict]) -> tuple[int, int, float]:
    pred = sum(a["pred"] != b["pred"] for a, b in zip(ours, theirs))
    norm = sum(a["pred_norm"] != b["pred_norm"] for a, b in zip(ours, theirs))
    dll = max((abs(x - y) for a, b in zip(ours, theirs) for x, y in zip(a["loglik"], b["loglik"])), default=0.0)
    return pred, norm, dll


# ---- the comparison -----------------------------------------------------------------------

def compare_task(args, lm, hflm, task, examples, source, scratch: Path) -> tuple[list[list], bool]:
    """One task's table rows and whether its goals were met."""
    requests = lm_eval_requests(examples)
    scorers = {
        "bioinstruct evaluate": lambda exs: evaluate_path(lm, task, exs, scratch / task.name),
        "lm-eval HFLM": lambda exs: lm_eval_predictions(
            exs, hflm.loglikelihood(requests[:sum(len(e["choices"]) for e in exs)], disable_tqdm=True)),
    }
    single = all(len(cont) == 1 for ex in examples[:20]
                 for _, cont in lm.encode_pairs([(ex["context"], c) for c in ex["choices"]]))
    lengths = [len(ids) for ids in lm.encode_many([ex["context"] for ex in examples])]
    print(f"{source}: context tokens mean {np.mean(lengths):.0f}, max {max(lengths)}; answers "
          f"{'single tokens' if single else 'NOT single tokens'}", flush=True)
    warm = examples[:args.batch_size]
    for fn in scorers.values():
        fn(warm)
    forward_only(lm, warm)()  # warm-up on the first batch, as the scorers above
    limit = forward_only(lm, examples)
    best = {name: (float("inf"), float("inf")) for name in [*scorers, "forward only (limit)"]}
    preds = {}
    for _ in range(args.rounds):
        for name, fn in [*scorers.items(), ("forward only (limit)", lambda exs: limit())]:
            wall, cpu, out = timed(lambda: fn(examples), lm.device)
            best[name] = (min(best[name][0], wall), min(best[name][1], cpu))
            if out is not None:
                preds[name] = out
            print(f"  {task.name} {name}: {wall:.2f} s ({cpu:.2f} CPU s)", file=sys.stderr, flush=True)
    ours, theirs, floor = (best[k][1] for k in best)
    pred, norm, dll = disagreement(file_rows(preds["bioinstruct evaluate"], examples), preds["lm-eval HFLM"])
    n = len(examples)
    rows = []
    for name, (wall, cpu) in best.items():
        rows.append([task.name, name, n, f"{wall:.2f}", f"{cpu:.2f}", f"{n / cpu:,.0f}",
                     f"{theirs / cpu:.2f}x", f"{floor / cpu:.0%}",
                     f"{pred}/{norm} ({dll:.0e})" if name == "lm-eval HFLM" else ""])
    met = not (pred or norm) and floor / ours >= GOAL_OF_LIMIT
    return rows, met


def generation_rows(args, lm, examples: list[dict]) -> list[list]:
    """Generated tokens/s of the Alpaca prompts, batched and one at a time."""
    from bioinstruct.prompts import alpaca_prompt

    prompts = [alpaca_prompt(ex["instruction"], ex["input"]) for ex in examples[:args.gen_prompts]]
    rows = []
    for bs in (args.batch_size, 1):
        lm.batch_size = bs
        wall, cpu, outputs = timed(lambda: lm.generate(prompts, max_new_tokens=args.max_new_tokens), lm.device)
        tokens = sum(len(ids) for ids in lm.encode_many(outputs))
        rows.append([bs, len(prompts), tokens, f"{wall:.2f}", f"{cpu:.2f}", f"{tokens / cpu:,.0f}"])
    lm.batch_size = args.batch_size
    return rows


def compare(args, model_dir: str) -> int:
    from bioinstruct.modeling.scoring import LM

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    dtype = "bfloat16" if device.startswith("cuda") else "float32"
    lm = LM(model_dir, device=device, dtype=dtype, batch_size=args.batch_size)
    hflm = make_hflm(model_dir, args.batch_size, device, dtype)
    load, cores = os.getloadavg()[0], os.cpu_count() or 1
    print(f"model: {model_dir} ({device}, {dtype}, torch threads {torch.get_num_threads()}; {cores} CPUs, "
          f"load average {load:.1f}); batch size {args.batch_size}; {args.rounds} rounds, best counts", flush=True)
    rows, met, any_diff, first = [], True, False, None
    with tempfile.TemporaryDirectory() as scratch:
        for name in args.tasks.split(","):
            loaded = load_questions(name, Path(args.data), args.questions)
            if loaded is None:
                continue
            task_rows, task_met = compare_task(args, lm, hflm, *loaded, Path(scratch))
            rows += task_rows
            met &= task_met
            any_diff |= task_rows[1][-1].split(" ")[0] != "0/0"
            first = first or loaded[1]
    print(format_table(["task", "scorer", "questions", "wall s", "CPU s", "questions/CPU s",
                        "vs lm-eval (CPU)", "of limit (CPU)", "pred/pred_norm diffs (max |Δll|)"], rows))
    for task_rows in (rows[k:k + 3] for k in range(0, len(rows), 3)):
        print(f"{task_rows[0][0]}: bioinstruct evaluate at {task_rows[0][7]} of the forward-only limit, "
              f"{task_rows[0][6]} lm-eval's rate (CPU time)")
    print(f"goals (identical predictions, >= {GOAL_OF_LIMIT:.0%} of the forward-only limit, CPU time, "
          f"every task): {'MET' if met else 'NOT MET'}")
    if first and args.gen_prompts:
        print(format_table(["batch", "prompts", "generated tokens", "wall s", "CPU s", "tokens/CPU s"],
                           generation_rows(args, lm, first)))
    return 1 if any_diff else 0


# ---- LLaMA-7B shapes on a GPU -----------------------------------------------------------

def synthetic_medqa(tokenizer, n: int, context_tokens: int, seed: int = 0) -> list[dict]:
    """n distinct MedQA-layout prompts whose contexts are ~context_tokens tokens long."""
    from bioinstruct.modeling.tiny_model import TinyModelConfig, corpus_lines

    words = " ".join(corpus_lines(TinyModelConfig())).split()
    rng = random.Random(seed)
    out = []
    for i in range(n):
        texts = [" ".join(rng.sample(words, rng.randint(2, 6))).strip(".,;") for _ in LETTERS]
        tail = len(tokenizer(medqa_context("", texts), add_special_tokens=False)["input_ids"])
        start = rng.randrange(len(words))
        stem = " ".join((words * 2)[start:start + 2 * context_tokens])
        ids = tokenizer(stem, add_special_tokens=False)["input_ids"][:max(1, context_tokens - tail)]
        question = tokenizer.decode(ids).strip() + "?"
        gold = rng.randrange(4)
        out.append({"id": f"synthetic-{i}", "context": medqa_context(question, texts),
                    "choices": [" " + k for k in LETTERS], "gold": gold, "labels": list(LETTERS),
                    "option_texts": texts, "instruction": "", "input": question})
    return out


@contextlib.contextmanager
def prebuilt(model):
    """LM(...) loads with AutoModelForCausalLM.from_pretrained: hand it the model built here."""
    from transformers import AutoModelForCausalLM

    original = AutoModelForCausalLM.from_pretrained
    AutoModelForCausalLM.from_pretrained = lambda *a, **k: model
    try:
        yield
    finally:
        AutoModelForCausalLM.from_pretrained = original


def gpu_7b(args) -> int:
    from transformers import AutoModelForCausalLM, LlamaConfig

    from bioinstruct.modeling.scoring import LM
    from bioinstruct.modeling.tiny_model import TinyModelConfig, corpus_lines, train_tokenizer

    gpu = torch.cuda.is_available()
    if not gpu and args.arch == "7b":
        print("--gpu-7b needs CUDA (LLaMA-7B in bf16); use --arch tiny to try the code path on CPU", file=sys.stderr)
        return 2
    device = "cuda" if gpu else "cpu"
    dtype = torch.bfloat16 if gpu else torch.float32
    shape = LLAMA_7B if args.arch == "7b" else LLAMA_TINY
    tokenizer = train_tokenizer(corpus_lines(TinyModelConfig()) + ANSWER_LINES, TinyModelConfig().vocab_size)
    assert len(tokenizer) <= shape["vocab_size"]  # ids index the 32000-row embedding as they are
    config = LlamaConfig(**shape, max_position_embeddings=4096, rms_norm_eps=1e-5, hidden_act="silu",
                         tie_word_embeddings=False, bos_token_id=tokenizer.bos_token_id,
                         eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    torch.manual_seed(0)
    t0 = time.perf_counter()
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(config, dtype=dtype, attn_implementation="sdpa").eval()
    n_params = sum(p.numel() for p in model.parameters())
    name = torch.cuda.get_device_name() if gpu else "CPU"
    print(f"device: {name}; LLaMA-{args.arch} shapes, {n_params / 1e6:,.1f} M parameters, random {dtype} "
          f"weights (built in {time.perf_counter() - t0:.0f} s); tokenizer: tiny byte-level BPE, vocab "
          f"{len(tokenizer)} (< {shape['vocab_size']}: ids used as they are)", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        tokenizer.save_pretrained(tmp)
        with prebuilt(model):
            lm = LM(tmp, device=device, batch_size=16)
        examples = synthetic_medqa(lm.tokenizer, args.questions, args.context_tokens)
    lengths = [len(lm.encode(ex["context"])) for ex in examples]
    single = all(len(cont) == 1 for ex in examples[:20]
                 for _, cont in lm.encode_pairs([(ex["context"], c) for c in ex["choices"]]))
    print(f"{len(examples)} synthetic MedQA-layout questions, context tokens mean {np.mean(lengths):.0f} "
          f"(min {min(lengths)}, max {max(lengths)}), choices ' A'..' D' "
          f"{'single tokens' if single else 'NOT single tokens'}", flush=True)
    task = load_task("medqa")
    cfg = EvaluateConfig(generative=False)
    requests = lm_eval_requests(examples) if args.with_lm_eval else None
    rows = []
    for bs in [int(b) for b in args.gpu_batch_sizes.split(",")]:
        lm.batch_size = bs
        result = {}
        try:
            predict(lm, task, examples[:bs], False, cfg)  # warm-up
            if gpu:
                torch.cuda.reset_peak_memory_stats()
            seconds, _, ours = timed(lambda: predict(lm, task, examples, False, cfg), device)
            result["ours"] = seconds
            result["mem"] = torch.cuda.max_memory_allocated() / 2**30 if gpu else None
            if args.with_lm_eval:
                hflm = make_hflm(model, bs, device, "bfloat16" if gpu else "float32", tokenizer=lm.tokenizer)
                hflm.loglikelihood(requests[:4 * bs], disable_tqdm=True)
                seconds, _, res = timed(lambda: hflm.loglikelihood(requests, disable_tqdm=True), device)
                result["theirs"] = seconds
                result["diff"] = disagreement(ours, lm_eval_predictions(examples, res))
                del hflm
        except torch.cuda.OutOfMemoryError:
            result["error"] = "OOM"
        gc.collect()
        if gpu:
            torch.cuda.empty_cache()
        if "error" in result:
            rows.append([bs, result["error"]] + [""] * (5 if args.with_lm_eval else 2))
            continue
        n = len(examples)
        row = [bs, f"{n / result['ours']:,.1f}", f"{sum(lengths) / result['ours']:,.0f}",
               f"{result['mem']:.1f} GiB" if result["mem"] is not None else "n/a"]
        if args.with_lm_eval:
            pred, norm, dll = result["diff"]
            row += [f"{n / result['theirs']:,.1f}", f"{result['theirs'] / result['ours']:.2f}x",
                    f"{pred}/{norm} ({dll:.0e})"]
        rows.append(row)
        setting = f"LLaMA-{args.arch}, {lengths and round(np.mean(lengths))}-token MedQA, batch {bs}"
        record("eval_throughput", setting, "bioinstruct questions/s", f"{n / result['ours']:,.1f}")
        if result["mem"] is not None:
            record("eval_throughput", setting, "peak GPU memory", f"{result['mem']:.1f} GiB")
        if args.with_lm_eval:
            record("eval_throughput", setting, "lm-eval questions/s", f"{n / result['theirs']:,.1f}")
            record("eval_throughput", setting, "pred/pred_norm diffs vs lm-eval", "/".join(map(str, result["diff"][:2])))
        print(f"  batch {bs}: {n / result['ours']:,.1f} questions/s", file=sys.stderr, flush=True)
    header = ["batch", "bioinstruct q/s", "context tokens/s", "peak GPU memory" if gpu else "memory"]
    if args.with_lm_eval:
        header += ["lm-eval q/s", "vs lm-eval", "pred/pred_norm diffs (max |Δll|)"]
    print(format_table(header, rows))
    print(format_table(["batch", "prompts", "generated tokens", "wall s", "generated tokens/s"],
                       gpu_generation(args, lm, examples, device)))
    return 0


def gpu_generation(args, lm, examples: list[dict], device: str) -> list[list]:
    """Generated tokens/s at each of --gen-batch-sizes: MedQA-layout prompts, greedy, KV cache."""
    rows = []
    for bs in [int(b) for b in args.gen_batch_sizes.split(",")]:
        lm.batch_size = bs
        prompts = [ex["context"] for ex in examples[:2 * bs]]
        try:
            lm.generate(prompts[:bs], max_new_tokens=4)  # warm-up
            wall, _, outputs = timed(lambda: lm.generate(prompts, max_new_tokens=args.max_new_tokens), device)
        except torch.cuda.OutOfMemoryError:
            rows.append([bs, "OOM", "", "", ""])
            continue
        tokens = sum(len(ids) for ids in lm.encode_many(outputs))
        rows.append([bs, len(prompts), tokens, f"{wall:.2f}", f"{tokens / wall:,.0f}"])
        record("eval_throughput", f"LLaMA-{args.arch}, generate, batch {bs}", "generated tokens/s", f"{tokens / wall:,.0f}")
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", metavar="DIR", help="a causal LM directory (default: SmolLM2-135M from "
                        "models/smollm2-135m or $BIOINSTRUCT_SMOLLM2, else a LLaMA-shaped tiny one)")
    parser.add_argument("--tasks", default="medqa,medmcqa,pubmedqa", help="comma-separated: medqa, medmcqa, pubmedqa")
    parser.add_argument("--data", metavar="DIR", default=str(SHARED_DATA),
                        help="data root (medmcqa/dev.json, pubmedqa/...); default ../shared/data")
    parser.add_argument("--questions", type=int, default=300, help="per task")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=3, help="timed rounds per row (interleaved); best counts")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (one: steadiest CPU times)")
    parser.add_argument("--device", help="cpu or cuda (default: cuda if available)")
    parser.add_argument("--gen-prompts", type=int, default=32, help="prompts for the generation table (0: none)")
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--quick", action="store_true",
                        help="the tiny model (unless --model), 48 questions per task, 2 rounds, 8 prompts (CI)")
    parser.add_argument("--gpu-7b", action="store_true", help="LLaMA-7B shapes, random bf16 weights, on cuda")
    parser.add_argument("--arch", choices=["7b", "tiny"], default="7b", help="--gpu-7b's architecture")
    parser.add_argument("--gpu-batch-sizes", default="16,32,64")
    parser.add_argument("--gen-batch-sizes", default="32,64", help="--gpu-7b's generation batch sizes")
    parser.add_argument("--context-tokens", type=int, default=200, help="--gpu-7b's context length")
    parser.add_argument("--with-lm-eval", action="store_true", help="--gpu-7b: lm-eval's rate at each batch size too")
    args = parser.parse_args()
    if args.quick:
        args.questions, args.rounds, args.gen_prompts = min(args.questions, 48), 2, min(args.gen_prompts, 8)
    torch.set_num_threads(args.threads)
    if args.gpu_7b:
        if args.quick:
            args.gpu_batch_sizes, args.gen_batch_sizes, args.max_new_tokens = "4,8", "4,8", 8
        return gpu_7b(args)
    model = args.model or (None if args.quick else smollm2_dir())
    if model:
        return compare(args, str(model))
    if not args.quick:
        note_fallback("running on a LLaMA-shaped tiny model with random weights")
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        model = llama_shaped_tiny(Path(tmp))
        print(f"LLaMA-shaped tiny model built in {time.perf_counter() - t0:.1f} s", file=sys.stderr)
        return compare(args, model)


if __name__ == "__main__":
    sys.exit(main())
