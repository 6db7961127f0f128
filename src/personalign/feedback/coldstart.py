"""Cold start: what a user with no history starts from, and the one question worth asking.

**The population prior.** :func:`compute_prior` aggregates the current weights of every user
who has a profile (estimated from feedback, or set by hand) into one vector per dimension:
the precision-weighted mean ``sum(w / s^2) / sum(1 / s^2)``, where ``s`` is the profile's
posterior std (:data:`OVERRIDE_STD` for weights set by hand, which carry none; floored at
:data:`MIN_STD`), and the weighted spread between users. It needs at least ``min_users``
such users (``coldstart.min_users``, default 3), and it holds numbers only: no user id, no
text, no per-user value (:class:`PopulationPrior`, saved as ``<home>/population_prior.json``).

A user without weights answers with the prior's weights (:meth:`ColdStart.weights`), and
their estimate starts from it: :meth:`ColdStart.weight_prior` centres the Bayesian
Bradley-Terry prior (:class:`~personalign.feedback.weights.WeightPrior`) on it, with the
usual broad std, so each of their choices moves them away from the population.

Cadence: ``personalign profile prior --refresh`` recomputes it at once; otherwise the
:class:`~personalign.pipeline.Personalizer` recomputes it in the background (after a reply,
on its ingestion thread) when the file is missing or older than ``coldstart.refresh_hours``
(default 24), trying at most once per that period per process.

**The question.** A user with no preferences and no weights (``coldstart.ask``, default on)
gets, with a reply, one question: two short answers to the same request, the pair with the
highest expected information gain about their weights under their current posterior (BALD,
:func:`~personalign.feedback.active.choose_pair`) among :data:`QUESTION_POOL`. Their answer
is a ``pairwise`` feedback (``source="coldstart"``), which gives them weights, so it is not
asked again; unanswered, it is asked at most once every ``coldstart.ask_every`` turns.
"""

from __future__ import annotations

import json
import logging
import math
import os
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from personalign.errors import PersonalignError, ValidationError
from personalign.feedback.active import choose_pair
from personalign.feedback.weights import DEFAULT_DIMS, WeightPrior, posterior

if TYPE_CHECKING:
    from personalign.backends.stores.base import MemoryStore
    from personalign.config import ColdStartConfig, Settings

log = logging.getLogger(__name__)

PRIOR_FILE = "population_prior.json"
FORMAT = "personalign-population-prior/1"
OVERRIDE_STD = 0.25
"""The std given to weights a user set by hand (they carry no posterior std)."""
MIN_STD = 0.05
"""The least std a profile counts with, so one very certain user cannot outweigh the rest."""

QUESTION_PROMPT = "How do I make a good cup of tea?"
QUESTION_POOL: tuple[str, ...] = (
    "Steep a tea bag in just-boiled water for 3 to 4 minutes, then take it out.",
    "Start with fresh, cold water and bring it to a full boil, because reheated water tastes "
    "flat. Warm the pot first, use one teaspoon of leaves per cup, and steep black tea for "
    "three to five minutes before removing the leaves, so it develops flavour without "
    "turning bitter.",
    "Tea basics:\n- Boil fresh water\n- Warm the cup\n- Steep 3-5 minutes\n- Remove the bag\n"
    "- Add milk if you like",
    "What a lovely idea! Boil some fresh water, let your tea steep for about four minutes, "
    "and enjoy a cosy, relaxing cup. You deserve it!",
    "Bring freshly drawn water to the boil, pre-warm the vessel, and infuse the leaves for "
    "approximately four minutes; subsequently remove them to prevent excessive astringency.",
    "Just boil some water, dunk the bag in for a few minutes, and you're good to go. Easy!",
)
"""Short answers to :data:`QUESTION_PROMPT` spread over the style dimensions (short, plain,
detailed, listed, warm, formal, casual): what the cold-start question chooses two from."""


