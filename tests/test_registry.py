"""The stage list lives in one place: bioinstruct.stages.pipeline.PIPELINE.

The CLI's stage verbs, `launch`'s kinds and `quickstart`'s steps are checked against it, and
the package's sources are scanned for what a second list would look like: a literal of
several stage names, or a path built from a stage's folder name (``run_dir / "train"``,
``"filter/kept.jsonl"``) outside the stage modules themselves. A stage module may name its
own folder and, for its default inputs, the folders of stages before it, never a later one.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

from bioinstruct.cli import TOOLS, VERBS
from bioinstruct.stages.pipeline import KINDS, PIPELINE, STAGES

pytestmark = pytest.mark.unit

PACKAGE = Path(__file__).resolve().parent.parent / "bioinstruct"
NAMES = [s.name for s in PIPELINE]
PATH_TEXT = re.compile(r"(^|/)(%s)/" % "|".join(map(re.escape, NAMES)))


def test_every_stage_is_a_verb_a_job_kind_and_a_quickstart_step_in_pipeline_order():
    assert [v.name for v in VERBS] == [s.cli_verb for s in PIPELINE] + [t.name for t in TOOLS]
    assert not {t.name for t in TOOLS} & (set(NAMES) | {s.cli_verb for s in PIPELINE})
    assert list(KINDS) == [s.name for s in PIPELINE if s.job]
    from bioinstruct.launch.sweep import KIND_RESOURCES

    assert list(KIND_RESOURCES) == list(KINDS)
    assert all(s.quickstart is not None for s in PIPELINE), "every stage runs in the quickstart"
    assert len(STAGES) == len(PIPELINE)
    for stage in PIPELINE:  # each stage module declares its own record
        assert stage.module.rpartition(".")[2].replace("_", "-") in (stage.name, stage.cli_verb)


def _sources():
    for path in sorted(PACKAGE.rglob("*.py")):
        yield path, ast.parse(path.read_text(encoding="utf-8"), str(path))


def _docstrings(tree: ast.AST) -> set[int]:
    return {id(node.body[0].value) for node in ast.walk(tree)
            if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))
            and node.body and isinstance(node.body[0], ast.Expr) and isinstance(node.body[0].value, ast.Constant)}


def _named_folders(tree: ast.AST) -> list[tuple[int, str]]:
    """(line, stage) for every path built from a stage's folder name."""
    found, docs = [], _docstrings(tree)
    for node in ast.walk(tree):
        if (isinstance(node, ast.BinOp) and isinstance(node.op, ast.Div) and isinstance(node.right, ast.Constant)
                and node.right.value in NAMES):
            found.append((node.lineno, node.right.value))
        elif (isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docs
              and " " not in node.value and (m := PATH_TEXT.search(node.value))):
            found.append((node.lineno, m.group(2)))
    return found


def _stage_lists(tree: ast.AST) -> list[int]:
    """Lines of literals (list, tuple, set, dict keys) holding three or more stage names."""
    lines = []
    for node in ast.walk(tree):
        elements = node.keys if isinstance(node, ast.Dict) else getattr(node, "elts", None)
        if isinstance(node, (ast.List, ast.Tuple, ast.Set, ast.Dict)):
            if sum(isinstance(e, ast.Constant) and e.value in NAMES for e in elements) >= 3:
                lines.append(node.lineno)
    return lines


def test_no_stage_is_listed_or_located_outside_the_registry():
    modules = {str(Path(*s.module.split("."))) + ".py": NAMES.index(s.name) for s in PIPELINE}
    problems = []
    for path, tree in _sources():
        where = str(path.relative_to(PACKAGE.parent))
        problems += [f"{where}:{line}: a list of stages" for line in _stage_lists(tree)]
        position = modules.get(where)
        for line, name in _named_folders(tree):
            if position is None:
                problems.append(f"{where}:{line}: builds the path of stage '{name}' (use its Stage's outputs)")
            elif NAMES.index(name) > position:
                problems.append(f"{where}:{line}: reads the folder of the later stage '{name}'")
    assert not problems, "\n".join(problems)


def test_the_scan_finds_a_stage_list_and_a_stage_path():
    """The scan itself works: it sees what it is there to forbid."""
    tree = ast.parse('KINDS = ("generate", "filter", "train")\nout = run_dir / "evaluate"\nx = "report/index.html"')
    assert _stage_lists(tree) == [1]
    assert _named_folders(tree) == [(2, "evaluate"), (3, "report")]


def test_every_job_kind_writes_under_the_run_directory_in_its_own_folder():
    """The convention: RUN_DIR/<stage name>/..., runs/default unless told otherwise."""
    for name, kind in KINDS.items():
        cfg = kind.config()
        run_dir = Path(getattr(cfg, "run_dir", "runs/default"))
        outputs = kind.outputs(cfg)
        assert outputs, name
        for output in outputs:
            assert output.parts[:len(run_dir.parts) + 1] == (*run_dir.parts, name), (name, output)
