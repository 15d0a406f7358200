"""make-tiny-model as a stage of the pipeline (its first): the tiny LLaMA that tests, the
quickstart and the quickstart sweep train and evaluate. The builder and the verb are
bioinstruct.modeling.tiny_model."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from ..modeling.tiny_model import TinyModelConfig, make_tiny_model
from .stage import Stage


@dataclasses.dataclass
class TinyModelJob:
    """make-tiny-model as a stage: where to write the model, and its config."""
    out: str = "runs/default/tiny-model"
    model: TinyModelConfig = dataclasses.field(default_factory=TinyModelConfig)


STAGE = Stage(
    "tiny-model", "build the tiny LLaMA used by tests and the quickstart", "bioinstruct.modeling.tiny_model",
    config=TinyModelJob, run=lambda c, force=False: make_tiny_model(c.out, c.model, force=force),
    outputs=lambda c: [Path(c.out)], verb="make-tiny-model", recorded_as="make-tiny-model",
    recorded=lambda c: c.model, quickstart=lambda q: None if q.settings.real else TinyModelJob(out=str(q.folder), model=q.settings.tiny_model),
    resources={"time_limit_min": 30})
