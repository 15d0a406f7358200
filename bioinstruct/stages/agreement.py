"""Agreement between category label sets (Krippendorff's alpha), and annotation sheets.

    bioinstruct agreement --labels runs/v1/classify/labelled.jsonl anna.csv ben.csv
    bioinstruct agreement --labels gpt4.jsonl human.jsonl --out runs/v1/agreement/report.json
    bioinstruct agreement id_key=uid label_key=label --labels a.jsonl b.jsonl
    bioinstruct agreement --sample 200 --from runs/v1/classify/labelled.jsonl --sheet anna.csv --seed 0

Input (--labels): two or more label sets, one coder each: JSONL records with an id (key
id_key) and a category (key label_key: qa, ie, generation or other; unknown, null or a blank
are missing labels), or annotation sheets filled in (*.csv). Units are ids; an id absent from
a set is a missing label there. A record without an id gets classify's content-hash id.
Output: Krippendorff's alpha for nominal data (the paper's GPT-4 vs human value: 0.83), the
number of units, of pairable units (labelled in two or more sets) and of ids in one set only;
per-set category counts; for exactly two sets, the confusion matrix and raw percent agreement.
--out FILE.json writes all of it.

Input (--sample): --from, records (JSONL or JSON list, e.g. classify's labelled.jsonl).
Output: --sheet FILE.csv, N records sampled with --seed, columns id, instruction, input, output
and an empty category column for a human; UTF-8 with a byte order mark, every field quoted.
FILE.README.txt beside it says how to fill it in and gives the category definitions and
examples of the classify prompt. An existing sheet is kept unless --force: it may hold labels.
"""

from __future__ import annotations

import argparse
import collections
import csv
import dataclasses
import difflib
import io
import math
import random
from pathlib import Path
from typing import Any, Hashable, Iterator, Sequence

import numpy as np

from ..runs.config import add_config_arguments, config_from_args, ranged, seed_field
from ..errors import ConfigError, DataError, UserError
from ..io.rows import atomic_open, atomic_write_json, atomic_write_text, iter_jsonl_numbered, read_text
from ..llm.prompts import PromptTemplate
from ..io.records import CATEGORIES, LABELS, UNKNOWN, read_records, record_id
from ..reporting.tables import format_table
from .stage import Stage


PAPER_ALPHA = 0.83  # GPT-4 vs human annotators, Tran et al. 2024
SHEET_TEXT = ("instruction", "input", "output")
# Excel runs a cell starting with one of these as a formula (a bullet list "- aspirin"
# shows as #NAME?); a leading tab keeps it text (OWASP's CSV-injection advice).
FORMULA_STARTS = ("=", "+", "-", "@")


@dataclasses.dataclass
class AgreementConfig:
    labels: list[str] = dataclasses.field(default_factory=list)  # label sets: JSONL or .csv sheets
    out: str | None = None  # the report as JSON
    id_key: str = "id"
    label_key: str = "category"
    sample: int | None = ranged(None, low=1)  # records on the annotation sheet
    sample_from: str | None = None  # records to sample them from (--from)
    sheet: str | None = None  # the sheet to write (.csv)
    seed: int = seed_field(0)
    prompt_template: str | None = None  # classify prompt for the sheet's README; None: the package's


# ---- Krippendorff's alpha -----------------------------------------------------------------

def krippendorff_alpha_nominal(units: Sequence[Sequence[Hashable | None]]) -> float:
    """Krippendorff's alpha for nominal data.

    ``units[u]`` holds the labels coders gave unit u (one entry per coder, None where a
    coder gave none; labels are compared by equality only). Units with fewer than two
    labels cannot be paired and do not count. Coincidence-matrix formulation
    (Krippendorff 2011, "Computing Krippendorff's alpha-reliability"):

        o[c,k] = sum over units of n_uc * (n_uk - [c == k]) / (m_u - 1)
        n_c = sum_k o[c,k],  n = sum_c n_c
        alpha = 1 - (n - 1) * (n - sum_c o[c,c]) / (n**2 - sum_c n_c**2)

    Returns nan when the paired labels are all one category (no variation: alpha is 0/0).
    Raises ValueError when no unit has two labels.
    """
    paired = [labels for unit in units if len(labels := [v for v in unit if v is not None]) >= 2]
    if not paired:
        raise ValueError("no unit has labels from two or more coders")
    index = {v: i for i, v in enumerate(dict.fromkeys(v for labels in paired for v in labels))}
    if len(index) < 2:
        return float("nan")
    counts = np.zeros((len(paired), len(index)))  # n_uc
    for u, labels in enumerate(paired):
        for v in labels:
            counts[u, index[v]] += 1
    weighted = counts / (counts.sum(axis=1, keepdims=True) - 1)
    o = weighted.T @ counts - np.diag(weighted.sum(axis=0))
    n_c = o.sum(axis=1)
    n = n_c.sum()
    return float(1 - (n - 1) * (n - np.trace(o)) / (n * n - (n_c ** 2).sum()))