@dataclass(frozen=True)
class PopulationPrior:
    """The aggregate of users' weights: ``mean`` and ``std`` per dimension of ``dims``, over
    ``users`` users, computed at ``computed_at`` (seconds since the epoch)."""

    dims: tuple[str, ...]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    users: int
    computed_at: float

    def __post_init__(self) -> None:
        k = len(self.dims)
        if len(self.mean) != k or len(self.std) != k:
            raise ValidationError(f"population prior: {k} dims, {len(self.mean)} means")
        for v in (*self.mean, *self.std):
            if not (isinstance(v, float | int) and math.isfinite(v) and 0.0 <= v <= 1.0):
                raise ValidationError(f"population prior: value {v!r} is not in [0, 1]")
        unknown = set(self.dims) - set(DEFAULT_DIMS)
        if unknown:
            raise ValidationError(f"population prior: unknown dimensions {sorted(unknown)}")
        if self.users < 1:
            raise ValidationError(f"population prior: users must be >= 1, got {self.users}")

    def weights(self) -> dict[str, float]:
        """Dimension -> weight: a new user's effective weights."""
        return {d: round(float(m), 6) for d, m in zip(self.dims, self.mean, strict=True)}

    def to_json(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "dims": list(self.dims),
            "mean": [round(float(v), 6) for v in self.mean],
            "std": [round(float(v), 6) for v in self.std],
            "users": int(self.users),
            "computed_at": round(float(self.computed_at), 3),
        }

    @classmethod
    def from_json(cls, data: Any) -> PopulationPrior:
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise ValidationError(f"not a population prior (format {FORMAT})")
        try:
            return cls(
                tuple(str(d) for d in data["dims"]),
                tuple(float(v) for v in data["mean"]),
                tuple(float(v) for v in data["std"]),
                int(data["users"]),
                float(data["computed_at"]),
            )
        except (KeyError, TypeError, ValueError) as e:
            raise ValidationError(f"population prior: malformed ({e})") from e


def compute_prior(
    store: MemoryStore,
    *,
    min_users: int = 3,
    dims: Sequence[str] = DEFAULT_DIMS,
    now: float | None = None,
) -> PopulationPrior | None:
    """The population prior over every user's current profile (see the module doc), or None
    when fewer than ``min_users`` users have one."""
    rows: list[np.ndarray] = []  # per user: (K,) weights, NaN where missing
    precs: list[np.ndarray] = []  # per user: (K,) precisions, 0 where missing
    for user in store.users():
        prof = store.get_profile(user=user)
        if prof is None or not prof.weights:
            continue
        w = np.array([prof.weights.get(d, np.nan) for d in dims], dtype=np.float64)
        unc = prof.uncertainty or {}
        s = np.array([unc.get(d, OVERRIDE_STD) for d in dims], dtype=np.float64)
        ok = np.isfinite(w)
        rows.append(np.where(ok, np.clip(w, 0.0, 1.0), 0.0))
        precs.append(np.where(ok, 1.0 / np.maximum(s, MIN_STD) ** 2, 0.0))
    if len(rows) < max(1, min_users):
        return None
    w_all, p_all = np.stack(rows), np.stack(precs)  # (U, K)
    total = p_all.sum(axis=0)  # (K,)
    safe = np.where(total > 0, total, 1.0)
    mean = np.where(total > 0, (p_all * w_all).sum(axis=0) / safe, 0.5)  # (K,)
    var = np.where(total > 0, (p_all * (w_all - mean) ** 2).sum(axis=0) / safe, 0.0)
    return PopulationPrior(
        tuple(dims),
        tuple(float(v) for v in np.clip(mean, 0.0, 1.0)),
        tuple(float(v) for v in np.clip(np.sqrt(var), 0.0, 1.0)),
        len(rows),
        time.time() if now is None else now,
    )


