"""PIPELINE: every stage, in pipeline order; the one list of stages.

The CLI's stage verbs, ``bioinstruct launch``'s kinds and ``bioinstruct quickstart``'s steps
are built from it (tests/test_registry.py checks that nothing else lists them).
"""

from __future__ import annotations

from . import (agreement, classify, decontaminate, evaluate, filter, generate, get_model, report, stats, subsets,
               tiny_model, train)
from .stage import Stage

PIPELINE: list[Stage] = [m.STAGE for m in (tiny_model, get_model, generate, filter, decontaminate, classify, agreement,
                                            stats, subsets, train, evaluate, report)]
STAGES: dict[str, Stage] = {s.name: s for s in PIPELINE}
# `bioinstruct launch`'s kinds: the stages a job can run.
KINDS: dict[str, Stage] = {s.name: s for s in PIPELINE if s.job}
