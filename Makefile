# The two commands a new user needs: `make sweep` (the main job) and `make test`.
# Each creates .venv and installs the project on first use.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   ?= .venv
BIN     = $(VENV)/bin
STAMP   = $(VENV)/.installed

.PHONY: install test test-fast test-science test-kernels sweep lint bench clean

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

# The science tests (learning and scoring outcomes over seeds, DESIGN.md section 9) alone, under whatever
# ATEN_CPU_CAPABILITY / TICKET_SEARCH_TEST_THREADS the environment sets.
test-science: $(STAMP)
	$(BIN)/python -m pytest -q -rA -m science

# The science tests under every CPU kernel set PyTorch can pick (avx512 only where this CPU has it) and with
# 1 and 2 torch threads: what another machine would compute. About 4 minutes a run, six runs.
test-kernels: $(STAMP)
	@native=$$(env -u ATEN_CPU_CAPABILITY $(BIN)/python -c \
	    'import torch; print(torch.backends.cpu.get_cpu_capability())'); \
	failed=""; \
	for cap in default avx2 avx512; do \
	    case "$$cap:$$native" in \
	        avx512:*AVX512*) ;; \
	        avx512:*) echo "test-kernels: skipping avx512: this CPU's kernels are $$native, not AVX512"; continue ;; \
	    esac; \
	    for threads in 1 2; do \
	        echo "== ATEN_CPU_CAPABILITY=$$cap TICKET_SEARCH_TEST_THREADS=$$threads"; \
	        ATEN_CPU_CAPABILITY=$$cap TICKET_SEARCH_TEST_THREADS=$$threads $(BIN)/python -m pytest -q -rA -m science \
	            || failed="$$failed $$cap/$$threads"; \
	    done; \
	done; \
	if [ -n "$$failed" ]; then echo "test-kernels: failed under$$failed"; exit 1; fi; \
	echo "test-kernels: passed under every kernel set and thread count"

sweep: $(STAMP)
	$(BIN)/ticket-search sweep sweeps/digits.toml

lint: $(STAMP)
	$(BIN)/ruff check search trainables tests benchmarks
	$(BIN)/mypy

bench: $(STAMP)
	$(BIN)/python -m benchmarks.run --quick

clean:
	rm -rf runs .pytest_cache .mypy_cache .ruff_cache