# ---- label sets ---------------------------------------------------------------------------

@dataclasses.dataclass
class LabelSet:
    """One coder's labels: id -> category, None for a missing one (blank or unknown)."""
    path: str
    labels: dict[str, str | None]
    counts: collections.Counter  # category, "unknown" or "blank" -> records


def _unit_id(record: dict, id_key: str, where: str) -> str:
    value = record.get(id_key)
    if value is None and isinstance(record.get("instruction"), str):
        # classify's id for records without one, so a sheet sampled from the released
        # JSON joins classify's labelled.jsonl.
        return record_id({"instruction": record["instruction"], "input": record.get("input") or ""})
    if isinstance(value, bool) or not isinstance(value, (str, int)) or not str(value).strip():
        raise DataError(f"{where}: record has no usable '{id_key}' (got {value!r}; set id_key=KEY "
                        f"to the field that identifies an instruction)")
    return str(value).strip()


def _label(value: Any, where: str, label_key: str) -> str | None:
    """The category, "unknown", or None for a blank one."""
    if value is None:
        return None
    if not isinstance(value, str):
        raise DataError(f"{where}: '{label_key}' must be a string or null, got {type(value).__name__}")
    label = value.strip().lower()
    if not label:
        return None
    if label not in LABELS:
        closest = difflib.get_close_matches(label, LABELS, n=1, cutoff=0.0)[0]
        raise DataError(f"{where}: {label_key} '{value}' is not one of {', '.join(LABELS)} "
                        f"(closest valid label: '{closest}')")
    return label


def _csv_records(path: Path, label_key: str) -> Iterator[tuple[str, int, dict]]:
    """``(where, line, record)`` for each row of a sheet; ``line`` is where the row starts
    in the file (a quoted field may span lines), ``where`` adds the spreadsheet row."""
    # with or without the BOM we write, the first column is "id", not "\ufeffid"; a byte that
    # is not UTF-8 is named with its line
    text = read_text(path)
    first = text.split("\n", 1)[0]
    try:  # Excel saves ';'-separated CSV in locales with a decimal comma
        delimiter = csv.Sniffer().sniff(first, delimiters=",;\t").delimiter
    except csv.Error:
        delimiter = ","
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter)
    header: list[str] | None = None
    start = 1
    for row_number, row in enumerate(reader, 1):
        line, start = start, reader.line_num + 1
        if not any(cell.strip() for cell in row):  # blank lines, rows of empty cells
            continue
        if header is None:
            header = [cell.strip() for cell in row]
            if label_key not in header:
                raise DataError(f"{path}:{line}: no '{label_key}' column (columns: {', '.join(header)}; "
                                f"set label_key=COLUMN)")
            continue
        # Some editors drop trailing empty cells: a short row has blank categories.
        yield (f"{path}:{line} (row {row_number})", line,
               {key: row[i] if i < len(row) else "" for i, key in enumerate(header)})


def _jsonl_records(path: Path, label_key: str) -> Iterator[tuple[str, int, dict]]:
    for line, record in iter_jsonl_numbered(path):
        where = f"{path}:{line}"
        if not isinstance(record, dict):
            raise DataError(f"{where}: expected a JSON object, got {type(record).__name__}")
        if label_key not in record:
            raise DataError(f"{where}: record has no '{label_key}' (keys: {', '.join(record) or 'none'}; "
                            f"set label_key=KEY)")
        yield where, line, record


