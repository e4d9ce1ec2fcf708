# `make demo` and `make test` do their own set-up; every step is idempotent
# and skipped when nothing changed.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
MODELS := .cache/models/clip-vit-b16-int8.onnx

.PHONY: install models test test-fast lint demo clean

install: $(STAMP)

$(STAMP): pyproject.toml requirements/constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c requirements/constraints.txt -e '.[dev]'
	touch $(STAMP)

models: $(MODELS)

$(MODELS): $(STAMP) training/weights.py
	$(BIN)/dmguard models --cache .cache/models
	touch $(MODELS)

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/lint-imports

test: $(STAMP) $(MODELS) lint
	$(BIN)/pytest

test-fast: $(STAMP)
	$(BIN)/pytest -m "not slow"

demo: $(STAMP) $(MODELS)
	$(BIN)/dmguard demo

clean:
	rm -rf $(VENV) .cache .pytest_cache registry
