"""The package's modules import each other one way only: no import circles.

``scripts/import_cycles.py`` reads the imports with :mod:`ast` (lazy, function-level imports
count; ``if TYPE_CHECKING:`` ones too, with ``--type-checking``).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "import_cycles.py"


def _run(*args: str, src: Path = ROOT / "src") -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(SCRIPT), "--src", str(src), "--json", *args],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
    )


@pytest.mark.parametrize("flags", [(), ("--type-checking",)])
def test_no_import_cycles(flags: tuple[str, ...]) -> None:
    proc = _run(*flags)
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    assert summary == {"import_cycles": 0, "modules_in_cycles": 0}, proc.stdout
    assert proc.returncode == 0


def test_script_finds_a_lazy_import_cycle(tmp_path: Path) -> None:
    pkg = tmp_path / "personalign"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "sub" / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from personalign.sub import b\n")
    (pkg / "sub" / "b.py").write_text("def f():\n    from ..c import g\n")
    (pkg / "c.py").write_text(
        "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n    import personalign.d\n"
        "def g():\n    import personalign.a\n"
    )
    (pkg / "d.py").write_text("import personalign.c\n")
    proc = _run(src=tmp_path)
    assert proc.returncode == 1
    assert json.loads(proc.stdout.strip().splitlines()[-1]) == {
        "import_cycles": 1,
        "modules_in_cycles": 3,
    }
    assert "personalign.d" not in proc.stdout
    # d joins the circle through c's TYPE_CHECKING import
    with_types = _run("--type-checking", src=tmp_path)
    assert json.loads(with_types.stdout.strip().splitlines()[-1]) == {
        "import_cycles": 1,
        "modules_in_cycles": 4,
    }