def read_labels(path: str | Path, id_key: str = "id", label_key: str = "category") -> LabelSet:
    """One label set from JSONL or, by its ``.csv`` suffix, a filled annotation sheet."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    located = _csv_records if path.suffix.lower() == ".csv" else _jsonl_records
    labels: dict[str, str | None] = {}
    first_line: dict[str, int] = {}
    counts: collections.Counter = collections.Counter()
    for where, line, record in located(path, label_key):
        uid = _unit_id(record, id_key, where)
        if uid in first_line:
            raise DataError(f"{where}: duplicate id '{uid}' (first at line {first_line[uid]})")
        first_line[uid] = line
        label = _label(record[label_key], where, label_key)
        counts[label or "blank"] += 1
        labels[uid] = None if label == UNKNOWN else label
    return LabelSet(str(path), labels, counts)


# ---- the report ---------------------------------------------------------------------------

def agreement_report(sets: Sequence[LabelSet]) -> dict:
    """Alpha, unit counts, per-set category counts and, for two sets, the confusion matrix
    (rows: the first set) and percent agreement over ids labelled in both."""
    ids = list(dict.fromkeys(uid for s in sets for uid in s.labels))
    units = [[s.labels.get(uid) for s in sets] for uid in ids]
    pairable = sum(1 for unit in units if sum(v is not None for v in unit) >= 2)
    if not pairable:
        empty = [s.path for s in sets if not any(s.labels.values())]
        hint = (f"{', '.join(empty)} has no category filled in" if empty
                else "do they label the same records, with the same ids?")
        raise UserError(f"no id has a category in two or more of the {len(sets)} label sets "
                        f"({len(ids)} ids in all); {hint}")
    alpha = krippendorff_alpha_nominal(units)
    report: dict[str, Any] = {
        "alpha": alpha if math.isfinite(alpha) else None,  # None: one category only, alpha undefined
        "units": len(ids),
        "pairable_units": pairable,
        "ids_in_one_set": sum(1 for uid in ids if sum(uid in s.labels for s in sets) == 1),
        "unknown_labels": sum(s.counts[UNKNOWN] for s in sets),
        "sets": [{"path": s.path, "records": len(s.labels),
                  "counts": {c: s.counts[c] for c in (*LABELS, "blank")}} for s in sets],
    }
    if len(sets) == 2:
        matrix = [[0] * len(CATEGORIES) for _ in CATEGORIES]
        for a, b in units:
            if a is not None and b is not None:
                matrix[CATEGORIES.index(a)][CATEGORIES.index(b)] += 1
        agreeing = sum(matrix[i][i] for i in range(len(CATEGORIES)))
        report["confusion"] = {"rows": sets[0].path, "columns": sets[1].path,
                               "labels": list(CATEGORIES), "matrix": matrix}
        report["agreeing_units"] = agreeing
        report["percent_agreement"] = 100 * agreeing / pairable
    return report


def format_report(report: dict) -> str:
    alpha = (f"{report['alpha']:.4f}" if report["alpha"] is not None
             else "undefined (every paired label is the same category)")
    lines = [f"Krippendorff's alpha (nominal): {alpha}   (paper, GPT-4 vs human annotators: {PAPER_ALPHA})",
             f"units (ids): {report['units']}   pairable (labelled in 2+ sets): {report['pairable_units']}   "
             f"in one set only: {report['ids_in_one_set']}   unknown labels: {report['unknown_labels']}",
             "",
             format_table(["labels", *LABELS, "blank", "records"],
                          [(s["path"], *s["counts"].values(), s["records"]) for s in report["sets"]])]
    if "confusion" in report:
        confusion = report["confusion"]
        lines += ["", f"confusion matrix (rows: {confusion['rows']}, columns: {confusion['columns']})",
                  format_table(["", *confusion["labels"]],
                               [(label, *row) for label, row in zip(confusion["labels"], confusion["matrix"])]),
                  f"percent agreement: {report['percent_agreement']:.1f}% "
                  f"({report['agreeing_units']} of {report['pairable_units']} ids labelled in both)"]
    return "\n".join(lines)


def compare(cfg: AgreementConfig) -> dict:
    if len(cfg.labels) < 2:
        raise ConfigError("give two or more label sets: --labels A.jsonl B.jsonl [...] "
                          "(or write a sheet: --sample N --from FILE --sheet FILE.csv)")
    report = agreement_report([read_labels(p, cfg.id_key, cfg.label_key) for p in cfg.labels])
    if cfg.out:
        atomic_write_json(cfg.out, report)
    return report


# ---- annotation sheets --------------------------------------------------------------------

def _sheet_cell(text: str) -> str:
    return "\t" + text if text.startswith(FORMULA_STARTS) else text


def category_guide(template: PromptTemplate) -> str:
    """The classify prompt's definitions and examples: its user message up to the
    instruction to label, so people annotate by the rules the model was given."""
    lines = template.user.splitlines()
    end = next((i for i, line in enumerate(lines) if "{instruction}" in line), len(lines))
    return "\n".join(lines[:end]).strip()


def write_sheet(cfg: AgreementConfig, *, force: bool = False) -> Path:
    """Write the annotation sheet and its README; return the sheet's path."""
    if not (cfg.sample_from and cfg.sheet):
        raise ConfigError("--sample needs --from FILE (records to sample) and --sheet FILE.csv")
    sheet = Path(cfg.sheet)
    if sheet.suffix.lower() != ".csv":
        raise ConfigError(f"--sheet {sheet}: the name must end in .csv (that is how --labels reads it back)")
    if sheet.exists() and not force:
        raise UserError(f"{sheet} exists and may hold someone's labels; use another name, or --force to replace it")
    records = read_records(cfg.sample_from)
    if cfg.sample > len(records):
        raise ConfigError(f"sample={cfg.sample} but {cfg.sample_from} has {len(records)} records")
    ids = [_unit_id(r, cfg.id_key, f"{cfg.sample_from}: record {i + 1}") for i, r in enumerate(records)]
    first: dict[str, int] = {}
    for i, uid in enumerate(ids):
        if uid in first:  # the sheet could not be matched back
            raise DataError(f"{cfg.sample_from}: records {first[uid] + 1} and {i + 1} share the id '{uid}'")
        first[uid] = i
    chosen = random.Random(cfg.seed).sample(range(len(records)), cfg.sample)

    buffer = io.StringIO(newline="")
    writer = csv.writer(buffer, quoting=csv.QUOTE_ALL)  # "\r\n" rows (RFC 4180); "\n" in a field stays
    writer.writerow([cfg.id_key, *SHEET_TEXT, cfg.label_key])
    for i in chosen:
        writer.writerow([ids[i], *(_sheet_cell(records[i][k]) for k in SHEET_TEXT), ""])
    # The BOM: Excel reads a double-clicked CSV in the legacy code page unless it starts
    # with one, which garbles Greek letters, micro signs and accents; LibreOffice and our
    # reader (utf-8-sig) take it either way.
    with atomic_open(sheet, "wb") as f:
        f.write(buffer.getvalue().encode("utf-8-sig"))
    template = PromptTemplate.load(cfg.prompt_template, "classify.yaml", ("instruction", "input"))
    atomic_write_text(sheet.with_name(sheet.stem + ".README.txt"), f"""\
Annotation sheet {sheet.name}: {cfg.sample} records sampled from {cfg.sample_from} (seed {cfg.seed}).

Fill in the '{cfg.label_key}' column, one label per row: {', '.join(CATEGORIES)}.
Leave the cell empty if you cannot decide: an empty cell is a missing label, not a disagreement.
Do not edit the '{cfg.id_key}' column: labels are matched to other label sets by id.
Judge the task the instruction asks for; the input and output are there for context.
Save as CSV (Excel: "CSV UTF-8 (Comma delimited)"), then compare, e.g. with the model's labels:

    bioinstruct agreement --labels {cfg.sample_from} {sheet}

The categories as the classify prompt gives them to the model (prompt {template.sha256}):

{category_guide(template)}
""")
    return sheet


