"""Active queries: which two answers to show the user next, to learn their weights fastest.

Each candidate answer has dimension scores ``s`` (N, K); a query is a pair ``(i, j)`` with
difference ``d = s[i] - s[j]``. Under the Gaussian posterior of
:mod:`personalign.feedback.weights`, ``z = theta . d ~ N(m, v)`` with ``m = mean . d`` and
``v = d' cov d``. Criteria, keyed by name (higher is a better query):

``bald``      expected information gain about ``theta`` from the user's answer (BALD,
              Houlsby et al. 2011), in bits, with the probit approximation
              ``sigmoid(z) ~ Phi(z sqrt(pi / 8))``: the entropy of the predicted answer minus
              the expected entropy given ``theta``. Prefers pairs the model cannot predict
              *because* it is unsure of ``theta``, not because the answers are alike.
``variance``  ``v``: posterior variance along the difference (uncertainty sampling).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Collection, Mapping, Sequence
from typing import Literal

import numpy as np

from personalign.errors import ValidationError
from personalign.feedback.weights import Posterior

Criterion = Literal["bald", "variance"]
_C2 = math.pi * math.log(2) / 2  # Houlsby's C^2: h(Phi(x)) ~ exp(-x^2 / (pi ln 2)) bits
_L2 = math.pi / 8  # probit scale of the logistic, squared


def _entropy_bits(p: np.ndarray) -> np.ndarray:
    p = np.clip(p, 1e-12, 1 - 1e-12)
    return -(p * np.log2(p) + (1 - p) * np.log2(1 - p))


def _phi(x: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.vectorize(math.erf)(x / math.sqrt(2)))


def bald(mean: np.ndarray, cov: np.ndarray, diffs: np.ndarray) -> np.ndarray:
    """(M,) expected information gain in bits of each row of ``diffs`` (M, K)."""
    m = diffs @ mean  # (M,)
    v = np.einsum("mk,kl,ml->m", diffs, cov, diffs)  # (M,)
    m2, v2 = m * math.sqrt(_L2), v * _L2
    predictive = _entropy_bits(_phi(m2 / np.sqrt(1 + v2)))
    expected = math.sqrt(_C2) / np.sqrt(v2 + _C2) * np.exp(-(m2**2) / (2 * (v2 + _C2)))
    return np.asarray(predictive - expected)


def variance(mean: np.ndarray, cov: np.ndarray, diffs: np.ndarray) -> np.ndarray:
    """(M,) posterior variance of ``theta . d`` for each row of ``diffs`` (M, K)."""
    return np.asarray(np.einsum("mk,kl,ml->m", diffs, cov, diffs))


CRITERIA: Mapping[Criterion, Callable[[np.ndarray, np.ndarray, np.ndarray], np.ndarray]] = {
    "bald": bald,
    "variance": variance,
}


def candidate_pairs(n: int, groups: Sequence[object] | None = None) -> np.ndarray:
    """(M, 2) index pairs ``i < j`` over ``n`` answers, within the same group if ``groups``
    (one label per answer, e.g. the prompt it answers) is given."""
    i, j = np.triu_indices(n, k=1)
    pairs = np.stack([i, j], axis=1)
    if groups is not None:
        if len(groups) != n:
            raise ValidationError(f"{len(groups)} group labels for {n} answers")
        same = np.array([groups[a] == groups[b] for a, b in pairs], dtype=bool)
        pairs = pairs[same] if len(pairs) else pairs
    return pairs.reshape(-1, 2)


def choose_pair(
    post: Posterior,
    scores: np.ndarray,
    *,
    pairs: np.ndarray | None = None,
    exclude: Collection[tuple[int, int]] = (),
    criterion: Criterion = "bald",
) -> tuple[int, int]:
    """The pair of rows of ``scores`` (N, K) that maximizes ``criterion``; ``exclude`` holds
    pairs already asked. Raises :class:`ValidationError` when no pair is left."""
    if criterion not in CRITERIA:
        raise ValidationError(f"criterion must be one of {tuple(CRITERIA)}, got {criterion!r}")
    s = np.asarray(scores, dtype=np.float64)  # (N, K)
    cand = candidate_pairs(len(s)) if pairs is None else np.asarray(pairs).reshape(-1, 2)
    if exclude:
        asked = {(min(a, b), max(a, b)) for a, b in exclude}
        keep = [(int(a), int(b)) not in asked for a, b in cand]
        cand = cand[np.array(keep, dtype=bool)]
    if len(cand) == 0:
        raise ValidationError("no query left: every pair of answers was asked")
    gain = CRITERIA[criterion](post.mean, post.cov, s[cand[:, 0]] - s[cand[:, 1]])  # (M,)
    best = int(np.argmax(gain))
    return int(cand[best, 0]), int(cand[best, 1])
