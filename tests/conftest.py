"""Test tiers and shared fixtures.

Tiers are pytest markers: unit, integration (tiny model, several processes), slurm,
container. A tier whose system part is missing skips with a reason on a laptop; CI sets
BIOINSTRUCT_REQUIRE_TIERS=slurm,container so that the same absence fails instead.
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
    from bioinstruct.tiny_model import TinyModelConfig, make_tiny_model

    out = tmp_path_factory.mktemp("tiny") / "model"
    make_tiny_model(out, TinyModelConfig(pretrain_steps=60))
    return out


@pytest.fixture(autouse=True)
def _cpu_env(monkeypatch):
    monkeypatch.setenv("DS_ACCELERATOR", "cpu")
    monkeypatch.setenv("BIOINSTRUCT_PROGRESS", "0")


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
