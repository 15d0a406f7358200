"""Build a tiny LLaMA-architecture model for tests and the quickstart; nothing is downloaded.

    bioinstruct make-tiny-model runs/tiny-model
    bioinstruct make-tiny-model runs/tiny-model pretrain_steps=50 seed=1

Input: a text corpus (default: the short biomedical text the package carries,
bioinstruct/data/tiny_corpus.txt; set corpus=PATH for your own).
Output (DIR): a byte-level BPE tokenizer trained with `tokenizers` (bos <s>, eos </s>,
pad <pad>) and a LlamaForCausalLM with tiny dimensions, briefly pretrained on the
corpus so LoRA has something to build on, both written with save_pretrained and
loadable with AutoTokenizer / AutoModelForCausalLM; pretrain_log.json (loss per
step); manifest.json and config.yaml (the run directory contract).
The same config and seed give the same weights on the same machine.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
from pathlib import Path

from ..runs.config import add_config_arguments, config_from_args, ranged, seed_field
from ..errors import ConfigError
from ..io.rows import atomic_write_json, read_text
from ..paths import DATA
from ..runs.progress import progress
from ..runs.rundir import run_stage

DEFAULT_CORPUS = DATA / "tiny_corpus.txt"
SPECIAL_TOKENS = {"unk_token": "<unk>", "bos_token": "<s>", "eos_token": "</s>", "pad_token": "<pad>"}


@dataclasses.dataclass
class TinyModelConfig:
    seed: int = seed_field(0)
    corpus: str | None = None  # a UTF-8 text file, one document per line; None: the packaged one
    vocab_size: int = ranged(1024, low=300)  # 256 byte symbols + specials + merges
    hidden_size: int = ranged(64, low=1)
    intermediate_size: int = ranged(176, low=1)
    num_hidden_layers: int = ranged(2, low=1)
    num_attention_heads: int = ranged(4, low=1)
    num_key_value_heads: int = ranged(4, low=1)
    max_position_embeddings: int = ranged(1024, low=1)
    pretrain_steps: int = ranged(300, low=0)  # 0: the random initialisation, untrained
    batch_size: int = ranged(16, low=1)
    seq_len: int = ranged(64, low=1)
    lr: float = ranged(3e-3, above=0)

    def __post_init__(self):
        if self.hidden_size % self.num_attention_heads:
            raise ValueError("hidden_size must be divisible by num_attention_heads")
        if self.num_attention_heads % self.num_key_value_heads:
            raise ValueError("num_attention_heads must be divisible by num_key_value_heads")


def corpus_lines(cfg: TinyModelConfig) -> list[str]:
    path = Path(cfg.corpus) if cfg.corpus else DEFAULT_CORPUS
    if not path.is_file():
        raise ConfigError(f"corpus: {path} is not a file")
    lines = [line.strip() for line in read_text(path).splitlines()]
    if not any(lines):
        raise ConfigError(f"corpus: {path} is empty")
    return [line for line in lines if line]


def train_tokenizer(lines: list[str], vocab_size: int):
    """A byte-level BPE (as LLaMA 3 and GPT-2 use) wrapped as a fast HF tokenizer that adds <s>."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(SPECIAL_TOKENS.values()),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(lines, trainer)
    bos = SPECIAL_TOKENS["bos_token"]
    tok.post_processor = processors.TemplateProcessing(
        single=f"{bos} $A", pair=f"{bos} $A {bos} $B", special_tokens=[(bos, tok.token_to_id(bos))])
    return PreTrainedTokenizerFast(tokenizer_object=tok, **SPECIAL_TOKENS)


def build(cfg: TinyModelConfig, out: Path) -> dict:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    lines = corpus_lines(cfg)
    tokenizer = train_tokenizer(lines, cfg.vocab_size)
    torch.manual_seed(cfg.seed)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=cfg.hidden_size,
        intermediate_size=cfg.intermediate_size,
        num_hidden_layers=cfg.num_hidden_layers,
        num_attention_heads=cfg.num_attention_heads,
        num_key_value_heads=cfg.num_key_value_heads,
        max_position_embeddings=cfg.max_position_embeddings,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False,
    )
    model = LlamaForCausalLM(config)

    # One token stream of all documents, each ending in </s>; random windows of it.
    ids = [t for line in lines for t in tokenizer(line)["input_ids"] + [tokenizer.eos_token_id]]
    stream = torch.tensor(ids, dtype=torch.long)
    if len(stream) <= cfg.seq_len:
        raise ValueError(f"corpus too short: {len(stream)} tokens for seq_len={cfg.seq_len}")
    gen = torch.Generator().manual_seed(cfg.seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=0.0)
    losses = []
    model.train()
    for step in progress(range(cfg.pretrain_steps), desc="pretrain tiny model", unit="step"):
        lr = cfg.lr * 0.5 * (1 + math.cos(math.pi * step / cfg.pretrain_steps))
        for group in optimizer.param_groups:
            group["lr"] = lr
        starts = torch.randint(0, len(stream) - cfg.seq_len, (cfg.batch_size,), generator=gen)
        batch = torch.stack([stream[s:s + cfg.seq_len] for s in starts.tolist()])
        loss = model(input_ids=batch, labels=batch).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(round(loss.item(), 5))

    model.eval()
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    atomic_write_json(out / "pretrain_log.json", {"loss": losses})
    return {
        "parameters": sum(p.numel() for p in model.parameters()),
        "vocab_size": len(tokenizer),
        "corpus_tokens": len(stream),
        "first_loss": losses[0] if losses else None,
        "final_loss": losses[-1] if losses else None,
    }


def make_tiny_model(out: str | Path, cfg: TinyModelConfig | None = None, *, force: bool = False) -> dict:
    """Build (or find complete) the tiny model in ``out``; return its manifest."""
    cfg = cfg or TinyModelConfig()
    corpus_lines(cfg)  # a bad corpus fails before the folder is touched
    return run_stage(out, "make-tiny-model", cfg, lambda d: build(cfg, d), force=force)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("out", metavar="DIR", help="where to write the model and tokenizer")
    add_config_arguments(parser)


def main(args: argparse.Namespace) -> int:
    cfg = config_from_args(TinyModelConfig, args)
    manifest = make_tiny_model(args.out, cfg, force=args.force)
    s = manifest["summary"]
    print(f"tiny model in {args.out}: {s['parameters']:,} parameters, vocab {s['vocab_size']}, "
          f"pretrain loss {s['first_loss']} -> {s['final_loss']}")
    return 0

