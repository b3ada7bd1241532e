# The two promises of the README: `make demo` and `make test`, from a clean clone.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp

.PHONY: demo test lint typecheck unit postgres bench clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	LITELLM_LOCAL_MODEL_COST_MAP=True $(BIN)/turnledger demo

postgres:
	bash scripts/ensure-postgres.sh

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(STAMP)
	$(BIN)/mypy

test: $(STAMP) postgres lint typecheck
	LITELLM_LOCAL_MODEL_COST_MAP=True $(BIN)/pytest -q

unit: $(STAMP)
	LITELLM_LOCAL_MODEL_COST_MAP=True $(BIN)/pytest -q tests/unit

bench: $(STAMP) postgres
	LITELLM_LOCAL_MODEL_COST_MAP=True $(BIN)/python -m bench

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache turnledger.db
