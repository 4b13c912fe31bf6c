# The two commands a new user needs: `make sweep` (the main job) and `make test`.
# Each creates .venv and installs the project on first use.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   ?= .venv
BIN     = $(VENV)/bin
STAMP   = $(VENV)/.installed

.PHONY: install test test-fast sweep lint bench clean

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	touch $(STAMP)

test: $(STAMP)
	$(BIN)/python -m pytest -q

test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -m "not slow"

sweep: $(STAMP)
	$(BIN)/ticket-search sweep sweeps/digits.toml

lint: $(STAMP)
	$(BIN)/ruff check search trainables tests benchmarks
	$(BIN)/mypy

bench: $(STAMP)
	$(BIN)/python -m benchmarks.run --quick

clean:
	rm -rf runs .pytest_cache .mypy_cache .ruff_cache
