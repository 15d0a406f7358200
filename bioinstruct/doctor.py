"""Print what this machine offers for each stage: Python packages, the real models get-model
can make here, torch and CUDA, GPUs, the DeepSpeed accelerator, Slurm commands, Apptainer,
caches, and whether an OpenAI key is set (its value is never read out).

    bioinstruct doctor
    bioinstruct doctor --key-env AZURE_OPENAI_API_KEY

Run it on a login node and inside an allocation (srun --gpus=1 bioinstruct doctor), and
inside the container (apptainer exec --nv image.sif bioinstruct doctor). Exit status 0.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import subprocess
from pathlib import Path

from .modeling.get_model import MODELS, availability
from .runs.environment import PACKAGES, version
from .reporting.tables import format_table


def _command_version(cmd: list[str]) -> str:
    if not shutil.which(cmd[0]):
        return "not found"
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError) as e:
        return f"found, but '{' '.join(cmd)}' failed: {e}"
    text = (out.stdout or out.stderr).strip().splitlines()
    return f"{text[0] if text else 'found'} ({shutil.which(cmd[0])})"


def _torch_rows() -> list[tuple[str, str]]:
    try:
        import torch
    except ImportError:
        return [("torch", "not installed")]
    from .modeling.precision import resolve_dtype

    rows = [("torch build", f"{torch.__version__} (CUDA {torch.version.cuda or 'none'})")]
    if not torch.cuda.is_available():
        rows.append(("GPUs", "none visible (CPU only)"))
    for i in range(torch.cuda.device_count() if torch.cuda.is_available() else 0):
        p = torch.cuda.get_device_properties(i)
        rows.append((f"GPU {i}", f"{p.name}, {p.total_memory / 2**30:.0f} GiB, sm_{p.major}{p.minor}"))
    # What train and evaluate pick with dtype=auto, by the same function.
    precision = resolve_dtype("auto")
    rows.append(("dtype=auto", f"{precision.dtype}: {precision.reason}"))
    return rows


def _deepspeed_row() -> tuple[str, str]:
    # Importing deepspeed takes seconds and may print; ask a child process.
    env = dict(os.environ)
    try:
        import torch
        if not torch.cuda.is_available():
            env.setdefault("DS_ACCELERATOR", "cpu")
    except ImportError:
        pass
    code = "from deepspeed.accelerator import get_accelerator as g; a=g(); print(a.device_name(), a.communication_backend_name())"
    try:
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=env)
    except (OSError, subprocess.SubprocessError) as e:
        return ("DeepSpeed accelerator", f"check failed: {e}")
    if out.returncode:
        last = (out.stderr.strip().splitlines() or ["?"])[-1]
        return ("DeepSpeed accelerator", f"unavailable: {last}")
    device, backend = out.stdout.strip().splitlines()[-1].split()
    return ("DeepSpeed accelerator", f"{device} (communication: {backend})")


def _cache_row() -> tuple[str, str]:
    hf_home = os.environ.get("HF_HOME") or os.path.expanduser("~/.cache/huggingface")
    note = ""
    if Path(hf_home).resolve().is_relative_to(Path.home().resolve()):
        note = " - under $HOME: on clusters with small home quotas set HF_HOME to scratch"
    return ("HF cache", hf_home + note)


def rows(key_env: str) -> list[tuple[str, str]]:
    out = [(f"package {name}", version(name) or "not installed") for name in PACKAGES]
    out += [(f"model {name}", availability(name)) for name in MODELS]
    out += _torch_rows()
    out.append(_deepspeed_row())
    for cmd in ("sbatch", "squeue", "scontrol", "sacct"):
        out.append((f"slurm {cmd}", _command_version([cmd, "--version"])))
    out.append(("apptainer", _command_version(["apptainer", "--version"])))
    if not shutil.which("apptainer"):
        out.append(("singularity", _command_version(["singularity", "--version"])))
    out.append(_cache_row())
    out.append((f"${key_env}", "set (value hidden)" if os.environ.get(key_env) else
                "not set (only the offline backends will work)"))
    return out


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--key-env", default="OPENAI_API_KEY", metavar="NAME",
                        help="environment variable that holds the API key (default: OPENAI_API_KEY)")


def main(args: argparse.Namespace) -> int:
    print(format_table(["check", "result"], rows(args.key_env)))
    return 0
