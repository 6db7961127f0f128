"""From feedback to what personalign knows about the user: their memory and their weights.

:func:`record_feedback` appends one feedback record (nothing is lost), then:

* ``critique`` -> the memory's extractor reads it as the user's turn after the reply it is
  about; what it finds is reconciled into the memory like anything else the user says.
* ``edit`` -> each dimension the edit moved by at least :data:`EDIT_DELTA` becomes an
  implicit preference ("I prefer shorter, more concise answers."), reconciled into the
  memory; the edit is also a choice (corrected over original) for the weights.
* ``pairwise``, ``rating``, ``edit`` -> the weights are re-estimated (:func:`estimate`) and a
  new profile version is written (``source="feedback"``, uncertainty = posterior std).
* ``override`` -> the weights the user set become the profile (``source="user"``) and the
  prior of later estimates; choices made before an override no longer count.

Memory writes go through the store given (a guarded or scoped store applies its checks).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from personalign.feedback.weights import DEFAULT_DIMS, Posterior, WeightPrior, posterior
from personalign.types import Feedback, FeedbackIn, Message, Profile

if TYPE_CHECKING:
    from personalign.backends.stores.base import MemoryStore
    from personalign.memory import Memory
    from personalign.memory.extract import Extractor

EDIT_DELTA = 0.15
"""How far an edit must move a dimension score to count as a stated preference."""
EDIT_MIN_WORDS = 30

_EDIT_STATEMENTS: dict[str, tuple[str, str]] = {
    "conciseness": (
        "I prefer shorter, more concise answers.",
        "I prefer longer, more detailed answers.",
    ),
    "readability": ("I prefer simple, plain wording.", "I prefer precise, technical wording."),
    "warmth": ("I prefer a warm, friendly tone.", "I prefer a neutral, matter-of-fact tone."),
    "structure": (
        "I prefer answers structured with lists or headings.",
        "I prefer answers in plain prose, without lists or headings.",
    ),
    "formality": ("I prefer a formal tone.", "I prefer a casual, conversational tone."),
}
"""Per dimension: the statement when an edit raised it, and when an edit lowered it."""


@dataclass
class FeedbackOutcome:
    """What :func:`record_feedback` did: the stored record, the new profile (if the weights
    changed), and the memories written from it."""

    feedback: Feedback
    profile: Profile | None = None
    memories: list[str] = field(default_factory=list)
    """Texts of the preferences written to memory (added or superseding)."""
    notes: list[str] = field(default_factory=list)


class _Scores:
    """Dimension scores of texts, computed once per text."""

    def __init__(self, dims: Sequence[str]) -> None:
        from personalign.rewards.dimensions import DIMENSIONS

        self.dims = tuple(dims)
        self._fns = [DIMENSIONS[d] for d in self.dims]  # type: ignore[index]
        self._cache: dict[str, np.ndarray] = {}

    def __call__(self, text: str) -> np.ndarray:
        if text not in self._cache:
            self._cache[text] = np.array([fn(text) for fn in self._fns])  # (K,)
        return self._cache[text]


def reply_of(store: MemoryStore, fb: FeedbackIn, *, user: str) -> tuple[str | None, str | None]:
    """``(prompt, reply)`` that ``fb`` is about: its own fields, else its exchange's last user
    message and response."""
    prompt, reply = fb.prompt, fb.response
    if fb.exchange_id is not None and (prompt is None or reply is None):
        x = store.get_exchange(fb.exchange_id, user=user)
        last = next((m.content for m in reversed(x.messages) if m.role == "user"), None)
        prompt, reply = prompt or last, reply or x.response
    return prompt, reply


def observations(
    store: MemoryStore,
    *,
    user: str,
    dims: Sequence[str] = DEFAULT_DIMS,
    feedback: Sequence[Feedback] | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """The user's comparisons as ``(diffs (N, K), labels (N,), base (K,) or None)``.

    Only feedback after the latest override counts; ``base`` is that override's weights
    (missing dimensions 0.5). A rating compares the reply with the mean scores of the user's
    last 100 logged replies (0.5 each without any).
    """
    fbs = list(store.feedback(user=user) if feedback is None else feedback)
    score = _Scores(dims)
    base: np.ndarray | None = None
    last_override = max((i for i, f in enumerate(fbs) if f.kind == "override"), default=-1)
    if last_override >= 0:
        w = fbs[last_override].weights
        base = np.array([w.get(d, 0.5) for d in dims])
    reference: np.ndarray | None = None
    diffs: list[np.ndarray] = []
    labels: list[float] = []
    for fb in fbs[last_override + 1 :]:
        if fb.kind == "pairwise" and fb.chosen and fb.rejected:
            diffs.append(score(fb.chosen) - score(fb.rejected))
            labels.append(1.0)
        elif fb.kind == "edit" and fb.text:
            _, reply = reply_of(store, fb, user=user)
            if reply and reply != fb.text:
                diffs.append(score(fb.text) - score(reply))
                labels.append(1.0)
        elif fb.kind == "rating" and fb.label is not None:
            _, reply = reply_of(store, fb, user=user)
            if reply:
                if reference is None:
                    replies = [x.response for x in store.exchanges(user=user, limit=100)]
                    rows = [score(r) for r in replies if r.strip()]
                    reference = np.mean(rows, axis=0) if rows else np.full(len(dims), 0.5)
                diffs.append(score(reply) - reference)
                labels.append(fb.label)
    k = len(dims)
    return np.array(diffs).reshape(-1, k), np.array(labels), base


def estimate(
    store: MemoryStore,
    *,
    user: str,
    dims: Sequence[str] = DEFAULT_DIMS,
    prior: WeightPrior | None = None,
) -> Posterior:
    """The posterior over the user's weights from all their feedback (see the module doc)."""
    diffs, labels, base = observations(store, user=user, dims=dims)
    return posterior(diffs, labels, dims=dims, prior=prior, base=base)


