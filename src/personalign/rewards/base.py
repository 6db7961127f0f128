"""What the reward models share: the :class:`PreferenceRewardModel` interface and the
min-over-preferences rule (used by :mod:`~personalign.rewards.preference_rm` and
:mod:`~personalign.rewards.lm_probe`; their listwise ranker is fitted by
:mod:`personalign.training.reward_model`)."""

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
