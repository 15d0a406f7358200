"""The agreement stage: alpha against the krippendorff package, the report, sheets, bad input."""

import csv
import json

import krippendorff
import numpy as np
import pytest

from bioinstruct.stages.agreement import krippendorff_alpha_nominal, read_labels
from bioinstruct.cli import main

pytestmark = pytest.mark.unit

CATS = ["qa", "ie", "generation", "other"]


def reference_alpha(units):
    """The krippendorff package on the same data (coders x units, nan for missing)."""
    data = [[np.nan if unit[c] is None else unit[c] for unit in units] for c in range(len(units[0]))]
    return krippendorff.alpha(reliability_data=data, level_of_measurement="nominal")


def random_units(rng):
    """Labels from coders who copy a unit's true category with some skill, with gaps."""
    n_coders, n_units = rng.integers(2, 6), rng.integers(5, 201)
    skill, missing = rng.uniform(0, 1), rng.uniform(0, 0.7)
    cats = CATS[:rng.integers(2, 5)]
    units = []
    for truth in rng.choice(cats, n_units):
        units.append([None if rng.random() < missing else str(truth if rng.random() < skill else rng.choice(cats))
                      for _ in range(n_coders)])
    return units


def test_matches_the_krippendorff_package_on_random_label_sets():
    rng = np.random.default_rng(0)
    compared, with_single_label_units, alphas = 0, 0, []
    while compared < 400:
        units = random_units(rng)
        labelled = [sum(v is not None for v in unit) for unit in units]
        if max(labelled) < 2 or len({v for unit in units for v in unit if v is not None}) < 2:
            continue  # the package refuses these; the edge cases are tested below
        ours, theirs = krippendorff_alpha_nominal(units), reference_alpha(units)
        if np.isnan(theirs):  # every paired label is one category
            assert np.isnan(ours)
            continue
        assert ours == pytest.approx(theirs, abs=1e-9)
        compared += 1
        with_single_label_units += 1 in labelled
        alphas.append(ours)
    assert with_single_label_units > 100
    assert min(alphas) < 0 < 0.9 < max(alphas)  # the sets span the whole range of alpha


def test_textbook_examples():
    # Krippendorff (2011), "Computing Krippendorff's alpha-reliability": binary data, two
    # observers (alpha 0.095), and four observers with missing values (nominal alpha 0.743).
    a, b = [0, 1, 0, 0, 0, 0, 0, 0, 1, 0], [1, 1, 1, 0, 0, 1, 0, 0, 0, 0]
    assert krippendorff_alpha_nominal(list(zip(a, b))) == pytest.approx(2 / 21, abs=1e-12)
    n = None
    coders = [[1, 2, 3, 3, 2, 1, 4, 1, 2, n, n, n],
              [1, 2, 3, 3, 2, 2, 4, 1, 2, 5, n, 3],
              [n, 3, 3, 3, 2, 3, 4, 2, 2, 5, 1, n],
              [1, 2, 3, 3, 2, 4, 4, 1, 2, 5, 1, n]]
    units = [list(u) for u in zip(*coders)]
    assert round(krippendorff_alpha_nominal(units), 3) == 0.743
    assert krippendorff_alpha_nominal(units) == pytest.approx(reference_alpha(units), abs=1e-12)


def test_perfect_agreement_systematic_disagreement_and_ignored_units():
    assert krippendorff_alpha_nominal([["qa", "qa"], ["ie", "ie", "ie"], ["other", None, "other"]]) == 1.0
    assert krippendorff_alpha_nominal([["qa", "ie"], ["ie", "qa"]]) == pytest.approx(-0.5)
    swapped = [["qa", "ie"], ["ie", "qa"], ["generation", "other"], ["other", "generation"]] * 5
    assert krippendorff_alpha_nominal(swapped) < -0.3
    units = [["qa", "qa"], ["qa", "ie"], ["ie", "ie"], ["generation", "ie"]]
    padded = units + [["other", None], [None, None], [None, "qa"]]  # nothing to pair
    assert krippendorff_alpha_nominal(padded) == krippendorff_alpha_nominal(units)