# ---- CLI ----------------------------------------------------------------------------------

def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--labels", nargs="+", metavar="FILE", help="two or more label sets: JSONL or .csv sheets")
    parser.add_argument("--out", metavar="FILE.json", help="also write the report as JSON")
    parser.add_argument("--sample", type=int, metavar="N", help="write an annotation sheet of N sampled records")
    parser.add_argument("--from", dest="sample_from", metavar="FILE", help="records to sample (JSONL or JSON list)")
    parser.add_argument("--sheet", metavar="FILE.csv", help="the annotation sheet to write")
    parser.add_argument("--seed", type=int, help="sampling seed (0)")
    add_config_arguments(parser)


def _split_labels(values: list[str] | None) -> tuple[list[str], list[str]]:
    """--labels takes every word after it, so 'key=value' words there that name no file
    are the overrides they look like."""
    values = values or []
    overrides = [v for v in values if "=" in v and not Path(v).exists()]
    return [v for v in values if v not in overrides], overrides


def main(args: argparse.Namespace) -> int:
    labels, overrides = _split_labels(args.labels)
    args.overrides = [*args.overrides, *overrides]
    flags = {"labels": labels or None, "out": args.out, "sample": args.sample,
             "sample_from": args.sample_from, "sheet": args.sheet, "seed": args.seed}
    cfg = config_from_args(AgreementConfig, args, flags)
    if cfg.sample is None:
        print(format_report(compare(cfg)))
        if cfg.out:
            print(f"-> {cfg.out}")
        return 0
    if cfg.labels:
        raise ConfigError("use either --labels (compare label sets) or --sample (write a sheet), not both")
    sheet = write_sheet(cfg, force=args.force)
    print(f"wrote {cfg.sample} records to {sheet} (definitions: {sheet.stem}.README.txt); fill in the "
          f"'{cfg.label_key}' column, then: bioinstruct agreement --labels {cfg.sample_from} {sheet}")
    return 0


def _quickstart(q) -> AgreementConfig | None:
    sheet = q.folder / "sheet.csv"
    if sheet.exists() and not q.force:  # a sheet may hold someone's labels: never redone silently
        return None
    return AgreementConfig(sample=20, sample_from=str(q.outputs["classify"] / "labelled.jsonl"), sheet=str(sheet))


# Not a job kind: comparing labels needs people's labels; the quickstart writes the sheet.
STAGE = Stage(
    "agreement", "Krippendorff's alpha between label sets; annotation sheets", __name__,
    config=AgreementConfig, run=write_sheet, outputs=lambda c: [Path(c.sheet).parent] if c.sheet else [],
    job=False, quickstart=_quickstart)
