"""Embedders turn texts into unit-length vectors.

Interface: :class:`Embedder`. ``embed(texts)`` returns a float32 array of shape
``(len(texts), dim)`` whose rows have L2 norm 1, so a dot product is cosine similarity.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, runtime_checkable

import numpy as np


@runtime_checkable
class Embedder(Protocol):
    """Turns texts into unit vectors. ``name`` identifies the model (stored with vectors)."""

    name: str
    dim: int

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """Return a ``(len(texts), dim)`` float32 array of unit-norm rows."""
        ...
