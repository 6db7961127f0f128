"""The user's weights over dimensions from their choices: Bayesian Bradley-Terry (LoRe, PReF).

Model. A user prefers answer ``a`` over ``b`` with probability ``sigmoid(theta . d)``, where
``d = s(a) - s(b)`` is the difference of the answers' dimension scores
(:func:`~personalign.rewards.dimension_scores`, each in [0, 1]) and ``theta`` in R^K is the
user's latent weight vector: its direction is what they care about, its length how
consistently they choose by it. A rating of one answer is a comparison with a reference
answer (scores ``reference``) whose outcome is a soft label: thumbs up 1, down 0, stars
``(n - 1) / 4``.

Prior ``theta ~ N(prior_mean, prior_std^2 I)``. Posterior by the Laplace approximation:
Newton's method to the MAP ``mean``, and ``cov`` = the inverse Hessian of the negative log
posterior there.

Profile. :meth:`Posterior.weights` projects ``mean`` to [0, 1]: negatives clipped to 0, then
divided by the largest entry (the most important dimension gets 1);
:meth:`Posterior.uncertainty` is the posterior standard deviation of each entry in those same
units. :attr:`Posterior.spread` = ``sqrt(trace(cov)) / |mean|`` is scale-free (about the angle,
in radians, the direction could still move): calibration stops when it is small.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from personalign.errors import ValidationError

DEFAULT_DIMS: tuple[str, ...] = ("conciseness", "readability", "warmth", "structure", "formality")
"""The dimensions estimated by default (every :data:`~personalign.rewards.DIMENSION_NAMES`)."""


@dataclass(frozen=True)
class WeightPrior:
    """Prior on ``theta``: mean ``scale * w0`` (``w0``: the user's last override, else the
    ``population`` weights when given (``(dimension, weight)`` pairs: the population prior of
    :mod:`personalign.feedback.coldstart`; a dimension it lacks gets 0.5), else 0.5 for every
    dimension), standard deviation ``std`` (``override_std`` around an override)."""

    scale: float = 8.0
    std: float = 6.0
    override_std: float = 2.0
    population: tuple[tuple[str, float], ...] = ()

    def __post_init__(self) -> None:
        for name in ("scale", "std", "override_std"):
            v = getattr(self, name)
            if not (math.isfinite(v) and v > 0):
                raise ValidationError(f"WeightPrior.{name} must be a positive number, got {v!r}")
        for dim, w in self.population:
            if not (math.isfinite(w) and 0.0 <= w <= 1.0):
                raise ValidationError(f"WeightPrior.population[{dim!r}] must be in [0, 1]: {w!r}")


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * z))  # stable for large |z|


def fit_laplace(
    diffs: np.ndarray,
    labels: np.ndarray,
    *,
    prior_mean: np.ndarray,
    prior_std: float,
    sample_weights: np.ndarray | None = None,
    iters: int = 50,
    tol: float = 1e-9,
) -> tuple[np.ndarray, np.ndarray]:
    """MAP and Laplace covariance of Bayesian logistic regression without intercept.

    ``diffs``: (N, K) score differences; ``labels``: (N,) in [0, 1] (soft labels allowed);
    ``sample_weights``: (N,) >= 0, default 1. Returns ``mean`` (K,) and ``cov`` (K, K).
    """
    d = np.asarray(diffs, dtype=np.float64).reshape(-1, len(prior_mean))  # (N, K)
    y = np.asarray(labels, dtype=np.float64).reshape(-1)  # (N,)
    c = np.ones_like(y) if sample_weights is None else np.asarray(sample_weights, np.float64)
    if len(y) != len(d) or len(c) != len(d):
        raise ValidationError(f"{len(d)} differences but {len(y)} labels, {len(c)} weights")
    if ((y < 0) | (y > 1)).any() or (c < 0).any():
        raise ValidationError("labels must be in [0, 1] and sample weights >= 0")
    mu0 = np.asarray(prior_mean, dtype=np.float64)  # (K,)
    k = len(mu0)
    prec0 = np.eye(k) / prior_std**2  # (K, K)

    def objective(t: np.ndarray) -> float:  # negative log posterior, up to a constant
        z = d @ t  # (N,)
        nll = c * (y * np.logaddexp(0.0, -z) + (1 - y) * np.logaddexp(0.0, z))
        return float(0.5 * (t - mu0) @ prec0 @ (t - mu0) + nll.sum())

    theta = mu0.copy()
    f = objective(theta)
    for _ in range(iters):
        p = _sigmoid(d @ theta)  # (N,)
        grad = prec0 @ (theta - mu0) - d.T @ (c * (y - p))  # (K,)
        hess = prec0 + (d * (c * p * (1 - p))[:, None]).T @ d  # (K, K)
        step = np.linalg.solve(hess, grad)  # (K,) Newton direction
        t = 1.0
        while objective(theta - t * step) > f - 1e-4 * t * float(grad @ step) and t > 1e-6:
            t /= 2  # backtracking (Armijo): Newton alone can overshoot
        theta = theta - t * step
        f = objective(theta)
        if float(np.abs(t * step).max()) < tol:
            break
    p = _sigmoid(d @ theta)
    hess = prec0 + (d * (c * p * (1 - p))[:, None]).T @ d
    cov = np.linalg.inv(hess)
    return theta, (cov + cov.T) / 2


@dataclass(frozen=True)
class Posterior:
    """Gaussian posterior over ``theta`` for ``dims`` after ``n`` observations."""

    dims: tuple[str, ...]
    mean: np.ndarray  # (K,)
    cov: np.ndarray  # (K, K)
    n: int = 0
    prior_mean: np.ndarray = field(default_factory=lambda: np.zeros(0))

    @property
    def std(self) -> np.ndarray:
        """(K,) posterior standard deviations of ``theta``."""
        return np.sqrt(np.clip(np.diag(self.cov), 0.0, None))

    @property
    def spread(self) -> float:
        """``sqrt(trace(cov)) / |mean|``: scale-free uncertainty of the direction."""
        norm = float(np.linalg.norm(self.mean))
        return math.inf if norm == 0 else float(np.sqrt(np.trace(self.cov))) / norm

    def _unit(self) -> float:
        top = float(np.clip(self.mean, 0.0, None).max())
        return top if top > 0 else 1.0

    def weights(self) -> dict[str, float]:
        """The profile weights in [0, 1] (see the module doc); all 1 when no entry is > 0."""
        pos = np.clip(self.mean, 0.0, None)
        if pos.max() <= 0:
            return dict.fromkeys(self.dims, 1.0)
        return {d: round(float(v), 6) for d, v in zip(self.dims, pos / pos.max(), strict=True)}

    def uncertainty(self) -> dict[str, float]:
        """Posterior std of each weight, in profile units."""
        return {
            d: round(float(v), 6) for d, v in zip(self.dims, self.std / self._unit(), strict=True)
        }


def posterior(
    diffs: np.ndarray,
    labels: np.ndarray,
    *,
    dims: Sequence[str],
    prior: WeightPrior | None = None,
    base: Sequence[float] | np.ndarray | None = None,
    sample_weights: np.ndarray | None = None,
) -> Posterior:
    """The posterior from (N, K) ``diffs`` and (N,) ``labels``; ``base`` is the prior's ``w0``
    (default 0.5 each), from an override when there is one (then std ``override_std``)."""
    prior = prior or WeightPrior()
    w0 = np.full(len(dims), 0.5) if base is None else np.asarray(base, dtype=np.float64)
    if base is None and prior.population:
        pop = dict(prior.population)
        w0 = np.array([pop.get(d, 0.5) for d in dims], dtype=np.float64)
    mean0 = prior.scale * w0  # (K,)
    std = prior.std if base is None else prior.override_std
    diffs = np.asarray(diffs, dtype=np.float64).reshape(-1, len(dims))
    mean, cov = fit_laplace(
        diffs, labels, prior_mean=mean0, prior_std=std, sample_weights=sample_weights
    )
    return Posterior(tuple(dims), mean, cov, n=len(diffs), prior_mean=mean0)


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    """Cosine similarity of two vectors (0 when either is zero)."""
    na, nb = float(np.linalg.norm(a)), float(np.linalg.norm(b))
    return 0.0 if na == 0 or nb == 0 else float(np.dot(a, b) / (na * nb))
