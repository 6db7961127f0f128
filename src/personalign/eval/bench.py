"""Conventions shared by every script in ``benchmarks/``, and where ``personalign eval`` finds
its data (:func:`eval_data_dir`).

``--data DIR`` (default ``../shared/data`` beside the repository), ``--json`` (the last line
printed is one flat JSON object of all figures, snake_case keys with the unit in the name),
a readable table otherwise.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[3]
"""The source checkout, when this module runs from one (``src/personalign/eval/bench.py``)."""
DEFAULT_DATA = REPO.parent / "shared" / "data"
"""The benchmarks' default ``--data``: ``../shared/data`` beside the source checkout."""


def eval_data_dir(explicit: Path | None = None, setting: Path | None = None) -> Path | None:
    """The evaluation data folder: ``explicit`` (``--data``), else ``setting`` (the
    ``eval_data`` setting, ``PERSONALIGN_EVAL_DATA``), else :data:`DEFAULT_DATA` when this
    module runs from a source checkout that has it; ``None`` otherwise (an installed wheel
    without the setting: the suites that need data say so, those with packaged data run)."""
    if explicit is not None:
        return explicit
    if setting is not None:
        return setting
    checkout = (REPO / "pyproject.toml").is_file() and (REPO / "src" / "personalign").is_dir()
    return DEFAULT_DATA if checkout and DEFAULT_DATA.is_dir() else None


def parser(description: str) -> argparse.ArgumentParser:
    """An argument parser with the ``--data`` and ``--json`` conventions."""
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--data", type=Path, default=DEFAULT_DATA, help="evaluation data folder")
    p.add_argument("--json", action="store_true", help="end with one JSON line of figures")
    return p


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0-100) by linear interpolation (:func:`numpy.percentile`);
    NaN for no values."""
    if len(values) == 0:
        return math.nan
    return float(np.percentile(values, q))


def emit(figures: Mapping[str, float | int | str], *, title: str, as_json: bool) -> None:
    """Print the figures as a table, or as the final JSON line with ``--json``."""
    if as_json:
        sys.stdout.write(json.dumps(dict(figures)) + "\n")
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title, title_justify="left")
    table.add_column("figure")
    table.add_column("value", justify="right")
    for k, v in figures.items():
        table.add_row(k, f"{v:.4g}" if isinstance(v, float) else str(v))
    Console().print(table)
