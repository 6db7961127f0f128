"""Benchmarks refuse missing data instead of reporting a perfect (or zero) score."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_boundary_benchmark_fails_on_missing_data(tmp_path: Path) -> None:
    empty = tmp_path / "no-data-here"
    empty.mkdir()
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "boundary.py"), "--data", str(empty), "--json"],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
    )
    assert proc.returncode != 0
    out = proc.stdout + proc.stderr
    assert str(empty.resolve()) in out
    assert "none of the boundary's data files" in out
    assert '"injection_detection_rate"' not in proc.stdout
