"""The floating-point precision train and evaluate run in, chosen in one place from what the
GPU computes natively; `bioinstruct doctor` prints the same choice.

    resolve_dtype("auto")       # Precision('bfloat16', 'NVIDIA A100-SXM4-80GB (sm_80) computes bf16 natively')
    resolve_dtype("auto")       # on a V100: Precision('float16', '... sm_70 has no native bf16 ...')
    resolve_dtype("bfloat16")   # on a V100: bfloat16, with a warning naming the emulation

auto: bfloat16 on a GPU of compute capability 8.0 or newer (A100, H100, L40, RTX 30xx and
later); float16 on an older one (V100, T4), which training runs with loss scaling (the Trainer's
fp16=True, DeepSpeed's fp16 section: a dynamic scale); float32 without a GPU.
torch.cuda.is_bf16_supported() is not asked: it answers True on a V100 or T4 because it counts
emulation, which runs bf16 much slower than fp16 there.
"""

from __future__ import annotations

import dataclasses
import sys

NATIVE_BF16 = (8, 0)  # Ampere: the first compute capability with bf16 tensor cores


@dataclasses.dataclass(frozen=True)
class Precision:
    dtype: str  # bfloat16 | float16 | float32
    reason: str

    @property
    def torch_dtype(self):
        import torch

        return getattr(torch, self.dtype)

    @property
    def loss_scaling(self) -> bool:
        """fp16's narrow range loses small gradients to zero unless the loss is scaled up."""
        return self.dtype == "float16"


def _gpu(device: str | None) -> tuple[str, tuple[int, int]] | None:
    import torch

    if not torch.cuda.is_available():
        return None
    return torch.cuda.get_device_name(device), tuple(torch.cuda.get_device_capability(device))


def resolve_dtype(requested: str = "auto", *, device: str | None = None, warn: bool = True) -> Precision:
    """The precision for ``requested`` (auto | bfloat16 | float16 | float32) on ``device``
    (default: GPU 0 when one is visible, else the CPU), and why."""
    gpu = _gpu(device) if device is None or device.startswith("cuda") else None
    if gpu is None:
        if requested == "auto":
            return Precision("float32", "no GPU visible, so the CPU's float32")
        return Precision(requested, f"set explicitly (dtype={requested}), on the CPU")
    name, (major, minor) = gpu
    native = (major, minor) >= NATIVE_BF16
    where = f"{name} (sm_{major}{minor})"
    if requested == "auto":
        if native:
            return Precision("bfloat16", f"{where} computes bf16 natively")
        return Precision("float16", f"{where} has no native bf16 (compute capability < 8.0; torch's "
                                    f"is_bf16_supported() counts emulation), so float16, trained with loss scaling")
    if requested == "bfloat16" and not native and warn:
        print(f"warning: dtype=bfloat16 on {where}: this GPU has no bf16 units, so torch emulates it, much "
              f"slower than float16; dtype=auto picks float16 (with loss scaling) here", file=sys.stderr)
    return Precision(requested, f"set explicitly (dtype={requested}) on {where}")
