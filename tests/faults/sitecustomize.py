"""Faults injected into a bioinstruct process that a test starts (Python imports this module at
start-up when this folder is on PYTHONPATH). Nothing happens unless a variable is set:

    BIOINSTRUCT_TEST_FAULT_ABOVE=N   a forward pass of the model (LLaMA) over more than N rows
                                     raises, as a GPU out of memory would at that batch size
    BIOINSTRUCT_TEST_FAULT=oom       torch.OutOfMemoryError with CUDA's message (the default)
    BIOINSTRUCT_TEST_FAULT=runtime   a RuntimeError that is no out-of-memory error
    BIOINSTRUCT_TEST_FAULT_IN=generate   only in generate(): log-likelihood passes run

Every raise is counted on a line of BIOINSTRUCT_TEST_FAULT_LOG (a file), when set.

    BIOINSTRUCT_TEST_SLOW_FORWARD=S  sleep S seconds before each forward pass of the model: a run
                                     that lasts on a fast machine as on a slow one, numbers unchanged
"""

import os

if os.environ.get("BIOINSTRUCT_TEST_FAULT_ABOVE"):
    import torch
    from transformers.generation.utils import GenerationMixin
    from transformers.models.llama.modeling_llama import LlamaForCausalLM

    above = int(os.environ["BIOINSTRUCT_TEST_FAULT_ABOVE"])
    only_generate = os.environ.get("BIOINSTRUCT_TEST_FAULT_IN") == "generate"

    def _fault(rows: int) -> None:
        if rows <= above:
            return
        if log := os.environ.get("BIOINSTRUCT_TEST_FAULT_LOG"):
            with open(log, "a") as f:
                f.write(f"{rows}\n")
        if os.environ.get("BIOINSTRUCT_TEST_FAULT", "oom") == "runtime":
            raise RuntimeError(f"injected fault: cuBLAS said no to {rows} rows")
        raise torch.OutOfMemoryError(f"CUDA out of memory. Tried to allocate 2.00 GiB for {rows} rows "
                                     f"(injected by tests/faults)")

    def _wrap(method, rows_of):
        def wrapped(self, *args, **kwargs):
            _fault(rows_of(args, kwargs))
            return method(self, *args, **kwargs)
        return wrapped

    def _rows(args, kwargs):
        ids = kwargs.get("input_ids", args[0] if args else None)
        return 0 if ids is None else ids.shape[0]

    if only_generate:
        GenerationMixin.generate = _wrap(GenerationMixin.generate, _rows)
    else:
        LlamaForCausalLM.forward = _wrap(LlamaForCausalLM.forward, _rows)

if os.environ.get("BIOINSTRUCT_TEST_SLOW_FORWARD"):
    import time

    from transformers.models.llama.modeling_llama import LlamaForCausalLM

    _delay = float(os.environ["BIOINSTRUCT_TEST_SLOW_FORWARD"])
    _forward = LlamaForCausalLM.forward

    def _slow_forward(self, *args, **kwargs):
        time.sleep(_delay)
        return _forward(self, *args, **kwargs)

    LlamaForCausalLM.forward = _slow_forward
