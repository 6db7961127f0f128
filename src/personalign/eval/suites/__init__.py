"""Named benchmark suites for ``personalign eval``.

Each suite is a module with ``run(data_dir: Path, *, quick: bool) -> dict[str, float]`` and,
optionally, ``plot(figures: dict, out_dir: Path) -> list[Path]`` (matplotlib, Agg backend)
and ``NEEDS_DATA = False`` when its data ships with the package (``data_dir`` may be None).
A suite whose report needs more than its figures (tables, plots of raw scores) defines
``run_report(data_dir, *, quick, out_dir) -> (figures, markdown, images)`` instead.
Modules load only when their suite runs.
"""

from __future__ import annotations

import importlib
from types import ModuleType

from personalign.errors import ValidationError

SUITES: dict[str, str] = {
    "boundary": "personalign.eval.suites.boundary",
    "memory_speed": "personalign.eval.suites.memory_speed",
    "prefeval_surfacing": "personalign.eval.suites.prefeval_surfacing",
    "locomo_recall": "personalign.eval.suites.locomo_recall",
    "supersession": "personalign.eval.suites.supersession",
}


def load_suite(name: str) -> ModuleType:
    """Import the module of suite ``name``; unknown names get a list of the known ones."""
    if name not in SUITES:
        raise ValidationError(f"unknown suite {name!r}; known suites: {', '.join(sorted(SUITES))}")
    try:
        return importlib.import_module(SUITES[name])
    except ModuleNotFoundError as e:
        raise ValidationError(f"suite {name!r} is not available in this build ({e})") from e
