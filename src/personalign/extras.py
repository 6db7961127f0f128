"""The optional dependency groups (pip extras) and a check that names the missing one.

``ml``: inference with local models (torch, transformers, PEFT adapters, the ONNX export of
the embedded embedder). ``train``: the training libraries (TRL, datasets, Ray,
scikit-learn) that per-user DPO and the recipes of :mod:`personalign.training` need, and
that serving never imports.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Sequence

from personalign.errors import ConfigError, PersonalignError


def missing(modules: Sequence[str]) -> list[str]:
    """The top-level modules among ``modules`` that cannot be imported (none is imported)."""
    return [m for m in modules if importlib.util.find_spec(m) is None]


def require(
    extra: str,
    modules: Sequence[str],
    *,
    what: str,
    error: type[PersonalignError] = ConfigError,
) -> None:
    """Raise ``error`` naming ``extra`` when a module of ``modules`` is missing."""
    absent = missing(modules)
    if absent:
        names = ", ".join(repr(m) for m in absent)
        raise error(f"{what} needs {names}: pip install 'personalign[{extra}]'")