def test_no_variation_is_nan_and_nothing_to_pair_is_an_error():
    assert np.isnan(krippendorff_alpha_nominal([["qa", "qa"], ["qa", "qa", None], ["ie", None]]))
    with pytest.raises(ValueError, match="no unit has labels from two"):
        krippendorff_alpha_nominal([["qa", None], [None, "ie"]])


# ---- the CLI ------------------------------------------------------------------------------

def write_jsonl(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


def labelled(ids_and_labels, **extra):
    return [{"id": i, "category": c, **extra} for i, c in ids_and_labels]


@pytest.fixture
def two_sets(tmp_path):
    a = write_jsonl(tmp_path / "gpt4.jsonl", labelled(
        [("1", "qa"), ("2", "qa"), ("3", "ie"), ("4", "generation"), ("5", "other"), ("6", "ie"),
         ("7", "unknown"), ("8", "qa")]))
    b = write_jsonl(tmp_path / "human.jsonl", labelled(
        [("1", "qa"), ("2", "ie"), ("3", "ie"), ("4", "generation"), ("5", "generation"), ("6", "ie"),
         ("7", "qa"), ("9", None)]))
    return a, b


def test_cli_two_sets_prints_counts_confusion_and_writes_json(two_sets, tmp_path, capsys):
    a, b = two_sets
    out = tmp_path / "report" / "agreement.json"
    assert main(["agreement", "--labels", str(a), str(b), "--out", str(out)]) == 0
    text = capsys.readouterr().out
    # Pairable: ids 1-6 (7 is unknown in gpt4, 8 and 9 are in one set only).
    expected = krippendorff_alpha_nominal([["qa", "qa"], ["qa", "ie"], ["ie", "ie"], ["generation", "generation"],
                                           ["other", "generation"], ["ie", "ie"]])
    assert f"Krippendorff's alpha (nominal): {expected:.4f}" in text
    assert "units (ids): 9   pairable (labelled in 2+ sets): 6   in one set only: 2   unknown labels: 1" in text
    rows = {line.split()[0]: line.split()[1:] for line in text.splitlines() if line.startswith(str(tmp_path))}
    assert rows[str(a)] == ["3", "2", "1", "1", "1", "0", "8"]  # qa ie generation other unknown blank records
    assert rows[str(b)] == ["2", "3", "2", "0", "0", "1", "8"]
    assert f"confusion matrix (rows: {a}, columns: {b})" in text
    assert "qa          1   1   0           0" in text
    assert "other       0   0   1           0" in text
    assert "percent agreement: 66.7% (4 of 6 ids labelled in both)" in text

    report = json.loads(out.read_text())
    assert report["alpha"] == pytest.approx(expected)
    assert report["units"] == 9 and report["pairable_units"] == 6 and report["ids_in_one_set"] == 2
    assert report["unknown_labels"] == 1
    assert report["sets"][1]["counts"] == {"qa": 2, "ie": 3, "generation": 2, "other": 0, "unknown": 0, "blank": 1}
    assert report["confusion"]["matrix"] == [[1, 1, 0, 0], [0, 2, 0, 0], [0, 0, 1, 0], [0, 0, 1, 0]]
    assert report["percent_agreement"] == pytest.approx(100 * 4 / 6)


def test_cli_three_sets_have_no_confusion_matrix(two_sets, tmp_path, capsys):
    a, b = two_sets
    c = write_jsonl(tmp_path / "third.jsonl", labelled([(str(i), "qa") for i in range(1, 8)]))
    out = tmp_path / "report.json"
    assert main(["agreement", "--labels", str(a), str(b), str(c), "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "confusion matrix" not in text and "percent agreement" not in text
    assert "pairable (labelled in 2+ sets): 7" in text  # id 7: unknown in gpt4, qa in the other two
    units = [[s.labels.get(i) for s in map(read_labels, (a, b, c))] for i in map(str, range(1, 10))]
    assert json.loads(out.read_text())["alpha"] == pytest.approx(reference_alpha(units), abs=1e-9)


def test_config_keys_and_overrides_after_the_label_files(tmp_path, capsys):
    a = write_jsonl(tmp_path / "a.jsonl", [{"uid": 1, "label": "QA "}, {"uid": 2, "label": "ie"}])
    b = write_jsonl(tmp_path / "b.jsonl", [{"uid": 1, "label": "qa"}, {"uid": 2, "label": "ie"}])
    assert main(["agreement", "--labels", str(a), str(b), "id_key=uid", "label_key=label"]) == 0
    assert "Krippendorff's alpha (nominal): 1.0000" in capsys.readouterr().out


def test_one_category_only_reports_alpha_undefined(tmp_path, capsys):
    a = write_jsonl(tmp_path / "a.jsonl", labelled([("1", "qa"), ("2", "qa")]))
    assert main(["agreement", "--labels", str(a), str(a)]) == 0
    assert "alpha (nominal): undefined" in capsys.readouterr().out


# ---- annotation sheets --------------------------------------------------------------------

def source_records(n=30):
    records = [{"id": f"r{i}", "instruction": f"Task number {i}: name one drug.", "input": "",
                "output": f"Drug {i}.", "category": CATS[i % 4]} for i in range(n)]
    records[3]["input"] = "Line one of the note.\nLine two, with \"quotes\", commas and µg."
    records[5]["output"] = "- aspirin\n- heparin"
    return records


def read_sheet(path):
    with open(path, encoding="utf-8-sig", newline="") as f:
        return list(csv.DictReader(f))


def test_sheet_round_trip(tmp_path, capsys):
    source = write_jsonl(tmp_path / "labelled.jsonl", source_records())
    sheet = tmp_path / "anna.csv"
    assert main(["agreement", "--sample", "30", "--from", str(source), "--sheet", str(sheet), "--seed", "3"]) == 0
    assert f"bioinstruct agreement --labels {source} {sheet}" in capsys.readouterr().out
    raw = sheet.read_bytes()
    assert raw.startswith(b"\xef\xbb\xbf" + b'"id","instruction","input","output","category"\r\n')
    rows = read_sheet(sheet)
    assert sorted(r["id"] for r in rows) == sorted(f"r{i}" for i in range(30))
    assert [r["id"] for r in rows] != [f"r{i}" for i in range(30)]  # shuffled by the sample
    by_id = {r["id"]: r for r in rows}
    assert by_id["r3"]["input"] == "Line one of the note.\nLine two, with \"quotes\", commas and µg."
    assert by_id["r5"]["output"] == "\t- aspirin\n- heparin"  # kept as text in Excel
    assert all(r["category"] == "" for r in rows)
    readme = (tmp_path / "anna.README.txt").read_text()
    assert "qa (question answering)" in readme and f"bioinstruct agreement --labels {source} {sheet}" in readme
    assert "{instruction}" not in readme
    assert f"{sheet} has no category filled in" in error_of(capsys, "--labels", str(source), str(sheet))

    # A human fills in the first ten rows, disagreeing on two; the rest stay blank.
    truth = {f"r{i}": CATS[i % 4] for i in range(30)}
    for n, row in enumerate(rows[:10]):
        row["category"] = truth[row["id"]] if n >= 2 else "other" if truth[row["id"]] != "other" else "qa"
    with open(sheet, "w", encoding="utf-8-sig", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]), quoting=csv.QUOTE_ALL)
        writer.writeheader()
        writer.writerows(rows)
    filled = read_labels(sheet)
    assert sum(v is not None for v in filled.labels.values()) == 10 and filled.counts["blank"] == 20

    out = tmp_path / "report.json"
    assert main(["agreement", "--labels", str(source), str(sheet), "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    units = [[truth[r["id"]], r["category"] or None] for r in rows]
    assert report["pairable_units"] == 10 and report["agreeing_units"] == 8
    assert report["alpha"] == pytest.approx(reference_alpha(units), abs=1e-9)


def test_sheet_is_seeded_and_never_overwritten_without_force(tmp_path, capsys):
    source = write_jsonl(tmp_path / "labelled.jsonl", source_records())
    args = ["agreement", "--sample", "5", "--from", str(source), "--seed", "1"]
    assert main([*args, "--sheet", str(tmp_path / "a.csv")]) == 0
    assert main([*args, "--sheet", str(tmp_path / "b.csv")]) == 0
    assert (tmp_path / "a.csv").read_bytes() == (tmp_path / "b.csv").read_bytes()
    assert main([*args, "--sheet", str(tmp_path / "a.csv")]) == 2
    assert "exists and may hold someone's labels" in capsys.readouterr().err
    assert main([*args, "--sheet", str(tmp_path / "a.csv"), "--seed", "2", "--force"]) == 0
    assert (tmp_path / "a.csv").read_bytes() != (tmp_path / "b.csv").read_bytes()


def test_semicolon_sheet_from_a_decimal_comma_excel(tmp_path):
    sheet = tmp_path / "excel.csv"
    sheet.write_text("id;instruction;input;output;category\r\nr1;Name a drug.;;Aspirin.;QA\r\nr2;x;;y;\r\n",
                     encoding="utf-8-sig")
    assert read_labels(sheet).labels == {"r1": "qa", "r2": None}


# ---- bad input ----------------------------------------------------------------------------

def error_of(capsys, *argv):
    assert main(["agreement", *argv]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1
    return err


def test_label_outside_the_set_names_file_line_and_closest(tmp_path, capsys):
    a = write_jsonl(tmp_path / "a.jsonl", labelled([("1", "qa"), ("2", "generaton")]))
    b = write_jsonl(tmp_path / "b.jsonl", labelled([("1", "qa"), ("2", "ie")]))
    err = error_of(capsys, "--labels", str(a), str(b))
    assert f"{a}:2: category 'generaton' is not one of qa, ie, generation, other, unknown" in err
    assert "(closest valid label: 'generation')" in err


def test_bad_sheet_cell_names_the_csv_line_after_multiline_fields(tmp_path, capsys):
    source = write_jsonl(tmp_path / "labelled.jsonl", source_records(6))
    sheet = tmp_path / "s.csv"
    sheet.write_text('"id","instruction","input","output","category"\r\n'
                     '"r3","Task","Line one\nLine two\nLine three","Out","qa"\r\n'
                     '"r1","Task","","Out","unknwn"\r\n', encoding="utf-8-sig")
    err = error_of(capsys, "--labels", str(source), str(sheet))
    assert f"{sheet}:5 (row 3): category 'unknwn'" in err and "closest valid label: 'unknown'" in err


def test_duplicate_ids_name_both_lines(tmp_path, capsys):
    a = write_jsonl(tmp_path / "a.jsonl", labelled([("1", "qa"), ("2", "ie"), ("1", "qa")]))
    err = error_of(capsys, "--labels", str(a), str(a))
    assert f"{a}:3: duplicate id '1' (first at line 1)" in err


def test_no_pairable_units_and_other_mistakes(tmp_path, capsys):
    a = write_jsonl(tmp_path / "a.jsonl", labelled([("1", "qa"), ("2", "unknown")]))
    b = write_jsonl(tmp_path / "b.jsonl", labelled([("3", "qa"), ("2", "ie")]))
    assert "no id has a category in two or more of the 2 label sets (3 ids in all)" in error_of(
        capsys, "--labels", str(a), str(b))
    assert "give two or more label sets" in error_of(capsys, "--labels", str(a))
    no_label = write_jsonl(tmp_path / "c.jsonl", [{"id": "1", "label": "qa"}])
    assert f"{no_label}:1: record has no 'category'" in error_of(capsys, "--labels", str(a), str(no_label))
    assert "must end in .csv" in error_of(capsys, "--sample", "1", "--from", str(a), "--sheet", "s.txt")
    assert "not both" in error_of(capsys, "--labels", str(a), str(b), "--sample", "1", "--from", str(a),
                                  "--sheet", str(tmp_path / "s.csv"))
