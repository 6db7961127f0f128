"""Measurable rewards: per-dimension style scores, preference compliance, objective weights.

* :mod:`~personalign.rewards.dimensions` — style dimensions (conciseness, readability, warmth,
  structure, formality), each a documented pure function ``str -> [0, 1]``.
* :mod:`~personalign.rewards.weights` — user weights over objectives, normalized with floors
  that user weights cannot lower (the safety objective's guarantee).
* :mod:`~personalign.rewards.base` — the reward-model interface and the numpy ranker fitting
  the reward models share.
* :mod:`~personalign.rewards.preference_rm` — preference-conditioned reward models:
  ``score(preferences, prompt, responses) -> array`` (an embedded model and an LLM judge).

This package imports only numpy, the backends and its own artifacts: decoding, feedback and
evaluation build on it.
"""

from personalign.rewards.dimensions import (
    DIMENSION_NAMES,
    DIMENSIONS,
    Dimension,
    dimension_scores,
    weighted_reward,
)
from personalign.rewards.weights import normalize_weights

__all__ = [
    "DIMENSIONS",
    "DIMENSION_NAMES",
    "Dimension",
    "dimension_scores",
    "normalize_weights",
    "weighted_reward",
]
