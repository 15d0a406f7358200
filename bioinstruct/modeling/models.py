"""Checks of a base model and an adapter given by path, made before anything loads: a wrong
path then costs a second, not a GPU allocation and minutes of loading. Weight files are
checked by their safetensors headers only (no tensor is read), so a truncated or empty
model.safetensors, or an adapter trained on another architecture, is named with the file
and what was expected instead of a loader's traceback.

    check_model("/models/llama2-7b", "model.path")      # ConfigError naming the key if unusable
    check_adapter("runs/v1/train/llama2-7b__all/adapter", "--adapter", "/models/llama2-7b")
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
        for weights in sorted(local.glob("*.safetensors")):
            _header(weights, key, "the model's weights as save_pretrained writes them")
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


def check_adapter(path: str, key: str, model: str | None = None) -> None:
    """A peft adapter folder (adapter_config.json and its weights), as `bioinstruct train`
    writes; with ``model`` (a local base model folder), each LoRA matrix fits the layer of
    that model it adapts."""
    local = Path(path).expanduser()
    if not local.is_dir():
        raise ConfigError(f"{key}: no such directory: {path} (train writes run_dir/train/<model>__<subset>/adapter)")
    if not (local / "adapter_config.json").exists():
        raise ConfigError(f"{key}: {path} has no adapter_config.json (not a peft adapter folder)")
    weights = local / "adapter_model.safetensors"
    if not weights.exists():
        return  # an older peft's adapter_model.bin: peft reports its own problems
    shapes = _header(weights, key, "a peft adapter's LoRA weights")
    if model is None or not (Path(model).expanduser() / "config.json").exists():
        return
    layers = _layer_shapes(model)
    for name, shape in sorted(shapes.items()):
        # lora_A is r x in_features of the layer it adapts, lora_B out_features x r
        for part, axis, dim, what in ((".lora_A.", 1, 0, "r x in"), (".lora_B.", 0, 1, "out x r")):
            if part not in name:
                continue
            layer = name.split(part)[0].removeprefix("base_model.model.")
            if layer not in layers:
                raise ConfigError(f"{key}: {weights} adapts {layer}, which {model} does not have "
                                  f"(an adapter of another architecture?)")
            if shape[axis] != layers[layer][dim]:
                raise ConfigError(f"{key}: {weights} does not fit {model}: {layer} is {layers[layer][0]}x"
                                  f"{layers[layer][1]} (in x out) there, but the adapter's {part.strip('.')} is "
                                  f"{shape[0]}x{shape[1]} ({what}): an adapter of another model?")


def _header(path: Path, key: str, expected: str) -> dict[str, list[int]]:
    """The tensor shapes in a safetensors file's header; ConfigError naming the file if it
    is not one (empty, truncated, another format)."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), "pt") as f:
            return {name: list(f.get_slice(name).get_shape()) for name in f.keys()}
    except (SafetensorError, OSError) as e:
        size = path.stat().st_size
        raise ConfigError(f"{key}: {path} is not a readable safetensors file ({size:,} bytes: {e}); "
                          f"expected {expected}") from None


def _layer_shapes(model: str) -> dict[str, tuple[int, int]]:
    """(in_features, out_features) of each linear layer of a weightless copy of the model."""
    from accelerate import init_empty_weights
    from transformers import AutoConfig, AutoModelForCausalLM

    with init_empty_weights():
        empty = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(model))
    return {name: (m.in_features, m.out_features) for name, m in empty.named_modules() if hasattr(m, "in_features")}
