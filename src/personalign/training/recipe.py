"""What every recipe records in the artifact it writes: :func:`recipe_meta`.

An artifact's metadata key ``recipe`` names the recipe that made it (``module``, the
``function`` of :mod:`personalign.training` that trained it), the recipe's ``config`` (its
frozen config dataclass as a dict), ``data_sha256`` (of the training examples it was given,
:func:`data_sha256`) and the ``versions`` of the libraries it ran with;
``tests/test_artifacts.py`` checks the shipped artifacts against their recipe's defaults.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import platform
from collections.abc import Callable
from importlib import metadata
from typing import Any

#: the libraries whose versions an artifact records (those installed at training time)
LIBRARIES = ("numpy", "scikit-learn", "torch", "transformers", "peft", "safetensors")


def library_versions() -> dict[str, str]:
    """``{"python": ..., library: version}`` for the installed :data:`LIBRARIES`."""
    versions = {"python": platform.python_version()}
    for name in LIBRARIES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return versions


def data_sha256(examples: Any) -> str:
    """SHA-256 of training ``examples`` (JSON-serializable: lists of texts, labels, tuples),
    order-sensitive: the same data in the same order gives the same hash."""
    blob = json.dumps(examples, ensure_ascii=False, separators=(",", ":"), sort_keys=True)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


def recipe_meta(
    function: Callable[..., Any], config: Any, *, data: str | None = None
) -> dict[str, Any]:
    """The ``recipe`` metadata of an artifact trained by ``function`` with ``config`` on the
    examples whose :func:`data_sha256` is ``data`` (left out when ``None``)."""
    meta: dict[str, Any] = {
        "module": function.__module__,
        "function": function.__qualname__,
        "config": dataclasses.asdict(config),
    }
    if data is not None:
        meta["data_sha256"] = data
    meta["versions"] = library_versions()
    return meta
