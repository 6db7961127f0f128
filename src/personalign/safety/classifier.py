"""A small numpy classifier over sentence embeddings: training and inference, no torch.

:class:`EmbeddingClassifier` is a softmax regression, optionally with one ReLU hidden layer,
trained full-batch with Adam and L2 weight decay (:func:`fit`). Inference is two matrix
products. :func:`save_artifact` / :func:`load_artifact` store several named classifiers plus a
JSON metadata dict in one ``.npz`` file (float16 weights, a few hundred kB).
"""

from __future__ import annotations

import io
import json
import zipfile
from collections.abc import Mapping, Sequence
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


def fit(
    x: np.ndarray,
    labels: Sequence[str],
    classes: Sequence[str],
    *,
    hidden: int = 0,
    l2: float = 1e-4,
    epochs: int = 300,
    lr: float = 0.01,
    sample_weight: np.ndarray | None = None,
    seed: int = 0,
) -> EmbeddingClassifier:
    """Train a classifier on rows ``x`` with string ``labels`` (each one of ``classes``).

    Full-batch Adam on the weighted cross-entropy plus ``l2`` times the squared weights.
    Deterministic for a given ``seed`` (and BLAS).
    """
    index = {c: i for i, c in enumerate(classes)}
    y = np.array([index[label] for label in labels], dtype=np.int64)
    x = np.asarray(x, dtype=np.float32)
    n, d = x.shape
    k = len(classes)
    w = np.ones(n, dtype=np.float32) if sample_weight is None else sample_weight.astype(np.float32)
    w = w / w.sum()
    onehot = np.zeros((n, k), dtype=np.float32)
    onehot[np.arange(n), y] = 1.0
    rng = np.random.default_rng(seed)
    params: dict[str, np.ndarray] = {}
    if hidden:
        params["w1"] = (rng.standard_normal((d, hidden)) * np.sqrt(2.0 / d)).astype(np.float32)
        params["b1"] = np.zeros(hidden, dtype=np.float32)
        params["w2"] = (rng.standard_normal((hidden, k)) * np.sqrt(1.0 / hidden)).astype(np.float32)
    else:
        params["w2"] = np.zeros((d, k), dtype=np.float32)
    params["b2"] = np.zeros(k, dtype=np.float32)
    m = {key: np.zeros_like(v) for key, v in params.items()}
    v2 = {key: np.zeros_like(v) for key, v in params.items()}
    beta1, beta2, eps = 0.9, 0.999, 1e-8
    for step in range(1, epochs + 1):
        if hidden:
            pre = x @ params["w1"] + params["b1"]
            h = np.maximum(pre, 0.0)
        else:
            h = x
        p = _softmax(h @ params["w2"] + params["b2"])
        g = (p - onehot) * w[:, None]
        grads = {"w2": h.T @ g + 2 * l2 * params["w2"], "b2": g.sum(axis=0)}
        if hidden:
            gh = (g @ params["w2"].T) * (pre > 0)
            grads["w1"] = x.T @ gh + 2 * l2 * params["w1"]
            grads["b1"] = gh.sum(axis=0)
        for key, grad in grads.items():
            m[key] = beta1 * m[key] + (1 - beta1) * grad
            v2[key] = beta2 * v2[key] + (1 - beta2) * grad * grad
            mhat = m[key] / (1 - beta1**step)
            vhat = v2[key] / (1 - beta2**step)
            params[key] = params[key] - lr * mhat / (np.sqrt(vhat) + eps)
    return EmbeddingClassifier(
        classes=tuple(classes),
        w2=params["w2"],
        b2=params["b2"],
        w1=params.get("w1"),
        b1=params.get("b1"),
    )


def save_artifact(
    path: Path, models: Mapping[str, EmbeddingClassifier], meta: Mapping[str, Any]
) -> None:
    """Write ``models`` (float16 weights) and ``meta`` (JSON) to one ``.npz`` file."""
    arrays: dict[str, np.ndarray] = {}
    model_meta: dict[str, Any] = {}
    for name, model in models.items():
        arrays[f"{name}.w2"] = model.w2.astype(np.float16)
        arrays[f"{name}.b2"] = model.b2.astype(np.float32)
        if model.w1 is not None and model.b1 is not None:
            arrays[f"{name}.w1"] = model.w1.astype(np.float16)
            arrays[f"{name}.b1"] = model.b1.astype(np.float32)
        model_meta[name] = {"classes": list(model.classes), **model.meta}
    payload = {"models": model_meta, **meta}
    arrays["meta"] = np.frombuffer(json.dumps(payload, sort_keys=True).encode("utf-8"), np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    # A zip with fixed timestamps and sorted members: the same weights give the same bytes.
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for key in sorted(arrays):
            info = zipfile.ZipInfo(f"{key}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            buf = io.BytesIO()
            np.lib.format.write_array(buf, np.ascontiguousarray(arrays[key]), allow_pickle=False)
            zf.writestr(info, buf.getvalue())


def load_artifact(path: Path) -> tuple[dict[str, EmbeddingClassifier], dict[str, Any]]:
    """Read a file written by :func:`save_artifact`: (models by name, metadata)."""
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
