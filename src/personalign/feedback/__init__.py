"""Feedback-based alignment: capture feedback, estimate the user's weights, train adapters.

* :mod:`~personalign.feedback.events` — typed feedback records (rating, pairwise, edit,
  critique, override), each linked to a logged exchange;
* :mod:`~personalign.feedback.learn` — :func:`record_feedback`: store it, read critique and
  edits into memory, re-estimate the weights;
* :mod:`~personalign.feedback.weights` — Bayesian Bradley-Terry with a Laplace posterior;
* :mod:`~personalign.feedback.active` — the most informative next query (BALD);
* :mod:`~personalign.feedback.pairs` — DPO pairs from feedback and reward ranking;
* :mod:`~personalign.feedback.adapters` — :class:`AdapterStore`, per-user LoRA versions;
* :mod:`~personalign.feedback.train` — per-user DPO jobs (local process pool or Ray).

Importing this package does not import torch, TRL, PEFT or Ray.
"""

from personalign.feedback.active import choose_pair
from personalign.feedback.adapters import AdapterInfo, AdapterStore, adapter_name
from personalign.feedback.learn import (
    FeedbackOutcome,
    estimate,
    record_feedback,
    set_weights,
    update_profile,
)
from personalign.feedback.pairs import PreferencePair
from personalign.feedback.weights import DEFAULT_DIMS, Posterior, WeightPrior, posterior

__all__ = [
    "DEFAULT_DIMS",
    "AdapterInfo",
    "AdapterStore",
    "FeedbackOutcome",
    "Posterior",
    "PreferencePair",
    "WeightPrior",
    "adapter_name",
    "choose_pair",
    "estimate",
    "posterior",
    "record_feedback",
    "set_weights",
    "update_profile",
]
