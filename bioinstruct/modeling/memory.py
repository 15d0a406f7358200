"""Running out of accelerator memory: which errors count, evaluation's halving back-off, and
training's one-line advice.

    size = halving(lambda size: score(size), 32, on_halve=log)   # 32, 16, ... 1, then the error

Out of memory is torch.OutOfMemoryError (CUDA's, whatever its message), or a RuntimeError whose
message accelerate's should_reduce_batch_size recognises: " out of memory." (CUDA, HIP, XPU),
"MPS backend out of memory", torch's CPU allocator failing ("DefaultCPUAllocator: can't allocate
memory"), a Gaudi allocation failure, and cuDNN's CUDNN_STATUS_NOT_SUPPORTED, which large
batches provoke. A CPU job that outgrows its Slurm memory limit is killed by the kernel
instead, with no error to catch. Anything else is not retried: it fails with its own message,
as does an out-of-memory error at batch size 1.
"""

from __future__ import annotations

from typing import Callable, TypeVar

from ..errors import UserError

T = TypeVar("T")


class OutOfMemory(UserError):
    """Training ran out of memory: the message names the settings that lower its footprint."""


def is_out_of_memory(error: BaseException) -> bool:
    import torch
    from accelerate.utils.memory import should_reduce_batch_size

    return isinstance(error, torch.OutOfMemoryError) or should_reduce_batch_size(error)


def one_line(error: BaseException) -> str:
    return f"{type(error).__name__}: {' '.join(str(error).split())}"


def free_memory() -> None:
    """Give the cached blocks of a failed attempt back (its tensors are garbage by now)."""
    from accelerate.utils.memory import clear_device_cache

    clear_device_cache(garbage_collection=True)


def halving(attempt: Callable[[int], T], size: int, on_halve: Callable[[int, int, str], None]) -> tuple[T, int]:
    """(``attempt(size)``, size), halving ``size`` on each out-of-memory error down to 1;
    ``on_halve(size, half, error)`` runs before each retry. Other errors propagate."""
    while True:
        try:
            return attempt(size), size
        except Exception as e:
            if size <= 1 or not is_out_of_memory(e):
                raise
            error = one_line(e)
        # Outside the except block: the traceback, and the tensors its frames hold, are gone.
        free_memory()
        on_halve(size, size // 2, error)
        size //= 2
