"""Training throughput and MFU of the LoRA recipe (bioinstruct/stages/train.py) on one device.

    python bench/train_throughput.py                                  # SmolLM2-135M on CPU (no GPU), real weights
    python bench/train_throughput.py --quick                          # tiny LLaMA on CPU, seconds (CI)
    python bench/train_throughput.py --model 7b                       # mb 4/8/16 x grad-ckpt off/on, sdpa
    python bench/train_throughput.py --model 13b --micro-batch 4,8 --grad-ckpt on
    python bench/train_throughput.py --model 7b --attn sdpa,flash_attention_2 --micro-batch 8,16
    python bench/train_throughput.py --model 7b --seq-len 1024 --steps 20 --warmup 5
    python bench/train_throughput.py --model 7b --data runs/v1/subsets/all/data.jsonl --tokenizer LLAMA_DIR

smollm2 (the default without a GPU, when models/smollm2-135m or $BIOINSTRUCT_SMOLLM2 holds
`bioinstruct get-model smollm2-135m`'s folder; --model DIR for another) trains the real model:
SmolLM2-135M-Instruct's weights in fp32, 30 layers, hidden 576, tied embeddings, on CPU with
--threads threads (default 1), micro-batch 1,4 at seq-len 256, and its own tokenizer for the
packing table. Without it, no GPU and no --model runs --quick, with a printed note.
Otherwise builds a LLaMA architecture with random weights (nothing is downloaded): 7b = LLaMA-2-7B
(hidden 4096, MLP 11008, 32 layers, 32 heads), 13b = LLaMA-2-13B (5120, 13824, 40, 40), both
vocab 32000, RMSNorm eps 1e-5, 4096 positions; tiny = a ~5M-parameter LLaMA for CPU. On a
GPU the model is constructed directly in bf16 on the device. It is wrapped with peft LoRA
exactly as the recipe does (LoraSettings() defaults: r=8, alpha=16, dropout 0.05, q_proj and
v_proj), trained with torch AdamW on the adapter under bf16 autocast (fp32 on CPU), gradient
clipping at 1.0, on synthetic full-length batches (labels = inputs; --seq-len defaults to
the paper's max_length, 512). After --warmup steps, --steps steps are timed with CUDA events.

The device's peak is measured with a large matmul (bf16 8192^3 on GPU, best of several;
fp32 on CPU), and MFU = 4 N tokens/s / peak, N = every parameter of the base model, the
FLOP model of train.py's metrics.jsonl. The first table: one row per configuration
(micro-batch x gradient checkpointing x attention); one that runs out of memory reads OOM.
Peak memory is torch.cuda.max_memory_allocated on GPU, the process's peak RSS on CPU. On CPU
both the steps and the peak matmul are timed in the process's CPU seconds (tokens per CPU
second; with --threads 1 that is one core's), since a shared machine's wall clock means little.
With no GPU and no --model the script runs --quick.

A second table compares data.packing off and on (bioinstruct/modeling/packing.py) on the same real
examples: --data (default: the package's seed tasks) in the Alpaca format, tokenized with
--tokenizer (default: the tiny model's byte-level BPE trained on the packaged corpus, about
2 characters a token, so examples run longer than LLaMA's tokenizer makes them; pass a LLaMA
directory for its lengths) and cut at --data-len (the recipe's data.max_length), rows
shuffled and batched as the Trainer does, for the first attention and checkpointing setting
at each micro-batch. Its columns: rows (the Trainer's samples), padding (pad share of the
batches' tokens), real tokens/s (padding not counted, as in metrics.jsonl) and the time one
epoch would take at that rate.
"""

from __future__ import annotations

import argparse
import gc
import importlib.util
import os
import random
import resource
import sys
import time
import warnings
from pathlib import Path

os.environ.setdefault("PYTORCH_CUDA_ALLOC_CONF", "expandable_segments:True")  # less fragmentation between configs

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

from figures import record  # noqa: E402
from real_model import note_fallback, smollm2_dir  # noqa: E402

from bioinstruct.modeling.packing import model_inputs, pack  # noqa: E402
from bioinstruct.io.records import read_records  # noqa: E402
from bioinstruct.reporting.tables import format_table  # noqa: E402
from bioinstruct.modeling.examples import collator, tokenize  # noqa: E402
from bioinstruct.modeling.trainer_callbacks import PEAK_BF16  # noqa: E402
from bioinstruct.stages.train import DataConfig, LoraSettings  # noqa: E402

# train.py calls gradient_checkpointing_enable(); transformers 5 calls it deprecated
warnings.filterwarnings("ignore", message=".*gradient_checkpointing.* is deprecated", category=FutureWarning)

