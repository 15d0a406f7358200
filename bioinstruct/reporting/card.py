"""The dataset card (stats' card.md) in Markdown, and the paper's numbers it is set against."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..io.records import PAPER_SHARES
from .tables import markdown_table

PAPER_MAX_LENGTH = 512
TOP_VERBS, TOP_OBJECTS = 20, 4  # the paper's Figure 1B
CONTAMINATION_EXAMPLES = 5


def _pct(x: float) -> str:
    return f"{100 * x:.1f}%"


def _num(x: Any) -> str:
    return f"{x:,}" if isinstance(x, int) else f"{x:,.1f}"


def _short(text: str, width: int = 110) -> str:
    text = " ".join(text.split())
    return text if len(text) <= width else text[:width - 1] + "…"


def render_card(stats: dict) -> str:
    inp, notes = stats["input"], stats["notes"]
    out = [f"# Dataset card: {Path(inp['path']).name}", "",
           f"Input `{inp['path']}` (sha256 `{inp['sha256'][:16]}`). Numbers: `stats.json`; "
           "config: `config.yaml`. Percentiles interpolate linearly.", "",
           "## Size", "",
           markdown_table(["", "count", "share"], [
               ("records", f"{stats['records']:,}", "100.0%"),
               ("empty input", f"{stats['empty_input']['count']:,}", _pct(stats["empty_input"]["share"]))]), ""]

    out += ["## Categories", ""]
    if stats["categories"]:
        counts, total = stats["categories"]["counts"], stats["records"]
        out += [markdown_table(["category", "count", "share", "paper"],
                          [(c, f"{n:,}", _pct(n / total), f"{PAPER_SHARES[c]:.1f}%" if c in PAPER_SHARES else "–")
                           for c, n in counts.items()]), "", "![categories](categories.png)", ""]
    else:
        out += [f"*{notes['categories']}*", ""]

    out += ["## Words per field", "", "Whitespace-separated words.", "",
            markdown_table(["field", "min", "median", "mean", "p90", "p99", "max"],
                      [(f, *(_num(d[k]) for k in ("min", "median", "mean", "p90", "p99", "max")))
                       for f, d in stats["words"].items()]), "", "![words](words.png)", ""]

    out += ["## Training length in tokens", ""]
    tokens = stats["tokens"]
    if tokens:
        d = tokens["length"]
        out += [f"Tokenizer `{tokens['tokenizer']}`. One example is the full Alpaca training prompt (with or "
                "without its `### Input:` block) with the response, plus EOS. *Responses lost*: the prompt "
                "alone fills max_length, so none of the response is trained on.", "",
                f"Length: min {d['min']:,}, median {d['median']:,.0f}, mean {d['mean']:,.1f}, p90 {d['p90']:,.0f}, "
                f"p99 {d['p99']:,.0f}, max {d['max']:,}.", "",
                markdown_table(["max_length", "examples longer", "tokens cut off", "responses lost"],
                          [(f"{r['max_length']}{' (paper)' if r['max_length'] == PAPER_MAX_LENGTH else ''}",
                            f"{_pct(r['share_examples_longer'])} ({r['examples_longer']:,})",
                            f"{_pct(r['share_tokens_cut'])} ({r['tokens_cut']:,})",
                            f"{_pct(r['share_responses_lost'])} ({r['responses_lost']:,})")
                           for r in tokens["truncation"]]), "", "![tokens](tokens.png)", ""]
    else:
        out += [f"*{notes['tokens']}*", ""]

    sim = stats["similarity"]
    d, threshold = sim["scores"], sim["near_duplicate_threshold"]
    scope = (f"a random sample of {sim['scored']:,} of the {sim['of']:,} instructions (seed {sim['seed']}), "
             f"each against all {sim['of'] - 1:,} others" if sim["sampled"]
             else f"all {sim['of']:,} instructions, each against all others")
    out += ["## Instruction similarity", "",
            f"ROUGE-L F (rouge-score's tokens, no stemming) of each instruction to its nearest other "
            f"instruction, exactly, for {scope}.", "",
            markdown_table(["mean", "median", "p90", "p99", "max", f"share > {threshold} (filter threshold)"],
                      [(f"{d['mean']:.3f}", f"{d['median']:.3f}", f"{d['p90']:.3f}", f"{d['p99']:.3f}",
                        f"{d['max']:.3f}", _pct(sim["share_over_threshold"]))]), "",
            "![similarity](similarity.png)", ""]
    if sim["most_similar_pairs"]:
        out += ["Most similar pairs:", "",
                markdown_table(["ROUGE-L F", "instruction", "nearest other"],
                          [(f"{p['score']:.3f}", _short(p["a"]), _short(p["b"])) for p in sim["most_similar_pairs"]]),
                ""]

    out += ["## Contamination with evaluation items", ""]
    con = stats.get("contamination")
    if con:
        out += [f"From `{con['path']}` (bioinstruct decontaminate, policy {con['policy']}): {con['contaminated']:,} "
                f"of {con['records']:,} instructions held an item of an evaluation set "
                f"({', '.join(f'{r} {n:,}' for r, n in con['reasons'].items()) or 'none'}); "
                f"{con['clean']:,} went on."
                + (f" {con['phrase_only']:,} more shared only one phrase with an item (a coincidence, not a copy) "
                   "and were kept." if con.get("phrase_only") else ""), "",
                markdown_table(["task", "items checked", "instructions hit", "items touched"],
                          [(t, f"{v['items']:,}" if not v.get("missing") else f"no data ({v['missing']})",
                            f"{v['records']:,}", f"{v['items_touched']:,}") for t, v in con["tasks"].items()]), ""]
        if con["examples"]:
            out += ["Examples:", "",
                    markdown_table(["task", "item", "method", "overlap", "instruction", "item text"],
                              [(e["task"], e["item_id"], e["method"],
                                ", ".join(f"{k} {v}" for k, v in e["overlap"].items() if k != "example"),
                                _short(e["record_text"], 80), _short(e["item_text"], 80))
                               for e in con["examples"][:CONTAMINATION_EXAMPLES]]), ""]
    else:
        out += [f"*{notes['contamination']}*", ""]

    out += ["## Root verbs and their direct objects (the paper's Figure 1B)", ""]
    verbs = stats["verbs"]
    if verbs:
        out += [f"Parsed with spaCy `{verbs['model']}`: {verbs['with_root_verb']:,} of {verbs['parsed']:,} "
                f"instructions start with a root verb, {verbs['with_verb_and_object']:,} with a direct noun object.",
                "", markdown_table(["verb", "count", f"top {TOP_OBJECTS} objects"],
                              [(e["verb"], f"{e['count']:,}", ", ".join(f"{o} ({c:,})" for o, c in e["objects"]))
                               for e in verbs["top"]]), "", "![verbs](verbs.png)", ""]
    else:
        out += [f"*{notes['verbs']}*", ""]
    return "\n".join(out)
