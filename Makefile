# The README's two commands; each sets up .venv on a fresh machine first.
#   make quickstart    the whole pipeline on CPU, tiny model, offline, in minutes
#   make test          every test tier (tiers whose system part is missing skip with a reason)
#
# On a GPU cluster pick the torch build you need, e.g.  make test TORCH=torch

PYTHON ?= python3
VENV ?= .venv
# Installed before anything that depends on torch, so pip does not pull a CUDA build.
TORCH ?= torch==2.13.0
# DeepSpeed as pure Python: its ops are JIT-compiled on first use where needed.
export DS_BUILD_OPS := 0

.PHONY: quickstart test

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install -q $(TORCH)
	$(VENV)/bin/python -m pip install -q -e '.[test]'
	touch $@

quickstart: $(VENV)/.installed
	$(VENV)/bin/bioinstruct quickstart

test: $(VENV)/.installed
	$(VENV)/bin/python -m pytest
