"""A task's prediction rows from a model (scoring.LM): multiple choice by log-likelihood (and
generatively for a tuned model), extraction and generation tasks by greedy generation; and
a shard's predictions.jsonl appended as batches complete, its batch size halved on out of
memory. ``cfg`` is the evaluate stage's config (generative, max_new_tokens, prompt.format)."""

from __future__ import annotations

import contextlib
import sys
from pathlib import Path
from typing import Iterator

from ..io.rows import JsonlAppender, atomic_write_json, read_json, read_jsonl
from ..prompts import prompt_text, resolve_format
from ..runs.progress import progress
from . import metrics as M
from .memory import halving

BACKOFF = "backoff.json"  # a shard's batch size after out-of-memory halvings, for its resume


def predictions(lm, task, examples: list[dict], tuned: bool, cfg,
                done: frozenset = frozenset()) -> Iterator[list[dict]]:
    """Prediction rows of ``examples`` (except the ids in ``done``) with the model as it is
    (adapter on or off), a list each time a batch completes some; in batch order.

    The whole list is planned at once, as one set of sorted batches (``LM.loglik_batches``,
    ``LM.generate_batches``), and a batch none of whose examples is left is skipped: a resumed
    shard reruns the batches it had not finished, as they were, and so writes what an
    uninterrupted run would have."""
    bar = progress(total=len(examples), initial=sum(ex["id"] in done for ex in examples),
                   desc=f"{task.name} ({'adapter' if tuned else 'base'})", unit="ex")
    if task.kind == "multiple_choice":
        rows = _choice_rows(lm, examples, done)
        if not (tuned and cfg.generative):
            for batch in rows:
                bar.update(len(batch))
                yield batch
            bar.close()
            return
        scored = {row["id"]: row for batch in rows for row in batch}
        for batch in _generated(lm, examples, done, 16, cfg):
            for ex, out in batch:
                scored[ex["id"]].update(generated=out, gen_pred=M.extract_choice(out, ex["labels"],
                                                                                  ex.get("option_texts", ())))
            bar.update(len(batch))
            yield [scored[ex["id"]] for ex, _ in batch]
    else:
        for batch in _generated(lm, examples, done, cfg.max_new_tokens, cfg):
            bar.update(len(batch))
            if task.kind == "extraction":
                yield [{"id": ex["id"], "output": out, "pred_items": M.split_items(out), "gold": ex["gold"]}
                       for ex, out in batch]
            else:
                yield [{"id": ex["id"], "instruction": ex["instruction"], "input": ex["input"],
                        "reference": ex["reference"], "output": out} for ex, out in batch]
    bar.close()


def _choice_rows(lm, examples: list[dict], done: frozenset) -> Iterator[list[dict]]:
    """Multiple-choice rows by log-likelihood, each as soon as all its choices are scored."""
    requests = [(ex["context"], choice) for ex in examples for choice in ex["choices"]]
    owner = [q for q, ex in enumerate(examples) for _ in ex["choices"]]
    first = [0]
    for ex in examples:
        first.append(first[-1] + len(ex["choices"]))
    scores = [(0.0, True)] * len(requests)  # an empty continuation is certain (lm-eval refuses it)
    remaining = [len(ex["choices"]) for ex in examples]
    batches = lm.loglik_batches(requests)
    for r in set(range(len(requests))) - {i for b in batches for i in b.items}:
        remaining[owner[r]] -= 1  # certain: in no batch
    ready = [q for q, n in enumerate(remaining) if n == 0 and examples[q]["id"] not in done]
    for batch in batches:
        if all(examples[owner[i]]["id"] in done for i in batch.items):
            continue
        for i, result in zip(batch.items, lm.run_loglik(batch)):
            scores[i] = result
            remaining[owner[i]] -= 1
            if remaining[owner[i]] == 0 and examples[owner[i]]["id"] not in done:
                ready.append(owner[i])
        yield [_choice_row(examples[q], scores[first[q]:first[q + 1]]) for q in ready]
        ready = []
    if ready:
        yield [_choice_row(examples[q], scores[first[q]:first[q + 1]]) for q in ready]


