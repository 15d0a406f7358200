"""DeepSpeed for the recipe: its config file with every "auto" value resolved from the
training config, so the two never disagree, and the CPU ranks' comm set-up."""

from __future__ import annotations

from ..errors import ConfigError
from ..io.rows import read_json
from ..paths import source_path


def gradient_accumulation(cfg, world_size: int) -> int:
    per_step = cfg.micro_batch * world_size
    if cfg.effective_batch % per_step:
        raise ConfigError(f"optim.effective_batch={cfg.effective_batch} is not divisible by optim.micro_batch "
                          f"({cfg.micro_batch}) x world size ({world_size}); choose e.g. "
                          f"{max(per_step, round(cfg.effective_batch / per_step) * per_step)}")
    return cfg.effective_batch // per_step


def deepspeed_config(cfg, world_size: int, dtype: str = "float32") -> dict | None:
    """The DeepSpeed config file with every "auto" value resolved from this config; ``dtype``
    is the resolved precision (modeling.precision): it enables the bf16 or the fp16 section
    (the latter's dynamic loss scale), as the Trainer's bf16 / fp16 flags are set."""
    if cfg.deepspeed is None:
        return None
    path = source_path(cfg.deepspeed)
    if not path.exists():
        raise ConfigError(f"deepspeed: {cfg.deepspeed} not found (null trains without DeepSpeed)")
    ds = read_json(path)
    values = {"train_batch_size": cfg.optim.effective_batch,
              "train_micro_batch_size_per_gpu": cfg.optim.micro_batch,
              "gradient_accumulation_steps": gradient_accumulation(cfg.optim, world_size),
              "gradient_clipping": cfg.optim.max_grad_norm}
    for key, value in values.items():
        if ds.get(key, "auto") == "auto":
            ds[key] = value
        elif ds[key] != value:
            raise ConfigError(f"{path}: {key}={ds[key]} disagrees with the training config ({value}); "
                              f"set it to \"auto\"")
    for section, enabled in (("bf16", dtype == "bfloat16"), ("fp16", dtype == "float16")):
        if ds.get(section, {}).get("enabled", "auto") == "auto":
            ds.setdefault(section, {})["enabled"] = enabled
        elif ds[section]["enabled"] != enabled:
            # The Trainer would refuse the mismatch only once the model is loaded.
            raise ConfigError(f"{path}: {section}.enabled={ds[section]['enabled']} disagrees with model.dtype "
                              f"(resolved to {dtype} here); set it to \"auto\"")
    if "optimizer" in ds or "scheduler" in ds:
        # The HF Trainer builds torch's AdamW and the schedule from this config; DeepSpeed's
        # own fused Adam would compile a C++ op on first use.
        raise ConfigError(f"{path}: leave 'optimizer' and 'scheduler' out; they come from optim.*")
    return ds


def skip_shm_comm_build() -> None:
    """On CPU DeepSpeed compiles a shared-memory all-reduce op (a minute of g++) when its
    comm backend starts; gloo does the job for CPU ranks, so mark the op unavailable."""
    import deepspeed.ops
    from deepspeed.ops.op_builder.cpu import ShareMemCommBuilder

    deepspeed.ops.__compatible_ops__[ShareMemCommBuilder.NAME] = False
