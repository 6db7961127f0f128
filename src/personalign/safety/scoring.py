"""How a classifier's class probabilities become verdicts, per decision (shared by the
checkers of :mod:`personalign.safety.checkers`)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from personalign.safety.policy import ALWAYS_ON, Policy
from personalign.safety.verdict import NONE, Verdict

#: The boundary's decisions, each with its own thresholds (:meth:`Policy.threshold_for`):
#: storing a candidate preference, answering a request, returning a reply.
PREFERENCE = "preference"
REQUEST = "request"
REPLY = "reply"


def admit_verdict(
    checker: str, policy: Policy, score: float = 0.0, threshold: float | None = None
) -> Verdict:
    """An admitting verdict of ``checker`` (``threshold``: the one ``score`` stayed under)."""
    return Verdict(
        admitted=True,
        category=NONE,
        score=float(min(max(score, 0.0), 1.0)),
        reason="no policy category applies",
        checker=checker,
        policy_version=policy.version,
        threshold=threshold,
    )


def refuse_verdict(
    checker: str,
    policy: Policy,
    category: str,
    score: float,
    reason: str,
    threshold: float | None = None,
) -> Verdict:
    """A refusing verdict of ``checker`` under ``category`` (``threshold``: the one ``score``
    reached)."""
    return Verdict(
        admitted=False,
        category=category,
        score=float(min(max(score, 0.0), 1.0)),
        reason=reason,
        checker=checker,
        policy_version=policy.version,
        user_message=policy.message_for(category),
        threshold=threshold,
    )


def harm_indices(classes: Sequence[str], policy: Policy) -> list[int]:
    """Indices of the enabled policy categories among ``classes``."""
    enabled = {c.name for c in policy.enabled()}
    return [i for i, c in enumerate(classes) if c in enabled]


def verdicts_from_probs(
    name: str,
    policy: Policy,
    probs: np.ndarray,
    classes: Sequence[str],
    harm_idx: list[int],
    *,
    decision: str = PREFERENCE,
    decides: bool = True,
    calibrated: dict[str, float] | None = None,
) -> list[Verdict]:
    """Harm score = the summed probability of the enabled categories (disabled categories and
    non-harm classes such as ``injection`` cannot cause a refusal); refused when it reaches the
    most likely category's threshold for ``decision`` (never when not ``decides``)."""
    out = []
    for row in probs:
        if not harm_idx:
            out.append(admit_verdict(name, policy))
            continue
        harm_probs = row[harm_idx]
        score = float(harm_probs.sum())
        cat = classes[harm_idx[int(np.argmax(harm_probs))]]
        if not decides:  # scores injection only: no harm verdict, no harm score
            out.append(admit_verdict(name, policy))
            continue
        threshold = policy.threshold_for(cat, decision)
        if calibrated and decision in calibrated:
            # the model's own threshold, calibrated on held-out sources (never laxer than an
            # always-on category's policy threshold)
            own = float(calibrated[decision])
            threshold = min(own, threshold) if cat in ALWAYS_ON else own
        if score >= threshold:
            description = policy.categories[cat].description
            out.append(
                refuse_verdict(
                    name,
                    policy,
                    cat,
                    score,
                    f"{description} (classifier score {score:.2f} >= {threshold:.2f})",
                    threshold,
                )
            )
        else:
            out.append(admit_verdict(name, policy, score, threshold))
    return out
