"""Reconciliation: what to do with an extracted candidate given the user's active preferences.

For each :class:`~personalign.memory.extract.Candidate`, :func:`decide` searches the user's
active preferences (``explicit``/``implicit``, not episodes) and returns one
:class:`Decision`:

* ``merge`` — a near duplicate is already active (cosine >= ``duplicate_cosine`` with the same
  polarity, or the same normalized text). **No row is written**: the stored preference already
  says it, and the turn itself is kept as an episode whose add event names the merge (see
  :mod:`personalign.memory.ingest`), so the decision still reaches the event log.
* ``supersede`` — the candidate changes an active preference: a change cue ("I stopped",
  "no longer", "actually now I prefer") and cosine >= ``change_cosine`` (the most similar
  one; topic tags are noisy, so a shared topic only breaks near-ties). Applied with
  ``store.update(old_id, new, reason=...)``: the old version stays in history, its validity
  ending where the new one's begins.
  When no active preference matches a change, an earlier raw turn (episode) that stated
  the old preference is *promoted*: stored as a preference from its own turn and time, then
  superseded, so a preference the extractor missed at the time still shows in history.
* ``conflict`` — the candidate contradicts an active preference in the same context
  (:mod:`personalign.memory.conflicts`: opposite polarity at cosine >= ``conflict_cosine``,
  or opposite ends of a scale, "short" / "detailed", at ``antonym_cosine``) without saying it
  replaces it. Both are kept and the pair is stored as an open conflict
  (:meth:`~personalign.backends.stores.base.ConflictLog.add_conflict`) for the user to
  resolve; until then generation applies the newer one and holds the older back
  (:mod:`personalign.memory.scope`). A bare contradiction is not certain enough to drop what
  the user said before: only an explicit update is. With ``conflicts=False`` (the behaviour
  before conflicts existed, kept as the benchmark's baseline) a contradiction at
  ``contradiction_cosine`` supersedes instead, and contexts are ignored.
* ``add`` — anything else confident enough; a preference scoped to another context than a
  similar one ("for coding questions, detailed explanations" beside "I prefer short
  answers") is added, not merged, superseded or flagged.
* ``skip`` — a *tentative* candidate (a change cue the extractor was not sure about) with
  nothing to change: not stored, so ordinary chatter does not become memory.

Every decision carries ``reason``, passed to the store as its ``reason`` argument.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

from pydantic import BaseModel, Field

from personalign.backends.stores import MemoryStore
from personalign.memory.conflicts import may_replace, opposes, same_context
from personalign.memory.extract import Candidate, content_words
from personalign.types import PREFERENCE_KINDS, Preference, PreferenceIn

Action = Literal["add", "merge", "supersede", "conflict", "skip"]

_NEG_RE = re.compile(
    r"\b(not|no|never|don't|doesn't|didn't|can't|cannot|won't|avoid\w*|dislike\w*|hate\w*|"
    r"stopped|quit|no longer|without|allergic|intoleran\w*|isn't|aren't|wasn't|free)\b",
    re.I,
)

_FIRST_PERSON = re.compile(r"^(?:\w+,? ){0,2}(?:i|i'm|i've|i'd|my|we|we're)\b", re.I)


class ReconcileConfig(BaseModel):
    """Thresholds on the dense cosine between a candidate and an active preference."""

    duplicate_cosine: float = Field(default=0.9, ge=0.0, le=1.0)
    change_cosine: float = Field(default=0.45, ge=0.0, le=1.0)
    contradiction_cosine: float = Field(default=0.75, ge=0.0, le=1.0)
    promote_cosine: float = Field(default=0.6, ge=0.0, le=1.0)
    promote_confidence: float = Field(default=0.1, ge=0.0, le=1.0)
    neighbours: int = Field(default=5, ge=1, le=50)
    conflicts: bool = True
    """Flag bare contradictions as conflicts and respect contexts (False: a contradiction at
    ``contradiction_cosine`` supersedes, as before conflicts existed)."""
    conflict_cosine: float = Field(default=0.55, ge=0.0, le=1.0)
    antonym_cosine: float = Field(default=0.4, ge=0.0, le=1.0)


@dataclass(frozen=True)
class Decision:
    """What to do with one candidate; ``target`` is the active preference it merges into or
    supersedes; ``cosine`` the similarity to it."""

    action: Action
    candidate: Candidate
    reason: str
    target: Preference | None = None
    cosine: float | None = None
    promote: Preference | None = None
    """For a supersede with no active preference: the earlier episode that stated the old
    preference, stored as a preference first (then superseded), so history shows it."""


def polarity(text: str) -> int:
    """+1 for a positive statement, -1 when it carries a negation or avoidance cue."""
    return -1 if _NEG_RE.search(text) else 1


def _norm(text: str) -> str:
    return " ".join(sorted(content_words(text)))


def decide(
    store: MemoryStore,
    candidate: Candidate,
    *,
    user: str,
    config: ReconcileConfig | None = None,
) -> Decision:
    """Decide merge / supersede / conflict / add / skip for ``candidate`` against ``user``'s
    memory."""
    cfg = config or ReconcileConfig()
    hits = []
    if store.has_user(user=user):
        hits = store.search(
            candidate.text, user=user, k=cfg.neighbours, kinds=list(PREFERENCE_KINDS)
        )
    scored = [(float(h.signals.get("dense", 0.0)), h.record) for h in hits]
    scored.sort(key=lambda t: t[0], reverse=True)
    pol = polarity(candidate.text)
    if cfg.conflicts:
        same = [(c, r) for c, r in scored if same_context(r, candidate.text)]
        replaceable = [(c, r) for c, r in scored if may_replace(r, candidate.text)]
    else:
        same = replaceable = scored
    for cos, rec in same:
        if _norm(rec.text) == _norm(candidate.text) or (
            cos >= cfg.duplicate_cosine and polarity(rec.text) == pol and not candidate.change
        ):
            return Decision(
                "merge",
                candidate,
                f"duplicate of active preference {rec.id} (cosine {cos:.2f}, same polarity): "
                "nothing new to store",
                rec,
                cos,
            )
    if candidate.change:
        close = [(c, r) for c, r in replaceable if c >= cfg.change_cosine]
        if close:  # the same slot: the most similar; a shared topic breaks near-ties
            cos, rec = max(
                close, key=lambda t: t[0] + (0.05 if t[1].topic == candidate.topic else 0)
            )
            return Decision(
                "supersede",
                candidate,
                f"change of preference: the turn signals a change and matches active "
                f"preference {rec.id} (cosine {cos:.2f}, topic {rec.topic})",
                rec,
                cos,
            )
    for cos, rec in same if cfg.conflicts else []:
        why = opposes(rec.text, candidate.text, old_polarity=polarity(rec.text), new_polarity=pol)
        floor = cfg.conflict_cosine if why == "opposite polarity" else cfg.antonym_cosine
        if why is not None and cos >= floor:
            return Decision(
                "conflict",
                candidate,
                f"contradicts active preference {rec.id} (cosine {cos:.2f}, {why}) without "
                "saying it replaces it: both kept, for the user to resolve",
                rec,
                cos,
            )
    for cos, rec in [] if cfg.conflicts else scored:
        if cos >= cfg.contradiction_cosine and polarity(rec.text) != pol:
            return Decision(
                "supersede",
                candidate,
                f"contradicts active preference {rec.id} (cosine {cos:.2f}, opposite polarity): "
                "newer wins",
                rec,
                cos,
            )
    if candidate.change and candidate.confidence >= cfg.promote_confidence:
        episode = _earlier_episode(store, candidate, user=user, cfg=cfg)
        if episode is not None:
            cos, ep = episode
            return Decision(
                "supersede",
                candidate,
                f"change of preference: no active preference matches, but earlier turn "
                f"{ep.source_turn_ids} said it (episode {ep.id}, cosine {cos:.2f}); that "
                "statement is kept as the superseded version",
                None,
                cos,
                promote=ep,
            )
    if candidate.tentative:
        return Decision(
            "skip",
            candidate,
            f"tentative candidate (confidence {candidate.confidence:.2f}) that changes no "
            "active preference",
        )
    return Decision("add", candidate, "new preference: no active preference says this")


def _earlier_episode(
    store: MemoryStore, candidate: Candidate, *, user: str, cfg: ReconcileConfig
) -> tuple[float, Preference] | None:
    """The most similar earlier raw turn (not one of the candidate's own) with a first-person
    statement (not a question), when its cosine reaches ``promote_cosine``. The change cue of
    the new turn is the evidence that the old statement was a preference."""
    from personalign.memory.extract import split_sentences

    if not store.has_user(user=user):
        return None
    hits = store.search(candidate.text, user=user, k=cfg.neighbours, kinds=["episode"])
    own = set(candidate.source_turn_ids)
    for h in sorted(hits, key=lambda h: -float(h.signals.get("dense", 0.0))):
        cos = float(h.signals.get("dense", 0.0))
        text = str(h.record.meta.get("turn_text", h.record.text))
        if cos < cfg.promote_cosine:
            break
        if own.isdisjoint(h.record.source_turn_ids) and any(
            _FIRST_PERSON.search(x) and not x.rstrip().endswith("?") for x in split_sentences(text)
        ):
            return cos, h.record
    return None


def to_preference_in(candidate: Candidate, *, source: str) -> PreferenceIn:
    """The record to store for a candidate (its reason and confidence kept in ``meta``)."""
    return PreferenceIn(
        text=candidate.text,
        kind=candidate.kind,
        topic=candidate.topic,
        strength=candidate.confidence,
        source=source,
        source_turn_ids=list(candidate.source_turn_ids),
        meta={"extraction_reason": candidate.reason, "confidence": candidate.confidence},
    )


def apply(
    store: MemoryStore,
    decision: Decision,
    *,
    user: str,
    source: str,
    actor: str = "extractor",
    tags: list[str] | None = None,
) -> Preference | None:
    """Carry out ``decision``; return the written record (``None`` for merge and skip).
    ``tags`` are added to the written record (e.g. ``speaker:<name>``). A conflict stores the
    candidate, then the open conflict between its target and it."""
    reason = f"{decision.action}: {decision.reason} [extracted: {decision.candidate.reason}]"
    pin = to_preference_in(decision.candidate, source=source)
    if tags:
        pin = pin.model_copy(update={"tags": [*pin.tags, *tags]})
    if decision.action == "add":
        return store.add(pin, user=user, actor=actor, reason=reason)
    if decision.action == "conflict":
        if decision.target is None:
            raise ValueError("a conflict decision needs the preference it contradicts")
        new = store.add(pin, user=user, actor=actor, reason=reason)
        store.add_conflict(
            decision.target.id,
            new.id,
            user=user,
            score=decision.cosine,
            reason=decision.reason,
            actor=actor,
        )
        return new
    if decision.action == "supersede":
        target = decision.target
        if target is None and decision.promote is not None:
            ep = decision.promote
            target = store.add(
                PreferenceIn(
                    text=str(ep.meta.get("turn_text", ep.text)),
                    kind="explicit",
                    topic=decision.candidate.topic,
                    source=source,
                    source_turn_ids=list(ep.source_turn_ids),
                    valid_from=ep.valid_from,
                    meta={"promoted_from_episode": ep.id},
                ),
                user=user,
                actor=actor,
                reason=f"promote: episode {ep.id} stated the preference that a later turn changes",
            )
        if target is None:
            raise ValueError("a supersede decision needs a target or an episode to promote")
        return store.update(target.id, pin, user=user, actor=actor, reason=reason)
    return None