MODELS = {  # LLaMA-2 shapes; LLaMA-1 differs only in max_position (2048) and RMSNorm eps (1e-6)
    "7b": dict(hidden_size=4096, intermediate_size=11008, num_hidden_layers=32, num_attention_heads=32),
    "13b": dict(hidden_size=5120, intermediate_size=13824, num_hidden_layers=40, num_attention_heads=40),
    "tiny": dict(hidden_size=256, intermediate_size=688, num_hidden_layers=4, num_attention_heads=4),
}
ANCHORS = ("anchors (issue): LLaMA-Factory, LLaMA-2-7B LoRA on one A100: 2,392 tokens/s HF, 2,954 FlashAttention-2, "
           "4,007 Unsloth (~21-36% MFU at 312 TFLOPS); goal: >= 45% MFU for 7B on one H100")


def llama_config(name: str, attn: str):
    from transformers import LlamaConfig

    return LlamaConfig(**MODELS[name], num_key_value_heads=MODELS[name]["num_attention_heads"],
                       vocab_size=4096 if name == "tiny" else 32000, rms_norm_eps=1e-5,
                       max_position_embeddings=4096, hidden_act="silu", tie_word_embeddings=False,
                       use_cache=False, attn_implementation=attn)


def measure_peak(gpu: bool, trials: int = 5) -> float:
    """Best FLOP/s of a large matmul: bf16 8192^3 on GPU, fp32 on CPU."""
    n, reps = (8192, 20) if gpu else (1024, 4)
    dtype, device = (torch.bfloat16, "cuda") if gpu else (torch.float32, "cpu")
    a = torch.randn(n, n, dtype=dtype, device=device)
    b = torch.randn(n, n, dtype=dtype, device=device)
    for _ in range(3):
        a @ b
    best = 0.0
    for _ in range(trials):
        if gpu:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            for _ in range(reps):
                a @ b
            end.record()
            end.synchronize()
            seconds = start.elapsed_time(end) / 1000
        else:
            t0 = time.process_time()  # CPU seconds, as the training steps are timed on CPU
            for _ in range(reps):
                a @ b
            seconds = time.process_time() - t0
        best = max(best, 2 * n**3 * reps / seconds)
    del a, b
    return best


def datasheet_peak(gpu: bool) -> tuple[str, float | None]:
    if not gpu:
        return "CPU", None
    name = torch.cuda.get_device_name()
    return name, next((peak for key, peak in PEAK_BF16.items() if key in name), None)


