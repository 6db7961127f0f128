"""Preference pairs for a user's DPO: from their feedback, and ranked by their own reward.

Sources, in order:

* ``pairwise`` feedback: ``(prompt, chosen, rejected)`` as the user chose (a prompt is needed:
  the record's own, else its exchange's last user message);
* ``edit`` feedback: the corrected text over the original reply;
* ``ranked``: for prompts the user asked (their logged exchanges, topped up with
  :data:`DEFAULT_PROMPTS`), the base model samples ``n`` candidates, each with a style hint
  of :data:`STYLE_HINTS` in the system prompt (the pair's prompt has no hint), each scored by
  ``(1 - rm_weight) * weighted_reward(text, weights) + rm_weight * rm(text)`` where ``rm`` is
  an optional preference reward model over the user's stored preferences; the best and the
  worst become a pair when their rewards differ by at least ``min_margin``.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Protocol

import numpy as np

from personalign.types import Message

if TYPE_CHECKING:
    from personalign.backends.models.base import GenerationOptions, LanguageModel
    from personalign.backends.stores.base import MemoryStore


@dataclass(frozen=True)
class PreferencePair:
    """One DPO example: ``chosen`` is preferred over ``rejected`` as a reply to ``prompt``."""

    prompt: str
    chosen: str
    rejected: str
    source: str
    """``pairwise``, ``edit`` or ``ranked``."""
    margin: float | None = None
    """For ``ranked`` pairs: the reward difference of chosen over rejected."""


class RewardScorer(Protocol):
    """A preference reward model (``personalign.rewards.preference_rm``'s interface)."""

    def score(
        self, preferences: Sequence[str], prompt: str, responses: Sequence[str]
    ) -> np.ndarray:
        """(len(responses),) in [0, 1]: how well each response respects the preferences."""
        ...


STYLE_HINTS: tuple[str | None, ...] = (
    None,
    "Answer in one or two short sentences.",
    "Answer in detail, with explanations.",
    "Answer as a bulleted list under a short heading.",
    "Answer warmly and encouragingly, like a friendly coach.",
    "Answer in a formal, precise, technical register.",
    "Answer casually, in simple everyday words.",
)
"""System-prompt hints that spread the candidates over the style dimensions."""

DEFAULT_PROMPTS: tuple[str, ...] = (
    "How do I make a good cup of coffee?",
    "What should I pack for a weekend hiking trip?",
    "How can I sleep better?",
    "Explain what a neural network is.",
    "How do I start learning to play the guitar?",
    "What is a healthy breakfast?",
    "How do I write a good cover letter?",
    "What are some tips for saving money?",
    "How does the immune system work?",
    "How should I prepare for a job interview?",
    "What is the difference between weather and climate?",
    "How do I keep houseplants alive?",
    "Explain how compound interest works.",
    "How can I be more productive when working from home?",
    "What is a good way to learn a new language?",
    "How do vaccines work?",
    "How do I bake bread at home?",
    "What should I know before adopting a dog?",
    "How do I deal with stress at work?",
    "Explain what inflation is.",
    "How can I improve my public speaking?",
    "What is the best way to study for an exam?",
    "How do solar panels work?",
    "How do I plan a trip to Japan?",
    "What are the benefits of regular exercise?",
    "How do I make friends in a new city?",
    "Explain how a computer stores data.",
    "How do I cook rice properly?",
    "What is photosynthesis?",
    "How can I reduce my screen time?",
    "How do I choose a good laptop?",
    "Why is the sky blue?",
    "How do I start running as a beginner?",
    "What are good habits for a programmer?",
    "How does a credit score work?",
    "How do I write a short story?",
    "What causes earthquakes?",
    "How can I eat more vegetables?",
    "How do I ask my manager for a raise?",
    "What is the water cycle?",
)
"""Generic prompts used when a user has asked too few questions of their own."""


def _prompt_of(store: MemoryStore, exchange_id: str | None, *, user: str) -> str | None:
    if exchange_id is None:
        return None
    x = store.get_exchange(exchange_id, user=user)
    return next((m.content for m in reversed(x.messages) if m.role == "user"), None)


def pairs_from_feedback(store: MemoryStore, *, user: str) -> list[PreferencePair]:
    """The user's own pairs: pairwise choices and edits (see the module doc)."""
    out: list[PreferencePair] = []
    for fb in store.feedback(user=user):
        if fb.kind == "pairwise" and fb.chosen and fb.rejected:
            prompt = fb.prompt or _prompt_of(store, fb.exchange_id, user=user)
            if prompt:
                out.append(PreferencePair(prompt, fb.chosen, fb.rejected, "pairwise"))
        elif fb.kind == "edit" and fb.text:
            x = store.get_exchange(fb.exchange_id, user=user) if fb.exchange_id else None
            prompt = fb.prompt or _prompt_of(store, fb.exchange_id, user=user)
            reply = fb.response or (x.response if x else None)
            if prompt and reply and reply != fb.text:
                out.append(PreferencePair(prompt, fb.text, reply, "edit"))
    return out


def user_prompts(store: MemoryStore, *, user: str, n: int) -> list[str]:
    """Up to ``n`` distinct prompts: the user's latest questions, then :data:`DEFAULT_PROMPTS`."""
    seen: dict[str, None] = {}
    for x in reversed(store.exchanges(user=user, limit=4 * n)):
        q = next((m.content for m in reversed(x.messages) if m.role == "user"), "")
        if q.strip() and len(q) <= 1000:
            seen.setdefault(q.strip())
    for q in DEFAULT_PROMPTS:
        seen.setdefault(q)
    return list(seen)[:n]


def rewards(
    prompt: str,
    candidates: Sequence[str],
    *,
    weights: Mapping[str, float],
    scorer: RewardScorer | None = None,
    preferences: Sequence[str] = (),
    rm_weight: float = 0.5,
) -> np.ndarray:
    """(len(candidates),) rewards of each candidate for the user (see the module doc)."""
    from personalign.rewards.dimensions import weighted_reward

    r = np.array([weighted_reward(c, weights) for c in candidates])  # (n,)
    if scorer is not None and preferences and rm_weight > 0:
        rm = np.nan_to_num(scorer.score(list(preferences), prompt, list(candidates)), nan=0.5)
        r = (1 - rm_weight) * r + rm_weight * np.asarray(rm, dtype=np.float64)
    return r


def best_vs_worst(
    prompt: str, candidates: Sequence[str], scores: np.ndarray, *, min_margin: float
) -> PreferencePair | None:
    """The pair (highest, lowest reward), or None when the margin is under ``min_margin``."""
    hi, lo = int(np.argmax(scores)), int(np.argmin(scores))
    margin = float(scores[hi] - scores[lo])
    if margin < min_margin or candidates[hi] == candidates[lo]:
        return None
    return PreferencePair(prompt, candidates[hi], candidates[lo], "ranked", round(margin, 6))


def hinted_conversations(prompts: Sequence[str], n: int) -> list[list[Message]]:
    """The ``n`` conversations of each prompt: the i-th of the k-th prompt carries the style
    hint ``STYLE_HINTS[(k * n + i) % len]`` (so the hints rotate over the prompts)."""
    convs: list[list[Message]] = []
    for k, p in enumerate(prompts):
        for i in range(n):
            hint = STYLE_HINTS[(k * n + i) % len(STYLE_HINTS)]
            sys_turn = [Message(role="system", content=hint)] if hint else []
            convs.append([*sys_turn, Message(role="user", content=p)])
    return convs


def sample_candidates(
    model: LanguageModel, prompts: Sequence[str], *, n: int, options: GenerationOptions
) -> list[list[str]]:
    """``n`` sampled replies per prompt; the i-th reply of the k-th prompt has style hint
    ``STYLE_HINTS[(k * n + i) % len]`` (so the hints rotate over the prompts)."""
    convs = hinted_conversations(prompts, n)
    texts: list[str] = []
    for start in range(0, len(convs), 16):  # bounded batches
        texts += [
            g.text.strip() for g in model.generate_batch(convs[start : start + 16], options=options)
        ]
    return [texts[i * n : (i + 1) * n] for i in range(len(prompts))]


def ranked_pairs(
    model: LanguageModel,
    prompts: Sequence[str],
    *,
    weights: Mapping[str, float],
    n: int = 4,
    options: GenerationOptions,
    scorer: RewardScorer | None = None,
    preferences: Sequence[str] = (),
    rm_weight: float = 0.5,
    min_margin: float = 0.03,
) -> list[PreferencePair]:
    """Pairs ranked by the user's reward over ``n`` sampled candidates per prompt."""
    out: list[PreferencePair] = []
    for prompt, cands in zip(
        prompts, sample_candidates(model, prompts, n=n, options=options), strict=True
    ):
        cands = [c for c in cands if c]
        if len(cands) < 2:
            continue
        scores = rewards(
            prompt,
            cands,
            weights=weights,
            scorer=scorer,
            preferences=preferences,
            rm_weight=rm_weight,
        )
        pair = best_vs_worst(prompt, cands, scores, min_margin=min_margin)
        if pair is not None:
            out.append(pair)
    return out


def data_hash(obj: object) -> str:
    """SHA-256 (hex, first 16) of a JSON-able object or of pairs: what a training run saw."""
    if isinstance(obj, list | tuple) and obj and isinstance(obj[0], PreferencePair):
        obj = [asdict(p) for p in obj]
    blob = json.dumps(obj, sort_keys=True, ensure_ascii=False, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]
