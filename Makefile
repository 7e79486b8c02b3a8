# Two commands a newcomer needs: `make demo` and `make test`. Both work on a fresh clone with
# only Python 3.11+ and access to the package index.
# `make demo` installs only what the tool needs to run; `make test` (and bench) add the dev
# tools and the parquet extra on top.
PYTHON  ?= python3
VENV    ?= .venv
BIN     := $(VENV)/bin
HASH    := $(shell cat pyproject.toml | cksum | cut -d' ' -f1)
RUNTIME := $(VENV)/.runtime-$(HASH)
STAMP   := $(VENV)/.installed-$(HASH)

.PHONY: demo test lint typecheck unit bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(RUNTIME): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e .
	rm -f $(VENV)/.runtime-*
	touch $(RUNTIME)

$(STAMP): $(RUNTIME)
	$(BIN)/python -m pip install --quiet -e '.[dev,parquet]'
	rm -f $(VENV)/.installed-*
	touch $(STAMP)

demo: $(RUNTIME)
	@mkdir -p out
	$(BIN)/batchscore score sample_data/ids.txt -c configs/sample.toml -o out/demo-scores.csv --overwrite --max-failed 100
	@echo "scores are in out/demo-scores.csv (IDs not in the store are in out/demo-scores.csv.errors.jsonl)"

lint: $(STAMP)
	$(BIN)/ruff check cli tests bench sample_data tools
	$(BIN)/ruff format --check cli
	$(BIN)/python tools/check_modules.py

typecheck: $(STAMP)
	$(BIN)/mypy --strict cli/batchscore

# Two workers (pytest-xdist): every test makes its own files, servers and ports, so they run
# side by side; more than two only adds load on a 2-core machine (UNIT_WORKERS=0: one process).
UNIT_WORKERS ?= 2
unit: $(STAMP)
	$(BIN)/python -m pytest -q $(if $(filter-out 0,$(UNIT_WORKERS)),-n $(UNIT_WORKERS))

test: lint typecheck unit

bench: $(STAMP)
	$(BIN)/python bench/run.py

clean:
	rm -rf $(VENV) out .pytest_cache .mypy_cache .ruff_cache
