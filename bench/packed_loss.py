"""Packed rows give the loss of their examples run one at a time, per attention kernel, on
the device at hand: flash-attention-2's varlen path (flattened micro-batch) and sdpa's
block-diagonal mask (tests/test_packing.py checks sdpa and eager on CPU in fp32).

    python bench/packed_loss.py                      # cuda if present, bf16; else CPU fp32, sdpa only
    python bench/packed_loss.py --attn sdpa,eager

A random LLaMA (hidden 256, 4 layers, the tiny byte-level BPE) on the package's seed tasks cut
short, tokenized and packed as the recipe does (bioinstruct.modeling.examples, bioinstruct.modeling.packing).
Prints per kernel the token-weighted mean loss of the examples one at a time, of the packed
rows, and their difference; exit status 1 when a difference exceeds --tolerance (bf16: 2e-2).
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

from figures import record  # noqa: E402

from bioinstruct.stages.generate import load_seeds  # noqa: E402
from bioinstruct.modeling.packing import model_inputs, pack  # noqa: E402
from bioinstruct.reporting.tables import format_table  # noqa: E402
from bioinstruct.modeling.examples import Collator, tokenize  # noqa: E402
from bioinstruct.stages.train import DataConfig  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--attn", default="flash_attention_2,sdpa")
    parser.add_argument("--tolerance", type=float, help="largest |difference| (default 2e-2 bf16, 1e-5 fp32)")
    args = parser.parse_args()
    from transformers import AutoModelForCausalLM, LlamaConfig

    from bioinstruct.modeling.tiny_model import TinyModelConfig, corpus_lines, train_tokenizer

    gpu = torch.cuda.is_available()
    device, dtype = ("cuda", torch.bfloat16) if gpu else ("cpu", torch.float32)
    tolerance = args.tolerance or (2e-2 if gpu else 1e-5)
    tokenizer = train_tokenizer(corpus_lines(TinyModelConfig()), 1024)
    records = [{"instruction": s["instruction"][:60], "input": s["instances"][0]["input"][:40],
                "output": s["instances"][0]["output"][:60]} for s in load_seeds(None)[:16]]
    examples, _ = tokenize(records, tokenizer, DataConfig(max_length=512))
    rows = pack(examples, max_length=512)
    table, failed = [], False
    for attn in args.attn.split(","):
        if attn == "flash_attention_2" and not (gpu and importlib.util.find_spec("flash_attn")):
            table.append([attn, "not available (needs CUDA and flash_attn)", "", "", ""])
            record("packed_loss", attn, "|packed - separate| loss", "not available (needs CUDA and flash_attn)")
            continue
        config = LlamaConfig(hidden_size=256, intermediate_size=688, num_hidden_layers=4, num_attention_heads=4,
                             num_key_value_heads=4, vocab_size=len(tokenizer), max_position_embeddings=1024,
                             use_cache=False)
        torch.manual_seed(0)
        with torch.device(device):
            model = AutoModelForCausalLM.from_config(config, dtype=dtype, attn_implementation=attn).eval()
        with torch.no_grad():
            total, count = 0.0, 0
            for e in examples:
                labels = torch.tensor([e["labels"]], device=device)
                n = int((labels[:, 1:] != -100).sum())
                total += model(input_ids=torch.tensor([e["input_ids"]], device=device), labels=labels).loss.item() * n
                count += n
            batch = Collator(tokenizer.pad_token_id, flatten=attn == "flash_attention_2")(rows)
            packed = model(**{k: v.to(device) for k, v in model_inputs(batch).items()}).loss.item()
        diff = abs(packed - total / count)
        failed |= diff > tolerance
        table.append([attn, f"{len(examples)} examples in {len(rows)} rows", f"{total / count:.5f}",
                      f"{packed:.5f}", f"{diff:.1e}" + (" FAIL" if diff > tolerance else "")])
        record("packed_loss", f"{attn}, {dtype}".replace("torch.", ""), "|packed - separate| loss", f"{diff:.1e}")
    print(f"device: {torch.cuda.get_device_name() if gpu else 'CPU'}, {dtype}; tolerance {tolerance:.0e}")
    print(format_table(["attention", "data", "separate loss", "packed loss", "|difference|"], table))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
