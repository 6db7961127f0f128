"""The package's layout: serving code holds inference only.

The recipes that build the shipped artifacts live in :mod:`personalign.training`; no runtime
module imports it, at module level, inside a function or under ``if TYPE_CHECKING:``. The
modules are read with :mod:`ast` (nothing is imported).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "personalign"
RUNTIME = (
    "backends",
    "memory",
    "rewards",
    "safety",
    "generation",
    "service",
    "integrations",
    "pipeline.py",
    "pipeline_parts.py",
)
TRAINING = "personalign.training"


def _module_name(path: Path, package: Path) -> str:
    parts = list(path.relative_to(package.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _runtime_modules() -> list[Path]:
    found: list[Path] = []
    for name in RUNTIME:
        path = PACKAGE / name
        found += [path] if path.suffix == ".py" else sorted(path.rglob("*.py"))
    return found


def imported_modules(path: Path, package: Path = PACKAGE) -> set[str]:
    """Every module ``path`` imports (any depth; relative imports resolved), and for
    ``from X import y`` also ``X.y`` (``y`` may be a submodule)."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    here = _module_name(path, package).split(".")
    if path.name != "__init__.py":
        here.pop()
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = here[: len(here) - (node.level - 1)]
                module = ".".join([*base, *([node.module] if node.module else [])])
            else:
                module = node.module or ""
            names.add(module)
            names |= {f"{module}.{alias.name}" for alias in node.names}
    return names


def _imports_training(names: set[str]) -> list[str]:
    return sorted(n for n in names if n == TRAINING or n.startswith(TRAINING + "."))


def test_the_runtime_modules_exist() -> None:
    assert (PACKAGE / "training" / "__init__.py").is_file()
    for name in RUNTIME:
        assert (PACKAGE / name).exists(), name
    assert len(_runtime_modules()) > 20


@pytest.mark.parametrize(
    "path", _runtime_modules(), ids=lambda p: str(p.relative_to(PACKAGE.parent))
)
def test_runtime_never_imports_training(path: Path) -> None:
    assert _imports_training(imported_modules(path)) == []


def test_the_check_sees_lazy_and_relative_imports(tmp_path: Path) -> None:
    pkg = tmp_path / "personalign"
    sub = pkg / "rewards"
    sub.mkdir(parents=True)
    lazy = sub / "lazy.py"
    lazy.write_text("def f():\n    from ..training import reward_model\n")
    typed = sub / "typed.py"
    typed.write_text(
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import personalign.training.x\n"
    )
    clean = sub / "clean.py"
    clean.write_text("from personalign.rewards import base\nfrom . import training_notes\n")
    assert _imports_training(imported_modules(lazy, pkg)) == [
        "personalign.training",
        "personalign.training.reward_model",
    ]
    assert _imports_training(imported_modules(typed, pkg)) == ["personalign.training.x"]
    assert _imports_training(imported_modules(clean, pkg)) == []


def test_report_the_longest_module() -> None:
    sizes = sorted(
        (sum(1 for _ in p.open(encoding="utf-8")), str(p.relative_to(PACKAGE.parent)))
        for p in PACKAGE.rglob("*.py")
    )
    lines, name = sizes[-1]
    print(f"longest module: {name} ({lines} lines); next: {sizes[-2][1]} ({sizes[-2][0]})")
    assert lines > 0
