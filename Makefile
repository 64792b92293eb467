# Two commands do all set-up on a fresh machine:
#   make run    create .venv, install cnnbp, train the built-in default (digits)
#   make test   same venv, install the test extras, run the whole suite
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin

.PHONY: run test lint bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e .
	touch $@

$(VENV)/.installed-test: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e '.[test]'
	# PyTorch is the independent oracle of tests/cli/test_bench.py (float64 gradients agree to 1e-10).
	# Only a local CPU wheel can satisfy '+cpu' (PyPI has none), so this never downloads gigabytes;
	# where none is at hand the step is skipped and so are those tests.
	-$(BIN)/python -m pip install --quiet 'torch==2.13.0+cpu' 2>/dev/null \
	  || echo 'no local CPU build of torch 2.13.0: the PyTorch comparison tests will be skipped'
	touch $@ $(VENV)/.installed

run: $(VENV)/.installed
	$(BIN)/cnnbp train

test: $(VENV)/.installed-test
	$(BIN)/ruff check cnnbp_cli core tests benchmarks
	$(BIN)/python -m pytest

bench: $(VENV)/.installed
	$(BIN)/python benchmarks/run.py

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .ruff_cache
