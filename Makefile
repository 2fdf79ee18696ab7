# One-command setup on a fresh machine (Python 3.11). torch is installed first, pinned to the
# CPU build, so that pip never resolves a multi-GB CUDA build for it.
PYTHON ?= python3.11
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: setup demo test unit integration lint clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	@command -v $(PYTHON) >/dev/null 2>&1 || { echo "need $(PYTHON) on PATH (or: make PYTHON=python3 ...)"; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e ".[dev]"
	touch $(STAMP)

demo: setup
	$(BIN)/dupn demo

lint: setup
	$(BIN)/ruff check core encoder state streams clients training ops tests
	$(BIN)/mypy

unit: setup
	$(BIN)/python -m pytest tests/unit -q

integration: setup
	$(BIN)/python -m pytest tests/integration -q

test: lint
	$(BIN)/python -m pytest -q -ra

clean:
	rm -rf $(VENV) var .pytest_cache .mypy_cache .ruff_cache
