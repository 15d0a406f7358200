"""Write the training subsets of the paper's ablations from labelled instructions.

    bioinstruct subsets run_dir=runs/v1                       # from runs/v1/classify/labelled.jsonl
    bioinstruct subsets run_dir=runs/v1 sizes=[1000,5000] formats=[jsonl,alpaca,hf]
    bioinstruct subsets run_dir=runs/v1 push_to_hub=me/bioinstruct-subsets   # only when asked

Input: --in, labelled records (default: run_dir/classify/labelled.jsonl; each with a
category among qa, ie, generation, other, unknown). When the run directory has a complete
decontaminate stage, a record it dropped is refused: subsets are built from the clean set.
Output (run_dir/subsets/<name>/): data.jsonl, and per `formats` alpaca.json (a JSON list
of {instruction, input, output}) and hf/ (datasets.save_to_disk). The stage manifest
(run_dir/subsets/manifest.json) lists every subset under summary.subsets with its
name, filter, size, seed and the sha256 of data.jsonl; sweeps refer to subsets by name.

Subsets (records keep their input order inside each):
  all                 every record (unknown-category ones included)
  qa, ie, ...         one category                   (the paper's single-task models)
  qa+ie, ...          a category plus one other      ("task A + best other task")
  all-but-qa, ...     every category but one
  size-1000, ...      seeded, nested random subsets of all (the data-size curve)
  matched-qa, ...     each category capped, by a seeded sample, to the smallest category's
                      size, so category and size are not confounded (~5.7k QA vs ~8.5k IE
                      at paper scale)
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import itertools
import random
from pathlib import Path
from typing import Literal

from ..runs.config import add_config_arguments, config_from_args, seed_field
from ..errors import ConfigError, DataError
from ..runs.identity import path_identity
from ..io.rows import atomic_write_json, read_jsonl, write_jsonl
from ..io.records import CATEGORIES, read_records, record_id
from ..runs.rundir import is_complete, run_stage
from ..reporting.tables import format_table
from .stage import Stage



@dataclasses.dataclass
class SubsetsConfig:
    run_dir: str = "runs/default"
    input: str | None = None  # default: run_dir/classify/labelled.jsonl
    seed: int = seed_field(0)
    sizes: list[int] = dataclasses.field(default_factory=lambda: [1000, 2500, 5000, 10000])
    single: bool = True
    pairs: bool = True
    all_but_one: bool = True
    size_matched: bool = True
    formats: list[Literal["jsonl", "alpaca", "hf"]] = dataclasses.field(default_factory=lambda: ["jsonl", "alpaca"])
    push_to_hub: str | None = None  # a hub dataset repo: each subset becomes one config of it

    def __post_init__(self):
        if "jsonl" not in self.formats:
            raise ValueError("formats must include jsonl (the format training reads)")
        if any(n < 1 for n in self.sizes):
            raise ValueError("sizes must be positive")


def plan(records: list[dict], cfg: SubsetsConfig) -> list[dict]:
    """Every subset as {name, filter, indices}; indices into ``records``, ascending."""
    by_cat = {c: [i for i, r in enumerate(records) if r["category"] == c] for c in CATEGORIES}
    subsets = [{"name": "all", "filter": "every record", "indices": list(range(len(records)))}]
    present = [c for c in CATEGORIES if by_cat[c]]
    if cfg.single:
        subsets += [{"name": c, "filter": f"category == {c}", "indices": by_cat[c]} for c in present]
    if cfg.pairs:
        subsets += [{"name": f"{a}+{b}", "filter": f"category in ({a}, {b})",
                     "indices": sorted(by_cat[a] + by_cat[b])} for a, b in itertools.combinations(present, 2)]
    if cfg.all_but_one and len(present) > 2:
        subsets += [{"name": f"all-but-{c}", "filter": f"category in ({', '.join(o for o in present if o != c)})",
                     "indices": sorted(i for o in present if o != c for i in by_cat[o])} for c in present]
    order = list(range(len(records)))
    random.Random(cfg.seed).shuffle(order)  # one shuffle: smaller sizes are prefixes of larger
    subsets += [{"name": f"size-{n}", "filter": f"first {n} of a seed-{cfg.seed} shuffle", "indices": sorted(order[:n])}
                for n in sorted(set(cfg.sizes))]
    if cfg.size_matched and len(present) > 1:
        smallest = min(len(by_cat[c]) for c in present)
        for c in present:
            sample = random.Random(f"{cfg.seed}:{c}").sample(by_cat[c], smallest)
            subsets.append({"name": f"matched-{c}", "filter": f"category == {c}, {smallest} sampled",
                            "indices": sorted(sample)})
    return subsets


def _write(subset: dict, records: list[dict], out: Path, cfg: SubsetsConfig) -> dict:
    rows = [records[i] for i in subset["indices"]]
    write_jsonl(out / "data.jsonl", rows)
    if "alpaca" in cfg.formats:
        atomic_write_json(out / "alpaca.json", [{k: r[k] for k in ("instruction", "input", "output")} for r in rows])
    if "hf" in cfg.formats or cfg.push_to_hub:
        import datasets

        dataset = datasets.Dataset.from_list(rows)
        if "hf" in cfg.formats:
            dataset.save_to_disk(str(out / "hf"))
        if cfg.push_to_hub:
            dataset.push_to_hub(cfg.push_to_hub, config_name=subset["name"].replace("+", "_"))
    return {"name": subset["name"], "filter": subset["filter"], "size": len(rows), "seed": cfg.seed,
            "sha256": hashlib.sha256((out / "data.jsonl").read_bytes()).hexdigest()}


def check_clean(records: list[dict], source: str, run_dir: str) -> None:
    """Refuse records that the run directory's decontaminate stage dropped: subsets are
    built from the clean set (a classify made before decontamination is one way to get them)."""
    stage = Path(run_dir) / "decontaminate"
    if not is_complete(stage):
        return
    dropped = {d["id"] for d in read_jsonl(stage / "decisions.jsonl") if d["decision"] == "dropped"}
    found = [i for i, r in enumerate(records) if record_id(r) in dropped]
    if found:
        raise DataError(f"{source}: {len(found)} record(s) (first: record {found[0]}) are ones {stage} dropped as "
                        "contaminated with evaluation items; classify the clean set (bioinstruct classify "
                        f"run_dir={run_dir} --force reads decontaminate/clean.jsonl), then make the subsets")


def run(cfg: SubsetsConfig, *, force: bool = False) -> dict:
    source = cfg.input or str(Path(cfg.run_dir) / "classify" / "labelled.jsonl")
    records = read_records(source, required=("instruction", "output", "category"))
    check_clean(records, source, cfg.run_dir)
    if too_big := sorted(n for n in set(cfg.sizes) if n >= len(records)):
        # Dropping them would leave the data-size sweep's training jobs without their subsets.
        raise ConfigError(f"sizes: {', '.join(map(str, too_big))} not below the {len(records)} records of {source} "
                          f"(the subset 'all' holds every record); leave them out of sizes")

    def body(stage_dir: Path) -> dict:
        subsets = [_write(s, records, stage_dir / s["name"], cfg) for s in plan(records, cfg)]
        return {"records": len(records), "subsets": subsets}

    inputs, ignore = identity(cfg)
    return run_stage(Path(cfg.run_dir) / "subsets", "subsets", cfg, body, force=force, inputs=inputs,
                     ignore=ignore)


def identity(cfg: SubsetsConfig) -> tuple[dict, tuple[str, ...]]:
    """(inputs, keys compared through them): the labelled records by content, wherever they
    lie or the run directory moves."""
    source = cfg.input or str(Path(cfg.run_dir) / "classify" / "labelled.jsonl")
    return {"input": source if source.startswith("hf://") else path_identity(source)}, ("run_dir", "input")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--in", dest="input", metavar="FILE", help="labelled instructions (JSONL or JSON list)")
    add_config_arguments(parser)


def main(args: argparse.Namespace) -> int:
    cfg = config_from_args(SubsetsConfig, args, {"input": args.input})
    summary = run(cfg, force=args.force)["summary"]
    print(format_table(["subset", "size", "filter"], [(s["name"], s["size"], s["filter"]) for s in summary["subsets"]]))
    print(f"-> {Path(cfg.run_dir) / 'subsets'}/<name>/data.jsonl")
    return 0


STAGE = Stage(
    "subsets", "write the training subsets for the ablations (categories, data sizes)", __name__,
    config=SubsetsConfig, run=run, outputs=lambda c: [Path(c.run_dir) / "subsets"],
    identity=lambda c, _: identity(c),
    quickstart=lambda q: SubsetsConfig(run_dir=str(q.run_dir), sizes=q.settings.sizes()),
    resources={"mem_gb": 8, "time_limit_min": 60})
