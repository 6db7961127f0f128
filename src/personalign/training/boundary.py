"""Training the safety boundary's embedding classifiers (numpy, no torch).

:func:`fit` trains an :class:`~personalign.safety.classifier.EmbeddingClassifier` full-batch
with Adam and L2 weight decay; :func:`save_artifact` writes several named classifiers plus a
JSON metadata dict to one ``.npz`` file (float16 weights), which the runtime reads with
:func:`personalign.safety.classifier.load_artifact`. ``scripts/train_boundary.py`` is the
recipe that builds the shipped artifact.
"""

from __future__ import annotations

import io
import json
import zipfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from personalign.safety.classifier import EmbeddingClassifier, _softmax


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
