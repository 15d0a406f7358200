"""The pipeline's stages: one module per stage, each declaring one :class:`~.stage.Stage`
record (``STAGE``), and :data:`~.pipeline.PIPELINE`, the stages in pipeline order.

The CLI's stage verbs, ``bioinstruct launch``'s job kinds and ``bioinstruct quickstart`` are
all built from PIPELINE; nothing else lists the stages or computes where a stage writes.
This package's ``__init__`` imports nothing, so a stage module can import ``.stage``
without loading every other stage.
"""
