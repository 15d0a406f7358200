"""Checks of a base model and an adapter given by path, made before anything loads: a wrong
path then costs a second, not a GPU allocation and minutes of loading.

    check_model("/models/llama2-7b", "model.path")      # ConfigError naming the key if unusable
    check_adapter("runs/v1/train/llama2-7b__all/adapter", "--adapter")
"""

from __future__ import annotations

from pathlib import Path

from ..errors import ConfigError


def check_model(path: str, key: str) -> None:
    """A saved transformers model folder, or (online) a hub id like meta-llama/Llama-2-7b-hf."""
    local = Path(path).expanduser()
    if local.is_dir():
        if not (local / "config.json").exists():
            raise ConfigError(f"{key}: {path} has no config.json (not a saved transformers model)")
        return
    if local.exists():
        raise ConfigError(f"{key}: {path} is a file; give the model's folder (with config.json)")
    if path.startswith(("/", ".", "~")) or path.count("/") != 1:
        raise ConfigError(f"{key}: no such directory: {path} (or give a hub id like meta-llama/Llama-2-7b-hf)")
    from transformers import AutoConfig

    try:
        AutoConfig.from_pretrained(path)
    except (OSError, ValueError) as e:
        raise ConfigError(f"{key}: cannot load '{path}' from the hub ({type(e).__name__}); LLaMA weights "
                          f"are gated: download your copy and point {key} at its directory") from None


def check_adapter(path: str, key: str) -> None:
    """A peft adapter folder (adapter_config.json and its weights), as `bioinstruct train` writes."""
    local = Path(path).expanduser()
    if not local.is_dir():
        raise ConfigError(f"{key}: no such directory: {path} (train writes run_dir/train/<model>__<subset>/adapter)")
    if not (local / "adapter_config.json").exists():
        raise ConfigError(f"{key}: {path} has no adapter_config.json (not a peft adapter folder)")
