# medlearn: two commands.  `make demo` and `make test` each bootstrap .venv themselves.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
# PyTorch is installed first and on its own so that pip does not pull a multi-GB CUDA build on a
# CPU machine.  On a GPU box override it, e.g. `make test TORCH_SPEC="torch>=2.3"`.
TORCH_SPEC ?= torch==2.13.0
STAMP := $(VENV)/.installed-stamp
DEMO_OUT ?= runs/demo
DEMO_ARGS ?=

.PHONY: demo test lint venv clean bench

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip

$(STAMP): pyproject.toml | $(PY)
	@$(PY) -c "import torch" 2>/dev/null || $(PIP) install --quiet "$(TORCH_SPEC)"
	$(PIP) install --quiet -e ".[dev]"
	@# tests/test_wheel.py builds the wheel offline (no build isolation): setuptools >= 70.1 (bdist_wheel built in) must be in .venv
	@$(PY) -c "import setuptools.command.bdist_wheel" 2>/dev/null || $(PIP) install --quiet "setuptools>=70.1"
	@touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/medlearn demo --out $(DEMO_OUT) $(DEMO_ARGS)

lint: $(STAMP)
	$(VENV)/bin/ruff check .

test: $(STAMP) lint
	$(VENV)/bin/python -m pytest -q tests

bench: $(STAMP)
	$(PY) benchmarks/run_all.py

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
