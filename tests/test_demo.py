"""The main job's output: the demo, one progress bar while the models load, no warnings.

The demo runs in a pseudo-terminal (as ``make demo`` in a shell does: Rich draws the bar only
on a terminal), stdout and stderr together, with short answers (``--max-tokens 16``).
"""

from __future__ import annotations

import os
import re
import select
import subprocess
import sys
import time
from pathlib import Path

import pytest

ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]|\x1b\][^\x07]*\x07")
# What library noise looks like: Python warnings, log records, torch's C++ warnings, tracebacks
NOISE = re.compile(
    r"\w*Warning\b|\bWARNING\b|^\[W\d{4}|Traceback|^(INFO|DEBUG|ERROR):", re.MULTILINE
)


def run_in_pty(cmd: list[str], env: dict[str, str], timeout_s: float) -> tuple[int, str]:
    """Run ``cmd`` with stdin, stdout and stderr on a new pseudo-terminal; (exit code, text)."""
    master, slave = os.openpty()
    proc = subprocess.Popen(cmd, stdin=slave, stdout=slave, stderr=slave, env=env)
    os.close(slave)
    chunks: list[bytes] = []
    deadline = time.monotonic() + timeout_s
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], 1.0)
            if not ready:
                if proc.poll() is not None:
                    break
                continue
            try:
                data = os.read(master, 65536)
            except OSError:  # EIO: the child closed the terminal
                break
            if not data:
                break
            chunks.append(data)
        else:
            proc.kill()
            pytest.fail(f"the demo ran over {timeout_s} s")
    finally:
        os.close(master)
    return proc.wait(timeout=30), b"".join(chunks).decode("utf-8", "replace")


@pytest.mark.slow
def test_demo_prints_the_demo_a_progress_bar_and_no_warnings(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHONWARNINGS", "OMP_"))}
    env.update(COLUMNS="100", LINES="40", TERM="xterm")
    cmd = [sys.executable, "-m", "personalign.demo", "--home", str(tmp_path / "home")]
    code, raw = run_in_pty([*cmd, "--max-tokens", "16"], env, timeout_s=600)
    text = ANSI.sub("", raw)
    assert code == 0, text[-3000:]
    assert "loading models" in text and "language model" in text  # the bar, while loading
    assert "personalign demo" in text and "memory of sam" in text and "done in" in text
    assert text.count("personalized (") == 3  # one table per question
    assert not NOISE.search(text), NOISE.findall(text)


def test_quiet_libraries_sets_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    import logging
    import warnings

    from personalign import demo

    for name in ("OMP_WAIT_POLICY", "TRANSFORMERS_VERBOSITY", "HF_HUB_OFFLINE"):
        monkeypatch.delenv(name, raising=False)
    for name in demo.LIBRARIES:  # restored after the test
        monkeypatch.setattr(logging.getLogger(name), "level", logging.getLogger(name).level)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        demo.quiet_libraries()
        warnings.warn_explicit("noise", UserWarning, "x.py", 1, module="transformers.modeling")
        warnings.warn_explicit("kept", UserWarning, "x.py", 1, module="personalign.demo")
    assert [str(w.message) for w in caught] == ["kept"]
    assert os.environ["OMP_WAIT_POLICY"] == "PASSIVE"
    assert os.environ["TRANSFORMERS_VERBOSITY"] == "error"
    assert os.environ["HF_HUB_OFFLINE"] == "1"
    assert logging.getLogger("transformers").level == logging.ERROR


def test_onnx_sessions_do_not_spin() -> None:
    """Idle onnxruntime workers sleep: spinning ones took the CPU from torch on 2 cores."""
    from personalign.backends._onnx import session_options

    options = session_options(2)
    assert options.intra_op_num_threads == 2
    for key in ("session.intra_op.allow_spinning", "session.inter_op.allow_spinning"):
        assert options.get_session_config_entry(key) == "0"
