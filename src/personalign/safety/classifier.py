"""A small numpy classifier over sentence embeddings: inference, no torch.

:class:`EmbeddingClassifier` is a softmax regression, optionally with one ReLU hidden layer
(trained by :func:`personalign.training.boundary.fit`). Inference is two matrix products.
:func:`load_artifact` reads several named classifiers plus a JSON metadata dict from one
``.npz`` file (float16 weights, a few hundred kB) written by
:func:`personalign.training.boundary.save_artifact`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from personalign.errors import ModelNotAvailableError


@dataclass
class EmbeddingClassifier:
    """``p(class | x) = softmax(relu(x W1 + b1) W2 + b2)``; no hidden layer when ``w1`` is None."""

    classes: tuple[str, ...]
    w2: np.ndarray
    b2: np.ndarray
    w1: np.ndarray | None = None
    b1: np.ndarray | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def dim(self) -> int:
        """The input dimension."""
        return int((self.w1 if self.w1 is not None else self.w2).shape[0])

    def logits(self, x: np.ndarray) -> np.ndarray:
        """Raw class scores, shape ``(n, len(classes))``."""
        h = np.asarray(x, dtype=np.float32)
        if self.w1 is not None and self.b1 is not None:
            h = np.maximum(h @ self.w1 + self.b1, 0.0)
        out: np.ndarray = h @ self.w2 + self.b2
        return out

    def predict_proba(self, x: np.ndarray) -> np.ndarray:
        """Class probabilities, shape ``(n, len(classes))``, rows summing to 1."""
        return _softmax(self.logits(x))


def _softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    out: np.ndarray = e / e.sum(axis=1, keepdims=True)
    return out


def load_artifact(path: Path) -> tuple[dict[str, EmbeddingClassifier], dict[str, Any]]:
    """Read a file written by :func:`personalign.training.boundary.save_artifact`.

    Returns (models by name, metadata)."""
    if not path.is_file():
        raise ModelNotAvailableError(
            f"safety classifier artifact {path} is missing: run scripts/train_boundary.py"
        )
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {key: z[key] for key in z.files}
        meta: dict[str, Any] = json.loads(arrays.pop("meta").tobytes().decode("utf-8"))
    except (OSError, ValueError, KeyError) as e:
        raise ModelNotAvailableError(f"cannot read safety artifact {path}: {e}") from e
    models: dict[str, EmbeddingClassifier] = {}
    for name, info in meta.pop("models").items():
        w1 = arrays.get(f"{name}.w1")
        b1 = arrays.get(f"{name}.b1")
        models[name] = EmbeddingClassifier(
            classes=tuple(info.pop("classes")),
            w2=arrays[f"{name}.w2"].astype(np.float32),
            b2=arrays[f"{name}.b2"].astype(np.float32),
            w1=None if w1 is None else w1.astype(np.float32),
            b1=None if b1 is None else b1.astype(np.float32),
            meta=info,
        )
    return models, meta