def _choice_row(ex: dict, ll: list[tuple[float, bool]]) -> dict:
    logp = [s for s, _ in ll]
    # lm-eval's acc_norm divides by the choice's length without the target delimiter.
    norm = [s / len(c.removeprefix(" ")) for s, c in zip(logp, ex["choices"])]
    return {"id": ex["id"], "gold": ex["gold"], "loglik": logp, "greedy": [g for _, g in ll],
            "pred": max(range(len(logp)), key=logp.__getitem__),
            "pred_norm": max(range(len(norm)), key=norm.__getitem__)}


def _generated(lm, examples: list[dict], done: frozenset, max_new_tokens: int,
               cfg) -> Iterator[list[tuple[dict, str]]]:
    """(example, greedy answer to its prompt) pairs, a batch at a time. The prompt is in the
    adapter's format, for the base model too (the same question, adapter off)."""
    fmt = resolve_format(cfg.prompt.format, cfg.adapter)
    prompts = [prompt_text(fmt, lm.tokenizer, ex["instruction"], ex["input"]) for ex in examples]
    # A chat template writes its own special tokens; alpaca is tokenized as in training, with BOS.
    for batch in lm.generate_batches(prompts, max_new_tokens, special_tokens=fmt == "alpaca"):
        if all(examples[i]["id"] in done for i in batch.items):
            continue
        outputs = lm.run_generate(batch, max_new_tokens)
        yield [(examples[i], out) for i, out in zip(batch.items, outputs) if examples[i]["id"] not in done]


def predict(lm, task, examples: list[dict], tuned: bool, cfg) -> list[dict]:
    """Prediction rows for ``examples``, in their order."""
    rows = {row["id"]: row for batch in predictions(lm, task, examples, tuned, cfg) for row in batch}
    return [rows[ex["id"]] for ex in examples]


def score_shard(lm, task, examples: list[dict], tuned: bool, cfg, shard_dir: Path) -> dict:
    """Append the shard's prediction rows to predictions.jsonl as batches complete; the rows
    already there (a resumed shard) are not made again.

    Out of memory halves the batch size (down to 1) and scores the shard again from its first
    batch at the new size: rows made at the larger size are dropped, so the predictions are
    those of a run at the size that worked, batch for batch (the plan is cut anew for each
    size). That size is kept in backoff.json, which a resumed shard starts from; it is written
    after the rows are dropped, so a kill between the two leaves a shard that starts over."""
    path, state_path = shard_dir / "predictions.jsonl", shard_dir / BACKOFF
    state = read_json(state_path) if state_path.exists() else {"batch_size": lm.batch_size, "out_of_memory_at": []}

    def attempt(size: int) -> int:
        done = frozenset(row["id"] for row in read_jsonl(path, allow_torn_tail=True)) if path.exists() else frozenset()
        with _batch_size(lm, size), JsonlAppender(path) as out:
            for rows in predictions(lm, task, examples, tuned, cfg, done):
                out.write_many(rows)
        return len(done)

    def halve(size: int, half: int, error: str) -> None:
        print(f"[evaluate] {shard_dir}: out of memory at batch size {size} ({error}); "
              f"halving to {half} and scoring the shard again from its first batch", file=sys.stderr)
        path.unlink(missing_ok=True)
        state["batch_size"], state["out_of_memory_at"] = half, state["out_of_memory_at"] + [size]
        atomic_write_json(state_path, state)

    resumed_with, size = halving(attempt, min(lm.batch_size, state["batch_size"]), halve)
    return {"examples": len(examples), "resumed_with": resumed_with, "batch_size": size,
            "out_of_memory_at": state["out_of_memory_at"], "dtype": lm.precision.dtype}


@contextlib.contextmanager
def _batch_size(lm, size: int) -> Iterator[None]:
    """The LM plans at ``size`` meanwhile (its plan cache is keyed by the size)."""
    configured, lm.batch_size = lm.batch_size, size
    try:
        yield
    finally:
        lm.batch_size = configured