def update_profile(
    store: MemoryStore,
    *,
    user: str,
    dims: Sequence[str] = DEFAULT_DIMS,
    prior: WeightPrior | None = None,
    reason: str | None = None,
) -> Profile:
    """Re-estimate the user's weights and write them as a new profile version."""
    post = estimate(store, user=user, dims=dims, prior=prior)
    return store.set_profile(
        post.weights(),
        user=user,
        uncertainty=post.uncertainty(),
        source="feedback",
        reason=reason or f"Bayesian Bradley-Terry over {post.n} comparison(s)",
    )


def set_weights(
    store: MemoryStore, weights: dict[str, float], *, user: str, reason: str | None = None
) -> tuple[Feedback, Profile]:
    """The user's override: kept as feedback, and written as their profile."""
    from personalign.feedback.events import override

    fb = store.add_feedback(override(weights, reason=reason), user=user)
    prof = store.set_profile(fb.weights, user=user, source="user", reason=reason or "override")
    return fb, prof


def edit_statements(original: str, corrected: str, *, delta: float = EDIT_DELTA) -> list[str]:
    """The preferences an edit reveals: one statement per dimension it moved by ``delta``.
    Length (conciseness) counts only when the word count changed by half or more; the other
    dimensions only when both texts have at least :data:`EDIT_MIN_WORDS` words (the scores
    of very short texts are noise)."""
    score = _Scores(tuple(_EDIT_STATEMENTS))
    moved = score(corrected) - score(original)  # (K,)
    n_old, n_new = len(original.split()), len(corrected.split())
    long_enough = min(n_old, n_new) >= EDIT_MIN_WORDS
    out = []
    for d, m in zip(score.dims, moved, strict=True):
        if abs(m) < delta:
            continue
        if d == "conciseness":
            if max(n_old, n_new) < 1.5 * min(n_old, n_new):
                continue
        elif not long_enough:
            continue
        out.append(_EDIT_STATEMENTS[d][0 if m > 0 else 1])
    return out


def record_feedback(
    store: MemoryStore,
    fb: FeedbackIn,
    *,
    user: str,
    extractor: Extractor | None = None,
    dims: Sequence[str] = DEFAULT_DIMS,
    prior: WeightPrior | None = None,
) -> FeedbackOutcome:
    """Store ``fb`` and learn from it (see the module doc). Without ``extractor``, critique is
    stored but not read into memory."""
    if fb.kind == "override":
        rec, prof = set_weights(store, fb.weights, user=user, reason=fb.meta.get("reason"))
        return FeedbackOutcome(rec, prof)
    if fb.exchange_id is not None:
        store.get_exchange(fb.exchange_id, user=user)  # NotFoundError before anything is stored
    rec = store.add_feedback(fb, user=user)
    out = FeedbackOutcome(rec)
    if rec.kind == "critique" and rec.text:
        if extractor is None:
            out.notes.append("no extractor: the critique is stored but not read into memory")
        else:
            out.memories += _critique_to_memory(store, rec, user=user, extractor=extractor)
    if rec.kind == "edit" and rec.text:
        out.memories += _edit_to_memory(store, rec, user=user)
    if rec.kind in ("pairwise", "rating", "edit"):
        out.profile = update_profile(
            store, user=user, dims=dims, prior=prior, reason=f"{rec.kind} feedback {rec.id}"
        )
    return out


def _critique_to_memory(
    store: MemoryStore, fb: Feedback, *, user: str, extractor: Extractor
) -> list[str]:
    from personalign.memory.ingest import add_messages

    _, reply = reply_of(store, fb, user=user)
    turns = [Message(role="assistant", content=reply)] if reply else []
    turns.append(Message(role="user", content=fb.text or "", id=f"feedback:{fb.id}"))
    result = add_messages(store, turns, user=user, extractor=extractor, source="feedback")
    return [r.text for r in result.records("add") + result.records("supersede")]


def _edit_to_memory(store: MemoryStore, fb: Feedback, *, user: str) -> list[str]:
    from personalign.errors import RefusedError
    from personalign.memory.extract import Candidate
    from personalign.memory.reconcile import apply, decide

    _, reply = reply_of(store, fb, user=user)
    if not reply or not fb.text:
        return []
    written: list[str] = []
    for text in edit_statements(reply, fb.text):
        cand = Candidate(
            text=text,
            kind="implicit",
            topic="communication",
            confidence=0.6,
            reason=f"edit feedback {fb.id}",
        )
        decision = decide(store, cand, user=user)
        try:
            rec = apply(store, decision, user=user, source=f"feedback:{fb.id}", actor="feedback")
        except RefusedError:
            continue  # the boundary recorded the refusal
        if rec is not None:
            written.append(rec.text)
    return written


def memory_extractor(memory: Memory) -> Extractor:
    """The memory's extractor, built as :meth:`Memory.add_messages` builds it when unset."""
    if memory.extractor is None:
        from personalign.memory.extract import EmbeddedExtractor

        memory.extractor = EmbeddedExtractor(memory.store.embedder)  # type: ignore[attr-defined]
    return memory.extractor
