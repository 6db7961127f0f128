"""The training recipes' solvers (scikit-learn) minimize the objectives their docstrings state."""

from __future__ import annotations

import numpy as np
import pytest

from personalign.safety.classifier import _softmax
from personalign.training.boundary import fit
from personalign.training.reward_model import fit_calibration


def _objective(w2: np.ndarray, b2: np.ndarray, x, y, sw, l2: float) -> float:
    p = _softmax(x @ w2 + b2)
    ce = -np.log(p[np.arange(len(y)), y])
    return float((sw / sw.sum()) @ ce + l2 * np.sum(w2 * w2))


@pytest.mark.parametrize("k", [2, 3])
def test_fit_minimizes_weighted_cross_entropy_plus_l2(k: int) -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(300, 5))
    y = rng.integers(0, k, size=300)
    x[np.arange(300), y] += 1.5  # separable-ish
    sw = rng.uniform(0.5, 2.0, size=300)
    classes = [f"c{i}" for i in range(k)]
    l2 = 1e-2
    model = fit(x, [classes[i] for i in y], classes, l2=l2, sample_weight=sw)
    assert model.classes == tuple(classes)
    best = _objective(model.w2.astype(np.float64), model.b2, x, y, sw, l2)
    # softmax is invariant to a shift of every class's logits; a binary fit has one logit
    centred_w = model.w2 - model.w2.mean(axis=1, keepdims=True)
    centred_b = model.b2 - model.b2.mean()
    best = min(best, _objective(centred_w, centred_b, x, y, sw, l2))
    for _ in range(20):  # no nearby point does better
        dw = rng.normal(scale=0.05, size=model.w2.shape)
        db = rng.normal(scale=0.05, size=model.b2.shape)
        assert _objective(centred_w + dw, centred_b + db, x, y, sw, l2) >= best - 1e-6
    acc = np.mean(np.argmax(x @ model.w2 + model.b2, axis=1) == y)
    assert acc > 0.6


def test_fit_rejects_one_class() -> None:
    with pytest.raises(ValueError, match="two classes"):
        fit(np.ones((3, 2)), ["a", "a", "a"], ["a", "b"])


def test_calibration_is_the_balanced_logistic_mle() -> None:
    rng = np.random.default_rng(1)
    z = rng.normal(size=(400, 4))
    z[:, 0] += 1.5
    a, b = fit_calibration(z)
    labels = np.zeros_like(z)
    labels[:, 0] = 1
    pos = labels.ravel() > 0
    weight = np.where(pos, 0.5 / pos.sum(), 0.5 / (~pos).sum())

    def nll(a: float, b: float) -> float:
        p = 1 / (1 + np.exp(-(a * z.ravel() + b)))
        return float(-(weight * np.where(pos, np.log(p), np.log(1 - p))).sum())

    # the gradient vanishes at the MLE
    eps = 1e-5
    assert abs(nll(a + eps, b) - nll(a - eps, b)) / (2 * eps) < 1e-5
    assert abs(nll(a, b + eps) - nll(a, b - eps)) / (2 * eps) < 1e-5
    assert a > 0