def _reset_peak_rss() -> bool:
    """Linux: writing 5 to clear_refs resets VmHWM (the peak RSS), so each configuration gets
    its own peak; elsewhere the lifetime peak from getrusage is all there is."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def _peak_rss_bytes() -> int:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux


def shown(name: str) -> str:
    return f"LLaMA-{name}" if name in MODELS else Path(name).name


def vocab_size(name: str) -> int:
    if name in MODELS:
        return llama_config(name, "sdpa").vocab_size
    from transformers import AutoConfig

    return AutoConfig.from_pretrained(name).vocab_size


def build(name: str, attn: str, gpu: bool, grad_ckpt: bool):
    """The base model (random weights for a MODELS shape, else the folder's real weights)
    wrapped in LoRA as bioinstruct/stages/train.py does it. Returns the peft model and N,
    the base model's parameter count (tied embeddings once)."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    dtype = torch.bfloat16 if gpu else torch.float32
    with torch.device("cuda" if gpu else "cpu"):
        if name in MODELS:
            model = AutoModelForCausalLM.from_config(llama_config(name, attn), dtype=dtype, attn_implementation=attn)
        else:
            model = AutoModelForCausalLM.from_pretrained(name, dtype=dtype, attn_implementation=attn)
            model.config.use_cache = False
    n_params = sum(p.numel() for p in model.parameters())
    if grad_ckpt:
        model.gradient_checkpointing_enable()
        model.enable_input_require_grads()  # frozen embeddings: checkpointed blocks need a grad input
    lora = LoraSettings()
    model = get_peft_model(model, LoraConfig(task_type="CAUSAL_LM", r=lora.r, lora_alpha=lora.alpha,
                                             lora_dropout=lora.dropout, target_modules=list(lora.target_modules)))
    model.train()
    return model, n_params


def synthetic_batches(vocab: int, micro_batch: int, seq_len: int) -> list[dict]:
    """Two full-length batches of random tokens, labels = inputs: no padding."""
    batches = []
    for _ in range(2):
        ids = torch.randint(0, vocab, (micro_batch, seq_len))
        batches.append({"input_ids": ids, "labels": ids, "attention_mask": torch.ones_like(ids)})
    return batches


def run_config(name: str, attn: str, gpu: bool, grad_ckpt: bool, batches: list[dict], steps: int,
               warmup: int) -> dict:
    """Timed training steps over ``batches`` (in turn); tokens/s counts real tokens only."""
    torch.manual_seed(0)
    model, n_params = build(name, attn, gpu, grad_ckpt)
    device = "cuda" if gpu else "cpu"
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=3e-4, weight_decay=0.0)  # the Trainer's adamw_torch
    batches = [{k: v.to(device) for k, v in b.items()} for b in batches]

    def step(i: int) -> torch.Tensor:
        batch = batches[i % len(batches)]
        inputs = model_inputs(batch) if "position_ids" in batch else batch
        with torch.autocast(device_type=device, dtype=torch.bfloat16, enabled=gpu):
            loss = model(**inputs).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(trainable, 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return loss.detach()

    for i in range(warmup):
        step(i)
    if gpu:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()  # the timed steps' peak (warmup allocated the same)
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
    else:
        t0 = time.process_time()  # CPU seconds: a loaded machine's wall clock means little
    for i in range(steps):
        loss = step(warmup + i)
    if gpu:
        end.record()
        end.synchronize()
        seconds = start.elapsed_time(end) / 1000
        peak_mem = torch.cuda.max_memory_allocated()
    else:
        seconds = time.process_time() - t0
        peak_mem = _peak_rss_bytes()
    loss = loss.item()
    if loss != loss:
        raise FloatingPointError("loss is NaN")
    tokens = sum(int(batches[(warmup + i) % len(batches)]["attention_mask"].sum()) for i in range(steps))
    return {"n_params": n_params, "tokens_per_s": tokens / seconds,
            "step_s": seconds / steps, "peak_mem": peak_mem, "loss": loss,
            "trainable": sum(p.numel() for p in trainable)}


def data_examples(data: str | None, tokenizer_dir: str | None, max_length: int) -> tuple[list[dict], int]:
    """Tokenized Alpaca examples as train.py makes them, and the pad id."""
    from bioinstruct.stages.generate import load_seeds
    from bioinstruct.modeling.tiny_model import TinyModelConfig, corpus_lines, train_tokenizer
    from bioinstruct.stages.train import load_tokenizer

    if data:
        records = read_records(Path(data))
    else:
        records = [{"instruction": s["instruction"], "input": i["input"], "output": i["output"]}
                   for s in load_seeds(None) for i in s["instances"]]
    if tokenizer_dir:
        tokenizer = load_tokenizer(tokenizer_dir)
    else:
        tokenizer = train_tokenizer(corpus_lines(TinyModelConfig()), TinyModelConfig().vocab_size)
    examples, _ = tokenize(records, tokenizer, DataConfig(max_length=max_length))
    return examples, tokenizer.pad_token_id


def data_batches(examples: list[dict], packing: bool, micro_batch: int, attn: str, pad_id: int, max_length: int,
                 vocab: int) -> tuple[list[dict], int]:
    """One epoch of micro-batches, rows in a seeded shuffle as the Trainer's sampler takes them,
    and the number of rows."""
    rows = pack(examples, max_length) if packing else examples
    order = list(range(len(rows)))
    random.Random(0).shuffle(order)
    collate = collator(pad_id, packing, attn)
    batches = [collate([rows[i] for i in order[k:k + micro_batch]]) for k in range(0, len(order), micro_batch)]
    for b in batches:  # the random-weight model's vocabulary may be smaller than the tokenizer's
        b["input_ids"] %= vocab
        b["labels"] = torch.where(b["labels"] < 0, b["labels"], b["labels"] % vocab)
    return batches, len(rows)


def attempt(gpu: bool, label: str, run) -> tuple[dict | None, str | None]:
    """run() as (result, None), or (None, "OOM" / a one-line error) when it fails."""
    result, failure = None, None
    try:
        result = run()
    except torch.cuda.OutOfMemoryError:
        failure = "OOM"  # the traceback (and the model it holds) is dropped with this block
    except (RuntimeError, ValueError, ImportError, FloatingPointError) as e:
        text = str(e).splitlines()[0] if str(e) else ""
        oom = "out of memory" in text.lower() or "ALLOC_FAILED" in text  # cuBLAS/cuDNN's OOM
        failure = "OOM" if oom else f"error: {type(e).__name__}: {text[:80]}"
    _free(gpu)
    if failure:
        print(f"  {label}: {failure}", file=sys.stderr, flush=True)
    return result, failure


def packing_table(args, model_name: str, attn: str, ckpt: bool, gpu: bool, micro_batches: list[int]) -> str:
    """Packing off vs on, side by side on the same examples, at each micro-batch."""
    examples, pad_id = data_examples(args.data, args.tokenizer, args.data_len)
    vocab = vocab_size(model_name)
    epoch_tokens = sum(len(e["input_ids"]) for e in examples)
    rows = []
    for mb in micro_batches:
        for packing in (False, True):
            label = f"{attn} mb={mb} ckpt={'on' if ckpt else 'off'}"
            batches, n_rows = data_batches(examples, packing, mb, attn, pad_id, args.data_len, vocab)
            padding = 1 - epoch_tokens / sum(b["input_ids"].numel() for b in batches)
            result, failure = attempt(gpu, label, lambda: run_config(model_name, attn, gpu, ckpt, batches,
                                                                     args.steps, args.warmup))
            row = [label, "on" if packing else "off", f"{n_rows:,}", f"{len(examples) / n_rows:.2f}",
                   f"{100 * padding:.1f}%"]
            if failure:
                rows.append(row + [failure, "", ""])
                continue
            rows.append(row + [f"{result['tokens_per_s']:,.0f}", f"{result['step_s'] * 1000:,.0f} ms",
                               f"{epoch_tokens / result['tokens_per_s']:,.1f} s"])
            record("train_throughput", f"{shown(model_name)}, {label}, packing {'on' if packing else 'off'}",
                   "real tokens/s", f"{result['tokens_per_s']:,.0f}")
            print(f"  {label} packing={'on' if packing else 'off'}: {result['tokens_per_s']:,.0f} real tokens/s",
                  file=sys.stderr, flush=True)
    source = args.data or "the package's seed tasks"
    return (f"packing: {len(examples)} examples ({epoch_tokens:,} tokens) of {source}, data-len {args.data_len}, "
            f"tokenizer {args.tokenizer or 'tiny byte-level BPE'}\n"
            + format_table(["config", "packing", "rows", "examples/row", "padding",
                            "real tokens/s" if gpu else "real tokens/CPU s", "step time",
                            "epoch (est.)"], rows))


def _free(gpu: bool) -> None:
    gc.collect()
    if gpu:
        torch.cuda.synchronize()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def _csv(text: str, cast=str) -> list:
    return [cast(x) for x in text.split(",") if x.strip()]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help=f"{', '.join(sorted(MODELS))} (random weights), smollm2 or a model "
                        "directory (real weights); default: 7b on a GPU, smollm2 without one (else --quick)")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads on CPU (one: steadiest figures)")
    parser.add_argument("--micro-batch", default="4,8,16", help="comma-separated micro-batch sizes")
    parser.add_argument("--seq-len", type=int, default=512, help="tokens per sequence (the paper's max_length)")
    parser.add_argument("--grad-ckpt", choices=["off", "on", "both"], default="both",
                        help="gradient checkpointing")
    parser.add_argument("--attn", default="sdpa", help="comma-separated: sdpa, flash_attention_2, eager")
    parser.add_argument("--steps", type=int, default=10, help="timed steps per configuration")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps first")
    parser.add_argument("--data", help="JSONL/JSON of {instruction, input, output} for the packing table "
                                       "(default: the package's seed tasks)")
    parser.add_argument("--tokenizer", help="tokenizer directory for --data (default: the tiny byte-level BPE)")
    parser.add_argument("--data-len", type=int, default=512, help="data.max_length for the packing table")
    parser.add_argument("--quick", action="store_true",
                        help="tiny model on CPU (1 thread), micro-batch 1,2, seq-len 128, 3 steps (seconds; CI)")
    args = parser.parse_args()

    gpu = torch.cuda.is_available()
    if args.model is None and not gpu and not args.quick:
        real = smollm2_dir()
        if real is None:
            note_fallback("no GPU and no --model: running --quick (the tiny model on CPU)")
            args.quick = True
        else:
            args.model = "smollm2"
            explicit = {a.split("=")[0] for a in sys.argv[1:]}
            # A real 135M model on one CPU thread: ~100 tokens/s, so seconds-long steps.
            for flag, value in (("--micro-batch", "1,4"), ("--seq-len", 256), ("--steps", 3), ("--warmup", 1),
                                ("--grad-ckpt", "off"), ("--data-len", 256)):
                if flag not in explicit:
                    setattr(args, flag[2:].replace("-", "_"), value)
    if args.model == "smollm2":
        real = smollm2_dir()
        if real is None:
            parser.error("--model smollm2: no get-model folder at models/smollm2-135m or $BIOINSTRUCT_SMOLLM2")
        args.model = str(real)
    if args.model and args.model not in MODELS and not Path(args.model, "config.json").is_file():
        parser.error(f"--model {args.model}: neither {', '.join(sorted(MODELS))}, smollm2 nor a model directory")
    if args.model and args.model not in MODELS:
        args.tokenizer = args.tokenizer or args.model  # the packing table with the model's own tokenizer
    if args.quick:
        gpu = False
        args.model, args.micro_batch, args.seq_len, args.steps, args.warmup = "tiny", "1,2", 128, 3, 1
        torch.set_num_threads(1)  # a smoke test: on a busy CI box, spinning OpenMP threads cost 10x
    elif not gpu:
        torch.set_num_threads(args.threads)
    model_name = args.model or "7b"
    if not gpu and model_name in ("7b", "13b"):
        print(f"warning: --model {model_name} on CPU in fp32 (no GPU): expect minutes per step", file=sys.stderr)

    attns = _csv(args.attn)
    ckpts = {"off": [False], "on": [True], "both": [False, True]}[args.grad_ckpt]
    micro_batches = _csv(args.micro_batch, int)

    device_name, sheet = datasheet_peak(gpu)
    measured = measure_peak(gpu)
    _free(gpu)
    print(f"device: {device_name}; measured peak {measured / 1e12:.1f} TFLOPS "
          f"({'bf16 8192^3 matmul' if gpu else 'fp32 1024^3 matmul'}, best of 5)"
          + (f"; datasheet {sheet / 1e12:.0f} TFLOPS dense bf16" if sheet else ""))
    print(f"model: {model_name}, seq-len {args.seq_len}, {args.warmup} warmup + {args.steps} timed steps, "
          f"{'bf16 weights + autocast' if gpu else f'fp32, CPU threads: {torch.get_num_threads()}'}; "
          f"torch {torch.__version__}", flush=True)

    rows, n_params, trainable = [], None, None
    per_config_rss = True
    for attn in attns:
        for ckpt in ckpts:
            for mb in micro_batches:
                label = f"{attn} mb={mb} ckpt={'on' if ckpt else 'off'}"
                if attn == "flash_attention_2" and importlib.util.find_spec("flash_attn") is None:
                    rows.append([label, "flash_attn not installed", "", "", "", ""])
                    continue
                if not gpu:
                    per_config_rss = _reset_peak_rss() and per_config_rss
                batches = synthetic_batches(vocab_size(model_name), mb, args.seq_len)
                result, failure = attempt(gpu, label, lambda: run_config(model_name, attn, gpu, ckpt, batches,
                                                                         args.steps, args.warmup))
                if failure:
                    rows.append([label, failure, "", "", "", ""])
                    continue
                n_params, trainable = result["n_params"], result["trainable"]
                flops = 4 * n_params * result["tokens_per_s"]
                rows.append([label, f"{result['tokens_per_s']:,.0f}", f"{result['step_s'] * 1000:,.0f} ms",
                             f"{result['peak_mem'] / 2**30:.2f} GiB", f"{100 * flops / measured:.1f}%",
                             f"{100 * flops / sheet:.1f}%" if sheet else "n/a"])
                setting = f"{shown(model_name)}, {label}, seq {args.seq_len}"
                record("train_throughput", setting, "tokens/s", f"{result['tokens_per_s']:,.0f}")
                record("train_throughput", setting, "MFU (measured peak)", f"{100 * flops / measured:.1f}%")
                record("train_throughput", setting, "peak memory", f"{result['peak_mem'] / 2**30:.2f} GiB")
                print(f"  {label}: {result['tokens_per_s']:,.0f} tokens/s, loss {result['loss']:.3f}",
                      file=sys.stderr, flush=True)

    memory = "peak memory" if gpu else "peak RSS"
    print(format_table(["config", 'tokens/s/GPU' if gpu else 'tokens/CPU s', "step time", memory,
                        "MFU (measured peak)", "MFU (datasheet)"], rows))
    if n_params:
        print(f"4·N FLOPs per token for LoRA: forward 2N + backward through activations 2N; "
              f"N = {n_params:,} parameters ({trainable:,} trainable LoRA; attention's seq^2 term not counted)")
    if not gpu:
        print("peak RSS: " + ("per configuration (VmHWM reset before each)" if per_config_rss
                              else "the process's lifetime maximum (getrusage)"))
    print(ANCHORS)
    usable = [a for a in attns if a != "flash_attention_2" or importlib.util.find_spec("flash_attn")]
    if usable:
        print(packing_table(args, model_name, usable[0], ckpts[0], gpu, micro_batches))


if __name__ == "__main__":
    main()
