"""Cold start: ask the user to choose between answers picked for maximal information.

A :class:`CalibrationPool` holds answers the model generated for a few prompts, one per
style hint (:data:`~personalign.feedback.pairs.STYLE_HINTS`), with their dimension scores. A
:class:`Calibration` then repeatedly picks the pair of answers *to the same prompt* with the
highest expected information gain (:func:`~personalign.feedback.active.choose_pair`), records
the user's choice as ``pairwise`` feedback (``source="calibrate"``), and updates the
posterior, until its :attr:`~personalign.feedback.weights.Posterior.spread` is at most
``target_spread`` (after at least ``min_queries``) or ``max_queries`` were asked.
:meth:`Calibration.finish` writes the estimated weights as the user's profile.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from personalign.errors import ValidationError
from personalign.feedback.active import candidate_pairs, choose_pair
from personalign.feedback.events import pairwise
from personalign.feedback.learn import estimate, update_profile
from personalign.feedback.pairs import STYLE_HINTS, data_hash, sample_candidates
from personalign.feedback.weights import DEFAULT_DIMS, Posterior, WeightPrior

if TYPE_CHECKING:
    from personalign.backends.models.base import GenerationOptions, LanguageModel
    from personalign.backends.stores.base import MemoryStore
    from personalign.types import Profile

CALIBRATION_PROMPTS: tuple[str, ...] = (
    "How can I sleep better?",
    "Explain how compound interest works.",
    "What should I pack for a weekend hiking trip?",
)


@dataclass(frozen=True)
class CalibrationPool:
    """Answers to calibrate on: ``prompts[groups[i]]`` is what ``answers[i]`` answers."""

    prompts: list[str]
    answers: list[str]
    groups: list[int]

    def scores(self, dims: Sequence[str]) -> np.ndarray:
        """(N, K) dimension scores of the answers."""
        from personalign.rewards.dimensions import DIMENSIONS

        return np.array([[DIMENSIONS[d](a) for d in dims] for a in self.answers])  # type: ignore[index]


def build_pool(
    model: LanguageModel,
    *,
    options: GenerationOptions,
    prompts: Sequence[str] = CALIBRATION_PROMPTS,
    cache: Path | None = None,
) -> CalibrationPool:
    """One answer per prompt and style hint from ``model`` (greedy answers differ by their
    hint). With ``cache`` (a JSON file), a pool built for the same model, prompts and options
    is reused."""
    spec = {"model": model.name, "prompts": list(prompts), "hints": list(STYLE_HINTS)}
    key = data_hash({**spec, "options": repr(options)})
    if cache is not None and cache.is_file():
        saved = json.loads(cache.read_text())
        if saved.get("key") == key:
            return CalibrationPool(saved["prompts"], saved["answers"], saved["groups"])
    per_prompt = sample_candidates(model, prompts, n=len(STYLE_HINTS), options=options)
    answers, groups = [], []
    for g, texts in enumerate(per_prompt):
        for t in dict.fromkeys(t for t in texts if t):  # distinct, non-empty
            answers.append(t)
            groups.append(g)
    pool = CalibrationPool(list(prompts), answers, groups)
    if cache is not None:
        cache.parent.mkdir(parents=True, exist_ok=True)
        cache.write_text(json.dumps({"key": key, **asdict(pool)}))
    return pool


class Calibration:
    """One calibration session for one user (see the module doc)."""

    def __init__(
        self,
        store: MemoryStore,
        pool: CalibrationPool,
        *,
        user: str,
        dims: Sequence[str] = DEFAULT_DIMS,
        prior: WeightPrior | None = None,
        target_spread: float = 0.5,
        min_queries: int = 3,
        max_queries: int = 15,
    ) -> None:
        if not 1 <= min_queries <= max_queries:
            raise ValidationError(
                f"need 1 <= min_queries <= max_queries, got {min_queries}, {max_queries}"
            )
        self.store, self.pool, self.user = store, pool, user
        self.dims, self.prior = tuple(dims), prior
        self.target_spread, self.min_queries, self.max_queries = (
            target_spread,
            min_queries,
            max_queries,
        )
        self._scores = pool.scores(self.dims)  # (N, K)
        self._pairs = candidate_pairs(len(pool.answers), pool.groups)  # (M, 2)
        self.asked: list[tuple[int, int]] = []
        self.answered = 0
        self.posterior: Posterior = estimate(store, user=user, dims=self.dims, prior=prior)

    @property
    def done(self) -> bool:
        """Whether to stop: the weights are certain enough, or enough was asked."""
        if len(self.asked) >= min(self.max_queries, len(self._pairs)):
            return True
        return self.answered >= self.min_queries and self.posterior.spread <= self.target_spread

    def next_query(self) -> tuple[str, str, str] | None:
        """``(prompt, answer_1, answer_2)`` to show next, or None when done."""
        if self.done:
            return None
        i, j = choose_pair(self.posterior, self._scores, pairs=self._pairs, exclude=self.asked)
        self.asked.append((i, j))
        a = self.pool.answers
        return self.pool.prompts[self.pool.groups[i]], a[i], a[j]

    def answer(self, choice: int | None) -> None:
        """The user's answer to the last query: 1 or 2, or None (no preference: skipped)."""
        if not self.asked:
            raise ValidationError("answer() before next_query()")
        if choice is None:
            return
        if choice not in (1, 2):
            raise ValidationError(f"choice must be 1 or 2, got {choice!r}")
        i, j = self.asked[-1]
        win, lose = (i, j) if choice == 1 else (j, i)
        self.store.add_feedback(
            pairwise(
                self.pool.answers[win],
                self.pool.answers[lose],
                prompt=self.pool.prompts[self.pool.groups[i]],
                source="calibrate",
            ),
            user=self.user,
        )
        self.answered += 1
        self.posterior = estimate(self.store, user=self.user, dims=self.dims, prior=self.prior)

    def finish(self) -> Profile | None:
        """Write the estimate as the user's profile (None if nothing was answered)."""
        if self.answered == 0:
            return None
        return update_profile(
            self.store,
            user=self.user,
            dims=self.dims,
            prior=self.prior,
            reason=f"calibrate: {self.answered} choice(s), spread {self.posterior.spread:.2f}",
        )