def save_prior(prior: PopulationPrior, path: Path) -> Path:
    """Write ``prior`` to ``path`` atomically (a reader never sees half a file)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    tmp.write_text(json.dumps(prior.to_json(), indent=1))
    os.replace(tmp, path)
    return path


def load_prior(path: Path) -> PopulationPrior | None:
    """The prior saved at ``path``, None when there is none (ValidationError when broken)."""
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValidationError(f"{path} is not valid JSON: {e}") from e
    return PopulationPrior.from_json(data)


def question_for(prior: WeightPrior, *, dims: Sequence[str] = DEFAULT_DIMS) -> dict[str, Any]:
    """The most informative question under ``prior`` with no evidence yet (BALD over
    :data:`QUESTION_POOL`): the request, the two answers, and how to answer it."""
    from personalign.rewards.dimensions import DIMENSIONS

    post = posterior(np.zeros((0, len(dims))), np.zeros(0), dims=dims, prior=prior)
    scores = np.array([[DIMENSIONS[d](a) for d in dims] for a in QUESTION_POOL])  # type: ignore[index]
    i, j = choose_pair(post, scores, criterion="bald")
    a, b = QUESTION_POOL[i], QUESTION_POOL[j]
    return {
        "prompt": QUESTION_PROMPT,
        "options": [a, b],
        "text": "Quick question so I can fit my answers to you: which reply to "
        f'"{QUESTION_PROMPT}" do you prefer?\n1) {a}\n2) {b}',
        "answer_with": "pairwise feedback: prompt, chosen (the reply picked), rejected (the "
        "other), e.g. POST /v1/users/{user}/feedback or /answer 1|2 in chat",
        "dimensions": {
            d: round(float(v), 3) for d, v in zip(dims, scores[i] - scores[j], strict=True)
        },
    }


class ColdStart:
    """The cold-start policy of one memory (see the module doc). ``schedule`` runs a
    function in the background (the pipeline's ingestion thread); without it, a stale prior
    is recomputed in the calling thread."""

    def __init__(
        self,
        store: MemoryStore,
        settings: Settings,
        *,
        schedule: Callable[[Callable[[], object]], None] | None = None,
    ) -> None:
        self.store = store
        self.config: ColdStartConfig = settings.coldstart
        self.path = settings.home / PRIOR_FILE
        self.schedule = schedule
        self._prior: PopulationPrior | None = None
        self._loaded_mtime: float | None = None
        self._last_try = -math.inf
        self._lock = threading.Lock()

    def prior(self) -> PopulationPrior | None:
        """The saved prior (re-read when the file changed); a stale or missing one is
        recomputed (in the background with ``schedule``), at most once per refresh period."""
        if not self.config.prior:
            return None
        try:
            mtime: float | None = self.path.stat().st_mtime
        except OSError:
            mtime = None
        if mtime is not None and mtime != self._loaded_mtime:
            try:
                self._prior = load_prior(self.path)
            except ValidationError as e:
                log.warning("ignoring the population prior: %s", e)
                self._prior = None
            self._loaded_mtime = mtime
        period = self.config.refresh_hours * 3600
        now = time.time()
        fresh = self._prior is not None and now - self._prior.computed_at < period
        if not fresh and now - self._last_try >= period:
            self._last_try = now
            if self.schedule is None:
                self.refresh_quietly()
            else:
                self.schedule(self.refresh_quietly)
        return self._prior

    def refresh(self) -> PopulationPrior | None:
        """Recompute and save the prior now (None, nothing written, below ``min_users``)."""
        with self._lock:
            prior = compute_prior(self.store, min_users=self.config.min_users)
            if prior is not None:
                save_prior(prior, self.path)
                self._prior, self._loaded_mtime = prior, self.path.stat().st_mtime
            return prior

    def refresh_quietly(self) -> None:
        """:meth:`refresh`, logging a failure instead of raising (background use)."""
        try:
            self.refresh()
        except (PersonalignError, OSError) as e:
            log.warning("recomputing the population prior failed: %s", e)

    def weights(self) -> dict[str, float] | None:
        """The effective weights of a user without a profile: the prior's, or None."""
        prior = self.prior()
        return prior.weights() if prior is not None else None

    def weight_prior(self) -> WeightPrior | None:
        """The Bayesian prior a user's estimate starts from: centred on the population
        prior when there is one (None: the estimator's default)."""
        prior = self.prior()
        if prior is None:
            return None
        return WeightPrior(population=tuple(prior.weights().items()))

    def question(self, user: str) -> dict[str, Any]:
        """``{"question": {...}}`` for a user with no preferences, no weights and no question
        in their last ``ask_every - 1`` exchanges; ``{}`` otherwise (or when ``ask`` is off)."""
        if not self.config.ask or self.store.get_profile(user=user) is not None:
            return {}
        if self.store.has_user(user=user):
            n = self.config.ask_every - 1
            recent = self.store.exchanges(user=user, limit=n) if n > 0 else []
            if any(x.meta.get("question") for x in recent):
                return {}
            if self.store.list(user=user, kinds=["explicit", "implicit"], limit=1):
                return {}
        return {"question": question_for(self.weight_prior() or WeightPrior())}
