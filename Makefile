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

.PHONY: demo test lint venv clean bench browser

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip

$(STAMP): pyproject.toml | $(PY)
	@$(PY) -c "import torch" 2>/dev/null || $(PIP) install --quiet "$(TORCH_SPEC)"
	$(PIP) install --quiet -e ".[dev,synth]"
	@# tests/test_wheel.py builds the wheel offline (no build isolation): setuptools >= 70.1 (bdist_wheel built in) must be in .venv
	@$(PY) -c "import setuptools.command.bdist_wheel" 2>/dev/null || $(PIP) install --quiet "setuptools>=70.1"
	@touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/medlearn demo --out $(DEMO_OUT) $(DEMO_ARGS)

lint: $(STAMP)
	$(VENV)/bin/ruff check .

# tests/report/test_browser.py renders a report in headless Chromium, a system package: installed
# here (apt-get, as root) when no Chromium is found, never by a test; nothing happens when present.
CHROMIUM_FOUND = command -v chromium || command -v chromium-browser || command -v google-chrome
browser:
	@($(CHROMIUM_FOUND)) >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    echo "installing chromium for the report test (apt-get)"; \
	    DEBIAN_FRONTEND=noninteractive apt-get update -qq && \
	    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; \
	  else \
	    echo "make test needs Chromium (tests/report/test_browser.py): install the 'chromium' package as root" >&2; \
	    exit 1; \
	  fi; }

# MEDLEARN_REQUIRE_BROWSER: the browser test fails instead of skipping when Chromium is missing
test: $(STAMP) lint browser
	MEDLEARN_REQUIRE_BROWSER=1 $(VENV)/bin/python -m pytest -q tests

bench: $(STAMP)
	$(PY) benchmarks/run_all.py

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
