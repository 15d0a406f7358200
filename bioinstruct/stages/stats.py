"""The dataset card of an instruction dataset: sizes, categories, lengths, truncation, similarity.

    bioinstruct stats --in runs/x/classify/labelled.jsonl --run-dir runs/x
    bioinstruct stats --in biomed_instruct_25k.json --tokenizer /models/llama-2-7b max_lengths=[512,1024]
    bioinstruct stats --in kept.jsonl similarity_sample=5000 spacy_model=null

Input: --in, a JSONL (or JSON list) of {instruction, input, output} records, optionally with a
"category" (qa, ie, generation, other, unknown); records without one count as unlabelled.
Output (RUN_DIR/stats/), each file written atomically; manifest.json and config.yaml:
  card.md          the card: readable tables, links to the figures, notes on what was skipped
  stats.json       every number in the card
  categories.png   category shares beside the paper's (QA 22.8%, IE 33.8%, generation 33.5%,
                   other 10.0%); left out, with a note, when no record has a category
  words.png        whitespace word counts of instruction, input and output
  tokens.png       training-prompt lengths in tokens (only with tokenizer=DIR_OR_HUB_ID)
  similarity.png   each instruction's ROUGE-L F to its nearest other instruction
The card's contamination section (hits per evaluation task, examples) comes from
RUN_DIR/decontaminate when that stage is complete there.
  verbs.png        the paper's Figure 1B, top 20 root verbs and their top 4 direct objects
                   (only when spaCy and spacy_model, default en_core_web_sm, can be loaded)

Token lengths are those of the full Alpaca training prompt (instruction, input, response)
plus EOS; for each max_length the card gives the share of examples longer than it, of tokens
cut off, and of examples whose prompt alone fills it, so that no response token is trained
on. The similarity of an instruction to its nearest other one is exact (rouge-score's ROUGE-L
F against every other instruction, not an estimate); above similarity_sample instructions a
seeded random sample of them is scored, each still against all the others. A complete card
with the same config is not recomputed.
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import hashlib
import random
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import numpy as np

from ..runs.config import add_config_arguments, config_from_args, ranged, seed_field
from ..errors import ConfigError
from .filter import Criteria
from ..runs.identity import path_identity
from ..io.rows import atomic_write_json, atomic_write_text, read_json
from ..runs.progress import progress
from ..prompts import alpaca_prompt
from ..io.records import LABELS, PAPER_SHARES, read_records, resolve_input
from ..reporting.card import PAPER_MAX_LENGTH, TOP_OBJECTS, TOP_VERBS, render_card
from ..reporting.plots import plot_categories, plot_similarity, plot_tokens, plot_verbs, plot_words
from ..reporting.tables import format_table
from ..similarity.rougel import RougeLPool
from ..runs.rundir import is_complete, run_stage
from .stage import Stage

UNLABELLED = "unlabelled"  # a record without a category
NEAR_DUPLICATE = Criteria.threshold  # the filter's default: Alpaca's 0.7
TOKENIZE_BATCH = 1024


@dataclasses.dataclass
class StatsConfig:
    input: str | None = None  # the dataset (JSONL or JSON list)
    run_dir: str = "runs/default"  # the card goes to RUN_DIR/stats/
    tokenizer: str | None = None  # HF tokenizer directory or hub id; None: no token lengths
    max_lengths: list[int] = dataclasses.field(default_factory=lambda: [256, 512, 1024, 2048])
    similarity_sample: int = ranged(2000, low=1)  # instructions scored for nearest-neighbour similarity
    seed: int = seed_field(0)  # of that sample
    spacy_model: str | None = "en_core_web_sm"  # Figure 1B's parser; None: skip the figure

    def __post_init__(self):
        if not self.max_lengths or min(self.max_lengths) < 1:
            raise ValueError("max_lengths must be a non-empty list of positive token counts")


# ---- numbers ---------------------------------------------------------------------------

def describe(values: Sequence[float]) -> dict[str, Any]:
    """min / median / mean / p90 / p99 / max; percentiles interpolate linearly (numpy's default)."""
    a = np.asarray(values)
    if a.size == 0:
        return {"n": 0}
    p50, p90, p99 = np.percentile(a, [50, 90, 99]).tolist()
    return {"n": int(a.size), "min": a.min().item(), "median": p50, "mean": float(a.mean()),
            "p90": p90, "p99": p99, "max": a.max().item()}


def word_count(text: str) -> int:
    return len(text.split())


def category_counts(records: list[dict]) -> dict[str, int] | None:
    """Records per label (unlabelled ones too); None when no record has a category."""
    counts = collections.Counter(r.get("category") or UNLABELLED for r in records)
    if counts[UNLABELLED] == len(records):
        return None
    return {label: counts[label] for label in (*LABELS, UNLABELLED) if counts[label] or label in PAPER_SHARES}


def token_lengths(records: list[dict], tokenizer) -> tuple[np.ndarray, np.ndarray]:
    """(full example, prompt alone) token counts; the full one includes the EOS the trainer
    appends, both include what the tokenizer adds itself (LLaMA's BOS)."""
    full, prompt = [], []
    bar = progress(total=len(records), desc="stats: tokenize", unit="ex")
    for start in range(0, len(records), TOKENIZE_BATCH):
        batch = records[start:start + TOKENIZE_BATCH]
        prompts = [alpaca_prompt(r["instruction"], r["input"]) for r in batch]
        # verbose=False: no warning for examples longer than the tokenizer's model_max_length.
        full += [len(ids) + 1 for ids in tokenizer([p + r["output"] for p, r in zip(prompts, batch)],
                                                   verbose=False)["input_ids"]]
        prompt += [len(ids) for ids in tokenizer(prompts, verbose=False)["input_ids"]]
        bar.update(len(batch))
    bar.close()
    return np.asarray(full), np.asarray(prompt)


def truncation(full: np.ndarray, prompt: np.ndarray, max_lengths: Iterable[int]) -> list[dict]:
    """Per max_length: examples longer than it, tokens beyond it, and examples whose prompt
    alone reaches it (their whole response is cut, so they teach the model nothing)."""
    rows = []
    for limit in sorted(set(max_lengths)):
        longer = int((full > limit).sum())
        cut = int(np.maximum(full - limit, 0).sum())
        lost = int((prompt >= limit).sum())
        rows.append({"max_length": limit, "examples_longer": longer, "share_examples_longer": longer / len(full),
                     "tokens_cut": cut, "share_tokens_cut": cut / int(full.sum()),
                     "responses_lost": lost, "share_responses_lost": lost / len(full)})
    return rows


def nearest_other(instructions: Sequence[str], queries: Sequence[int]) -> list[tuple[float, int | None]]:
    """For each instruction index in ``queries``: (ROUGE-L F, index) of its nearest other
    instruction, exactly, with rouge-score's tokens; (0.0, None) when it shares no token.

    Two passes of :meth:`RougeLPool.offer_many` with threshold 1.0, which keeps (and so
    adds) every candidate after scoring it against the pool. Each pass starts from a pool of
    all non-queried instructions and offers the queries, forward then backward: a query is
    scored against the non-queried ones and the queries before it, then against those and
    the queries after it. The better of the two is its best over all others, never itself.
    That is 2 x queries x instructions pairs, scored a block at a time on every core.
    """
    queried = set(queries)
    rest = [i for i in range(len(instructions)) if i not in queried]
    best: dict[int, tuple[float, int | None]] = {}
    for order in (list(queries), list(reversed(queries))):
        pool = RougeLPool(threshold=1.0, top_k=1)
        for i in rest:
            pool.add(instructions[i])
        members = rest + order  # pool index -> instruction index
        verdicts = pool.offer_many(instructions[i] for i in order)
        for i, v in zip(order, verdicts):
            found = (v.nearest.score, members[v.nearest.index]) if v.nearest else (0.0, None)
            if i not in best or found[0] > best[i][0]:
                best[i] = found
    return [best[i] for i in queries]


def similarity(instructions: list[str], sample: int, seed: int) -> dict[str, Any]:
    n = len(instructions)
    queries = sorted(random.Random(seed).sample(range(n), sample)) if n > sample else list(range(n))
    found = nearest_other(instructions, queries)
    scores = np.asarray([s for s, _ in found])
    counts, edges = np.histogram(scores, bins=20, range=(0.0, 1.0))
    pairs: dict[tuple[int, int], float] = {}
    for i, (score, j) in zip(queries, found):
        if j is not None:
            pairs[(min(i, j), max(i, j))] = score
    top = sorted(pairs.items(), key=lambda kv: (-kv[1], kv[0]))[:5]
    return {"scored": len(queries), "of": n, "sampled": n > sample, "seed": seed,
            "scores": describe(scores), "near_duplicate_threshold": NEAR_DUPLICATE,
            "share_over_threshold": float((scores > NEAR_DUPLICATE).mean()),
            "histogram": {"edges": edges.tolist(), "counts": counts.tolist()},
            "most_similar_pairs": [{"a": instructions[a], "b": instructions[b], "score": s} for (a, b), s in top]}


def load_spacy(model: str | None) -> tuple[Any, str | None]:
    """(pipeline, None), or (None, why Figure 1B is skipped)."""
    if model is None:
        return None, "spacy_model is null"
    try:
        import spacy
    except ImportError:
        return None, f"spaCy is not installed (pip install spacy && python -m spacy download {model})"
    try:
        return spacy.load(model, exclude=["ner"]), None
    except OSError:
        return None, f"spaCy is installed but its pipeline '{model}' is not (python -m spacy download {model})"


def root_verb_object(doc) -> tuple[str | None, str | None]:
    """The lemma of the first sentence's root when it is a verb, and of its first direct noun
    object: the pairs of Self-Instruct's and the paper's verb-noun figure."""
    root = next(iter(doc.sents)).root
    if root.pos_ != "VERB":
        return None, None
    obj = next((c for c in root.children if c.dep_ == "dobj" and c.pos_ in ("NOUN", "PROPN")), None)
    return root.lemma_.lower(), obj.lemma_.lower() if obj is not None else None


def verb_objects(instructions: list[str], nlp: Any) -> dict[str, Any]:
    """Top root verbs and their top direct objects, over instructions that have both."""
    docs = progress(nlp.pipe(instructions, batch_size=256), total=len(instructions), desc="stats: parse", unit="inst")
    pairs = [root_verb_object(doc) for doc in docs]
    objects: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    for verb, obj in pairs:
        if verb is not None and obj is not None:
            objects[verb][obj] += 1
    by_count = sorted(objects, key=lambda v: (-objects[v].total(), v))[:TOP_VERBS]
    top = [{"verb": v, "count": objects[v].total(),
            "objects": sorted(objects[v].items(), key=lambda oc: (-oc[1], oc[0]))[:TOP_OBJECTS]} for v in by_count]
    return {"parsed": len(instructions), "with_root_verb": sum(v is not None for v, _ in pairs),
            "with_verb_and_object": sum(c.total() for c in objects.values()), "top": top}


# ---- the stage ---------------------------------------------------------------------------

def load_dataset(spec: str) -> tuple[Path, list[dict]]:
    """The local path of the dataset (downloaded if ``hf://``) and its checked records."""
    path = resolve_input(spec)
    records = read_records(path)
    return path, records


def load_tokenizer(name: str):
    from transformers import AutoTokenizer

    if name.startswith(("/", ".")) and not Path(name).is_dir():
        # transformers would take it for a malformed hub id and say so.
        raise ConfigError(f"tokenizer: no such directory: {name}")
    try:
        return AutoTokenizer.from_pretrained(name)
    except (OSError, ValueError) as e:
        raise ConfigError(f"tokenizer: cannot load '{name}' with AutoTokenizer: {e}") from None


def compute(records: list[dict], cfg: StatsConfig, tokenizer, out: Path) -> dict:
    """Write the figures into ``out`` and return every number of the card."""
    n = len(records)
    empty = sum(not r["input"].strip() for r in records)
    stats: dict[str, Any] = {"records": n, "empty_input": {"count": empty, "share": empty / n}, "notes": {},
                             "figures": {}}

    def figure(name: str, plot: Callable, *args) -> None:
        plot(*args, out / f"{name}.png")
        stats["figures"][name] = f"{name}.png"

    counts = category_counts(records)
    stats["categories"] = {"counts": counts, "shares": {c: k / n for c, k in counts.items()},
                           "paper": {c: round(p / 100, 4) for c, p in PAPER_SHARES.items()}} if counts else None
    if counts:
        figure("categories", plot_categories, counts)
    else:
        stats["notes"]["categories"] = "No record has a category: the category distribution is left out " \
                                       "(run bioinstruct classify first)."

    words = {f: np.asarray([word_count(r[f]) for r in records]) for f in ("instruction", "input", "output")}
    stats["words"] = {f: describe(w) for f, w in words.items()}
    figure("words", plot_words, words)

    stats["tokens"] = None
    if tokenizer is None:
        stats["notes"]["tokens"] = "No tokenizer configured: token lengths are left out " \
                                   "(set tokenizer=DIR or a hub id, e.g. the model you will train)."
    else:
        full, prompt = token_lengths(records, tokenizer)
        stats["tokens"] = {"tokenizer": cfg.tokenizer, "length": describe(full),
                           "prompt_length": describe(prompt), "truncation": truncation(full, prompt, cfg.max_lengths)}
        figure("tokens", plot_tokens, full, stats["tokens"]["truncation"])

    decon = Path(cfg.run_dir) / "decontaminate"
    stats["contamination"] = None
    if is_complete(decon):
        stats["contamination"] = {"path": str(decon / "decisions.jsonl"), **read_json(decon / "summary.json")}
    else:
        stats["notes"]["contamination"] = f"No complete decontamination in {decon}: overlap with the evaluation " \
                                          "sets is unknown (run bioinstruct decontaminate)."

    stats["similarity"] = similarity([r["instruction"] for r in records], cfg.similarity_sample, cfg.seed)
    figure("similarity", plot_similarity, stats["similarity"])

    nlp, why = load_spacy(cfg.spacy_model)
    stats["verbs"] = None
    if nlp is None:
        stats["notes"]["verbs"] = f"Figure 1B (root verbs and objects) is left out: {why}."
    else:
        stats["verbs"] = {"model": cfg.spacy_model, **verb_objects([r["instruction"] for r in records], nlp)}
        figure("verbs", plot_verbs, stats["verbs"])
    return stats


def run(cfg: StatsConfig, *, force: bool = False) -> dict:
    """Validate the input (and load the tokenizer), then write the card under the contract."""
    if not cfg.input:
        raise ConfigError("no input: give --in FILE (or input=FILE)")
    path, records = load_dataset(cfg.input)
    tokenizer = load_tokenizer(cfg.tokenizer) if cfg.tokenizer else None

    def body(stage_dir: Path) -> dict:
        sha = hashlib.sha256(path.read_bytes()).hexdigest()
        stats = {"input": {"path": cfg.input, "sha256": sha}, **compute(records, cfg, tokenizer, stage_dir)}
        atomic_write_json(stage_dir / "stats.json", stats)
        atomic_write_text(stage_dir / "card.md", render_card(stats))
        return headline(stats)

    inputs, ignore = identity(cfg, path)
    return run_stage(Path(cfg.run_dir) / "stats", "stats", cfg, body, force=force, inputs=inputs, ignore=ignore)


def identity(cfg: StatsConfig, path: Path | None = None) -> tuple[dict, tuple[str, ...]]:
    """(inputs, keys compared through them): the dataset by content, wherever it lies or the
    run directory moves."""
    return {"input": path_identity(path or resolve_input(cfg.input))}, ("run_dir", "input")


def headline(stats: dict) -> dict:
    """The few numbers kept in the manifest and printed."""
    paper_cut = next((r for r in (stats["tokens"] or {}).get("truncation", []) if r["max_length"] == PAPER_MAX_LENGTH),
                     None)
    return {"records": stats["records"], "empty_input_share": stats["empty_input"]["share"],
            "mean_nearest_rouge_l": stats["similarity"]["scores"]["mean"],
            f"share_longer_than_{PAPER_MAX_LENGTH}": paper_cut["share_examples_longer"] if paper_cut else None,
            "figures": sorted(stats["figures"].values())}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--in", dest="input", metavar="FILE", help="the dataset, JSONL or JSON list")
    parser.add_argument("--run-dir", dest="run_dir", metavar="DIR", help="the card goes to DIR/stats/ (runs/default)")
    parser.add_argument("--tokenizer", metavar="DIR_OR_ID", help="HF tokenizer for token lengths (none: skipped)")
    add_config_arguments(parser)


def main(args: argparse.Namespace) -> int:
    cfg = config_from_args(StatsConfig, args, {k: getattr(args, k) for k in ("input", "run_dir", "tokenizer")})
    summary = run(cfg, force=args.force)["summary"]
    rows = [(k, f"{v:.3f}" if isinstance(v, float) else v) for k, v in summary.items() if k != "figures"]
    print(format_table(["", "value"], rows))
    print(f"card -> {Path(cfg.run_dir) / 'stats' / 'card.md'}")
    return 0


def _quickstart(q) -> StatsConfig:
    return StatsConfig(input=str(q.outputs["classify"] / "labelled.jsonl"), run_dir=str(q.run_dir),
                       tokenizer=str(q.model), max_lengths=[128, 256, 512])


STAGE = Stage(
    "stats", "the dataset card: sizes, categories, lengths, truncation, similarity", __name__,
    config=StatsConfig, run=run, outputs=lambda c: [Path(c.run_dir) / "stats"],
    identity=lambda c, _: identity(c), quickstart=_quickstart,
    resources={"mem_gb": 8, "time_limit_min": 60})
