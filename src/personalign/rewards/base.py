"""What the reward models share: the :class:`PreferenceRewardModel` interface, the
min-over-preferences rule, and the numpy fitting of a listwise linear ranker and its
calibration (used by :mod:`~personalign.rewards.preference_rm` and
:mod:`~personalign.rewards.lm_probe`)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Protocol, runtime_checkable

import numpy as np

from personalign.errors import ValidationError


@runtime_checkable
class PreferenceRewardModel(Protocol):
    """Scores replies by compliance with the user's preferences (see the module doc)."""

    def score(
        self, preferences: Sequence[str], prompt: str, responses: Sequence[str]
    ) -> np.ndarray:
        """``(len(responses),)`` float64 in [0, 1]; higher respects the preferences better."""
        ...


def check_inputs(
    preferences: Sequence[str], responses: Sequence[str]
) -> tuple[list[str], list[str]]:
    if isinstance(preferences, str) or isinstance(responses, str):
        raise ValidationError("preferences and responses are sequences of strings, not a string")
    """``preferences`` without the blank ones and ``responses`` as lists; a bare string for
    either raises :class:`ValidationError`."""
    return [p for p in preferences if p.strip()], list(responses)


def min_over_preferences(
    preferences: Sequence[str],
    responses: Sequence[str],
    pair_scores: Callable[[list[str], list[str]], np.ndarray],
) -> np.ndarray:
    """Each response's minimum over ``preferences`` of ``pair_scores(prefs, resps)``, which
    scores every (preference, response) pair preference-major ``(P * R,)``; 1 with no
    preference (nothing to violate). Checks the inputs."""
    prefs, resps = check_inputs(preferences, responses)
    if not prefs or not resps:
        return np.ones(len(resps))
    scores = np.asarray(pair_scores(prefs, resps), dtype=np.float64).reshape(len(prefs), -1)
    out: np.ndarray = scores.min(axis=0)
    return out


# -- training (numpy, deterministic) -----------------------------------------------------------


def fit_listwise(
    groups: np.ndarray, *, l2: float = 1e-3, epochs: int = 800, lr: float = 0.05
) -> np.ndarray:
    """Weights (F,) of a linear scorer ranking option 0 first in each group ``(N, K, F)``:
    full-batch Adam on the softmax cross-entropy over the K options, L2 ``l2``, from zeros."""
    x = np.asarray(groups, dtype=np.float64)  # (N, K, F)
    n, _, f = x.shape
    w, m, v = np.zeros(f), np.zeros(f), np.zeros(f)
    for t in range(1, epochs + 1):
        s = x @ w  # (N, K)
        p = np.exp(s - s.max(axis=1, keepdims=True))
        p /= p.sum(axis=1, keepdims=True)
        p[:, 0] -= 1.0  # d loss / d s
        g = np.einsum("nk,nkf->f", p, x) / n + l2 * w  # (F,)
        m = 0.9 * m + 0.1 * g
        v = 0.999 * v + 0.001 * g * g
        w -= lr * (m / (1 - 0.9**t)) / (np.sqrt(v / (1 - 0.999**t)) + 1e-8)
    return w


def fit_calibration(z: np.ndarray, *, epochs: int = 2000) -> tuple[float, float]:
    """(scale, bias) of ``sigmoid(scale * z + bias)`` by class-balanced logistic regression
    over ranker scores ``z`` of groups ``(N, K)`` whose first option is compliant and the
    others violating."""
    z = np.asarray(z, dtype=np.float64)
    labels = np.zeros_like(z)
    labels[:, 0] = 1.0
    z, y = z.ravel(), labels.ravel()
    pos = max(1.0, float(y.sum()))
    neg = max(1.0, float(len(y) - y.sum()))
    weight = np.where(y > 0, 0.5 / pos, 0.5 / neg)  # (N * K,)
    a, b = 1.0, 0.0
    for _ in range(epochs):
        p = 1.0 / (1.0 + np.exp(-(a * z + b)))
        err = weight * (p - y)
        a -= 1.0 * float((err * z).sum())
        b -= 1.0 * float(err.sum())
    return a, b
