"""Multiple-choice scoring throughput: bioinstruct's scorer against lm-evaluation-harness's HF backend.

    python bench/eval_throughput.py --quick                  # tiny model in a temp dir, 48 questions, seconds (CI)
    python bench/eval_throughput.py                          # tiny model, 300 MedMCQA dev questions, 3 rounds
    python bench/eval_throughput.py --model /models/llama2-7b --questions 500 --batch-size 32
    python bench/eval_throughput.py --task pubmedqa --questions 100 --threads 1
    python bench/eval_throughput.py --gpu-7b                 # LLaMA-7B shapes, random bf16 weights, batch 16/32/64
    python bench/eval_throughput.py --gpu-7b --with-lm-eval  # ... and lm-eval's backend on the same model object
    python bench/eval_throughput.py --gpu-7b --arch tiny     # the --gpu-7b code path with a tiny LLaMA (CPU is fine)

Comparison (default): the same model and the same questions, in one run, through
bioinstruct.evaluate.predict (bioinstruct.scoring.LM.loglikelihoods) and through lm-eval's
HFLM.loglikelihood, each timed from the (context, continuation) strings to log-likelihoods,
tokenization included (lm-eval's task building and metrics are not timed). Questions:
MedMCQA dev from ../shared/data (or --data DIR, --task medqa|medmcqa|pubmedqa), the first
--questions of them; without the data, the demo MedQA questions (bioinstruct/data/demo_tasks)
with their options rotated, so that every prompt is distinct. The model: --model DIR, or a
tiny LLaMA built into a temporary folder (make_tiny_model, pretrain_steps=20). Rounds are
interleaved (bioinstruct, lm-eval, ...) after one warm-up batch each; the best round counts.

HFLM is built with add_bos_token=False: bioinstruct encodes prompts without special tokens
(the paper-era harness did too); lm-eval 0.4.13 left at its default prepends the tokenizer's
BOS and scores a different string (see tests/test_lm_eval_parity.py). A second lm-eval row,
logits_cache=False, is lm-eval without its one-forward-per-question grouping of single-token
choices (what lm-eval did before that cache existed): where bioinstruct's grouping pays.

Prints the setup (model, torch threads, CPUs and their load average: wall times on a loaded
machine mean little), then one table: seconds (wall; and the process's CPU seconds, steadier on
a shared machine) and questions/s per scorer, the speedup over lm-eval (wall; CPU in brackets), and how
many questions' argmax (acc) and length-normalised argmax (acc_norm, lm-eval's normalisation:
the choice's length without the leading space) differ from bioinstruct's, with the largest
log-likelihood difference; then whether the goal (identical predictions, >= 2x lm-eval's
rate) was met. Exit status 1 if any prediction differs.

--gpu-7b: a LLaMA-7B architecture (hidden 4096, MLP 11008, 32 layers, 32 heads, vocab 32000;
as bench/train_throughput.py) with random weights, built directly in bf16 on cuda, nothing
downloaded. Tokenizer: the tiny model's byte-level BPE recipe (vocab 1024, trained in seconds
on the packaged corpus plus "Answer: A".."D" lines, so that " A".." D" are one token each as
in LLaMA's tokenizer); its ids are all < 32000, so they index the 7B embedding directly (the
"modulo vocab" map is the identity). Prompts are synthetic MedQA-shaped questions (the
lm-eval medqa_4options layout) whose contexts are cut to ~--context-tokens (200) tokens
under that tokenizer, with 4 single-token choices " A".." D": the sequence lengths, which is
what the GPU cost depends on, are MedQA's; the log-likelihoods themselves mean nothing.
Reports questions/s and context tokens/s of bioinstruct's scorer at batch sizes 16/32/64
(--gpu-batch-sizes), peak GPU memory, and with --with-lm-eval lm-eval's rate at each size
on the same model object.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import os
import random
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
os.environ.setdefault("BIOINSTRUCT_PROGRESS", "0")

import numpy as np  # noqa: E402
import torch  # noqa: E402

from bioinstruct.evaluate import EvaluateConfig, predict  # noqa: E402
from bioinstruct.reporting.tables import format_table  # noqa: E402
from bioinstruct.tasks import load_examples, load_task  # noqa: E402
from bioinstruct.tasks.medqa import medqa_context  # noqa: E402
from bioinstruct.tasks.reader import LETTERS  # noqa: E402

SHARED_DATA = REPO.parent / "shared" / "data"
DEMO = REPO / "bioinstruct" / "data" / "demo_tasks"
GOAL = 2.0
LLAMA_7B = dict(hidden_size=4096, intermediate_size=11008, num_hidden_layers=32, num_attention_heads=32,
                num_key_value_heads=32, vocab_size=32000)
LLAMA_TINY = dict(hidden_size=64, intermediate_size=176, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=4, vocab_size=32000)


# ---- questions --------------------------------------------------------------------------

def demo_medqa(n: int) -> list[dict]:
    """The demo MedQA questions with their options rotated (4 orders each), as many distinct
    prompts as asked for, repeating the set when more are asked for than there are."""
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


def load_questions(task_name: str, data: Path, n: int):
    """(task, the first n examples, where they came from)."""
    try:
        task = load_task(task_name, {"root": str(data)})
        examples = load_examples(task)[:n]
        return task, examples, f"{task_name}, the first {len(examples)} questions under {data}"
    except Exception as e:  # noqa: BLE001 - absent or unreadable: say so and use the demo set
        print(f"note: {task_name} data not usable under {data} ({type(e).__name__}: {str(e)[:120]}); "
              f"using the demo MedQA questions (bioinstruct/data/demo_tasks, options rotated) instead",
              file=sys.stderr)
        return load_task("medqa"), demo_medqa(n), f"demo MedQA, {n} prompts (options rotated)"


# ---- the two scorers --------------------------------------------------------------------

def make_hflm(model, batch_size: int, device: str, dtype: str, *, tokenizer=None, logits_cache: bool = True):
    from lm_eval.models.huggingface import HFLM

    kwargs = {} if isinstance(model, str) else {"tokenizer": tokenizer}
    return HFLM(pretrained=model, device=device, dtype=dtype, batch_size=batch_size, add_bos_token=False,
                logits_cache=logits_cache, **kwargs)


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
        out.append({"loglik": lls.tolist(), "pred": int(np.argmax(lls)), "pred_norm": int(np.argmax(lls / length))})
    return out


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def timed(fn, device: str):
    """(wall seconds, out); timed_cpu also gives this process's CPU seconds (all its threads),
    steadier than wall time on a shared machine."""
    wall, _, out = timed_cpu(fn, device)
    return wall, out


def timed_cpu(fn, device: str):
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


# ---- comparison on one model ------------------------------------------------------------

def compare(args, model_dir: str) -> int:
    from bioinstruct.scoring import LM

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    dtype = "bfloat16" if device.startswith("cuda") else "float32"
    task, examples, source = load_questions(args.task, Path(args.data), args.questions)
    n = len(examples)
    cfg = EvaluateConfig(generative=False)
    requests = lm_eval_requests(examples)

    ours = LM(model_dir, device=device, dtype=dtype, batch_size=args.batch_size)
    scorers = {"bioinstruct LM": lambda exs: predict(ours, task, exs, False, cfg)}
    hflm = make_hflm(model_dir, args.batch_size, device, dtype)
    scorers["lm-eval HFLM"] = lambda exs: lm_eval_predictions(
        exs, hflm.loglikelihood(requests[:sum(len(e["choices"]) for e in exs)], disable_tqdm=True))
    if not args.no_nocache:
        plain = make_hflm(model_dir, args.batch_size, device, dtype, logits_cache=False)
        scorers["lm-eval HFLM, logits_cache=False"] = lambda exs: lm_eval_predictions(
            exs, plain.loglikelihood(requests[:sum(len(e["choices"]) for e in exs)], disable_tqdm=True))

    lengths = [len(ours.encode(ex["context"])) for ex in examples]
    load, cores = os.getloadavg()[0], os.cpu_count() or 1
    print(f"model: {model_dir} ({device}, {dtype}, torch threads {torch.get_num_threads()}; {cores} CPUs, "
          f"load average {load:.1f}); batch size {args.batch_size}; {source}; context tokens mean "
          f"{np.mean(lengths):.0f}, max {max(lengths)}; {args.rounds} round(s), best counts", flush=True)
    if device == "cpu" and load > cores:
        print(f"warning: load average {load:.1f} on {cores} CPUs: other processes compete, wall times are "
              f"unreliable (the CPU seconds less so); try --threads 1 --rounds 5", flush=True)
    warm = examples[:args.batch_size]
    for fn in scorers.values():
        fn(warm)
    best = {name: float("inf") for name in scorers}
    cpu = {name: float("inf") for name in scorers}
    preds: dict[str, list[dict]] = {}
    for _ in range(args.rounds):
        for name, fn in scorers.items():
            seconds, cpu_seconds, preds[name] = timed_cpu(lambda: fn(examples), device)
            best[name], cpu[name] = min(best[name], seconds), min(cpu[name], cpu_seconds)
            print(f"  {name}: {seconds:.2f} s ({cpu_seconds:.2f} CPU s)", file=sys.stderr, flush=True)

    reference = "lm-eval HFLM"
    rows, any_diff = [], False
    for name in scorers:
        pred, norm, dll = disagreement(preds["bioinstruct LM"], preds[name])
        any_diff |= bool(pred or norm)
        rows.append([name, n, f"{best[name]:.3f}", f"{cpu[name]:.3f}", f"{n / best[name]:,.1f}",
                     f"{best[reference] / best[name]:.2f}x ({cpu[reference] / cpu[name]:.2f}x)",
                     "-" if name == "bioinstruct LM" else pred, "-" if name == "bioinstruct LM" else norm,
                     "-" if name == "bioinstruct LM" else f"{dll:.1e}"])
    print(format_table(["scorer", "questions", "seconds", "CPU s", "questions/s", "speedup vs lm-eval (CPU s)",
                        "pred diffs", "pred_norm diffs", "max |Δ loglik|"], rows))
    speedup = best[reference] / best["bioinstruct LM"]
    same = not any(disagreement(preds["bioinstruct LM"], preds[reference])[:2])
    print(f"goal (identical predictions, >= {GOAL:.0f}x lm-eval's questions/s): "
          f"{'MET' if same and speedup >= GOAL else 'NOT MET'} "
          f"(predictions {'identical' if same else 'DIFFER'}; {speedup:.2f}x wall, "
          f"{cpu[reference] / cpu['bioinstruct LM']:.2f}x CPU time)")
    return 1 if any_diff else 0


# ---- LLaMA-7B shapes on a GPU -----------------------------------------------------------

def synthetic_medqa(tokenizer, n: int, context_tokens: int, seed: int = 0) -> list[dict]:
    """n distinct MedQA-layout prompts whose contexts are ~context_tokens tokens long."""
    from bioinstruct.tiny_model import TinyModelConfig, corpus_lines

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

    from bioinstruct.scoring import LM
    from bioinstruct.tiny_model import TinyModelConfig, corpus_lines, train_tokenizer

    gpu = torch.cuda.is_available()
    if not gpu and args.arch == "7b":
        print("--gpu-7b needs CUDA (LLaMA-7B in bf16); use --arch tiny to try the code path on CPU", file=sys.stderr)
        return 2
    device = "cuda" if gpu else "cpu"
    dtype = torch.bfloat16 if gpu else torch.float32
    shape = LLAMA_7B if args.arch == "7b" else LLAMA_TINY
    # The tiny model's BPE recipe; "Answer: X" lines give it the merges " A".." D" (one token
    # each, as in LLaMA's tokenizer: the packaged corpus alone leaves " D" as two tokens).
    lines = corpus_lines(TinyModelConfig()) + [f"Answer: {k}" for k in LETTERS] * 50
    tokenizer = train_tokenizer(lines, TinyModelConfig().vocab_size)
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
            seconds, ours = timed(lambda: predict(lm, task, examples, False, cfg), device)
            result["ours"] = seconds
            result["mem"] = torch.cuda.max_memory_allocated() / 2**30 if gpu else None
            if args.with_lm_eval:
                hflm = make_hflm(model, bs, device, "bfloat16" if gpu else "float32", tokenizer=lm.tokenizer)
                hflm.loglikelihood(requests[:4 * bs], disable_tqdm=True)
                seconds, res = timed(lambda: hflm.loglikelihood(requests, disable_tqdm=True), device)
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
        print(f"  batch {bs}: {n / result['ours']:,.1f} questions/s", file=sys.stderr, flush=True)
    header = ["batch", "bioinstruct q/s", "context tokens/s", "peak GPU memory" if gpu else "memory"]
    if args.with_lm_eval:
        header += ["lm-eval q/s", "vs lm-eval", "pred/pred_norm diffs (max |Δll|)"]
    print(format_table(header, rows))
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", metavar="DIR", help="a causal LM directory (default: a tiny LLaMA built here)")
    parser.add_argument("--task", choices=["medmcqa", "medqa", "pubmedqa"], default="medmcqa")
    parser.add_argument("--data", metavar="DIR", default=str(SHARED_DATA),
                        help="data root (medmcqa/dev.json, ...); default ../shared/data")
    parser.add_argument("--questions", type=int, default=300)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=3, help="timed rounds per scorer (interleaved); best counts")
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's; --quick: 1)")
    parser.add_argument("--device", help="cpu or cuda (default: cuda if available)")
    parser.add_argument("--no-nocache", action="store_true", help="skip the lm-eval logits_cache=False row")
    parser.add_argument("--quick", action="store_true",
                        help="48 questions, 3 rounds, 1 thread, tiny model with 20 pretraining steps (CI)")
    parser.add_argument("--gpu-7b", action="store_true", help="LLaMA-7B shapes, random bf16 weights, on cuda")
    parser.add_argument("--arch", choices=["7b", "tiny"], default="7b", help="--gpu-7b's architecture")
    parser.add_argument("--gpu-batch-sizes", default="16,32,64")
    parser.add_argument("--context-tokens", type=int, default=200, help="--gpu-7b's context length")
    parser.add_argument("--with-lm-eval", action="store_true", help="--gpu-7b: lm-eval's rate at each batch size too")
    args = parser.parse_args()
    if args.quick:
        args.questions, args.rounds, args.threads = min(args.questions, 48), 3, args.threads or 1
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.gpu_7b:
        if args.quick:
            args.gpu_batch_sizes = "4,8"
        return gpu_7b(args)
    if args.model:
        return compare(args, args.model)
    from bioinstruct.tiny_model import TinyModelConfig, make_tiny_model

    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        make_tiny_model(Path(tmp) / "model", TinyModelConfig(pretrain_steps=20))
        print(f"tiny model built in {time.perf_counter() - t0:.1f} s (pretrain_steps=20)", file=sys.stderr)
        return compare(args, str(Path(tmp) / "model"))


if __name__ == "__main__":
    sys.exit(main())
