"""A user's profile at a glance (:func:`summarize`): what the CLI's ``memory profile``, the
``GET /v1/users/{user}/summary`` route and the dashboard's summary page show.

* **Preferences by topic.** Each active preference (explicit or implicit) under its ``topic``:
  the extractors tag one of :data:`~personalign.memory.extract.TOPICS` (the nearest topic
  description by embedding), or the LLM extractor's own word, or what the user gave. A
  preference without a topic (added by hand) goes under ``communication`` when the
  constraints compiled from it ask only how answers are written (case, length, format,
  language, ...), else under ``other``. Topics are sorted by name, preferences newest first.
* **Constraints.** What the pipeline applies to every reply (:func:`constraints_of`, the one
  place that compiles them): one per slot, the newest preference wins; words to avoid united.
* **Style weights.** The user's current dimension weights (with uncertainty and source).
* **Recent changes.** The newest entries of the event log (adds of raw turns left out),
  newest first, each with a one-line description.

With ``as_of`` every part is as it stood then (:meth:`~personalign.backends.stores.base.
RecordStore.list` with ``as_of``; weights and events up to that moment).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, Field

from personalign.backends.stores.base import MemoryStore
from personalign.constraints import STYLE_KINDS, Constraint, ConstraintSet, compile_text, from_meta
from personalign.memory import constraint_edits
from personalign.types import PREFERENCE_KINDS, Event, Preference, Profile, check_user

NO_TOPIC_STYLE = "communication"
NO_TOPIC = "other"


class SummaryItem(BaseModel):
    """One preference in the summary."""

    id: str
    text: str
    kind: str
    since: datetime
    constraints: list[str] = Field(default_factory=list)
    """Each constraint compiled from it, in a few words (``max 40 words``)."""


class Change(BaseModel):
    """One entry of the recent changes: the event and what it did, in one line."""

    at: datetime
    action: str
    actor: str
    record_id: str | None = None
    reason: str | None = None
    what: str


class ProfileSummary(BaseModel):
    """A user's preferences by topic, constraints, weights and recent changes."""

    user: str
    as_of: datetime | None = None
    topics: dict[str, list[SummaryItem]]
    constraints: list[dict[str, Any]]
    """:func:`~personalign.memory.constraint_edits.as_dict` of each applied constraint."""
    weights: Profile | None = None
    recent_changes: list[Change]
    preferences: int
    """How many preferences are active (at ``as_of``)."""


def constraints_of(
    records: list[Preference],
) -> tuple[ConstraintSet, dict[str, list[str]], list[Preference]]:
    """The constraints of ``records`` (active preferences, newest first): compiled from each
    (kept in its ``meta["constraints"]`` when stored; compiled now otherwise), newest wins per
    slot. Returns them, each source preference's turn ids, and the source preferences. A
    preference flagged as injection gives none, nor does a phrase with an injection cue or a
    link (a closing phrase is copied into replies verbatim)."""
    from personalign.safety.injection import INJECTION_FLAG, pattern_signals

    groups: list[list[Constraint]] = []
    sources: dict[str, list[str]] = {}
    used: list[Preference] = []
    for rec in reversed(records):  # oldest first: newer ones win their slot
        if rec.kind == "episode" or INJECTION_FLAG in rec.flags:
            continue
        items = from_meta(rec.meta, text=rec.text)
        if items is None:
            items = compile_text(rec.text)
        safe = []
        for c in items:
            if isinstance(c.value, str):
                strong, weak = pattern_signals(c.value)
                if strong or "url" in weak:
                    continue
            safe.append(c.model_copy(update={"source_id": rec.id}))
        if safe:
            groups.append(safe)
            sources[rec.id] = list(rec.source_turn_ids)
            used.append(rec)
    return ConstraintSet.from_lists(groups), sources, used


def topic_of(rec: Preference, items: list[Constraint]) -> str:
    """``rec``'s topic, or the fallback of the module doc when it has none."""
    if rec.topic and rec.topic.strip():
        return rec.topic.strip().lower()
    if items and all(c.kind in STYLE_KINDS for c in items):
        return NO_TOPIC_STYLE
    return NO_TOPIC


def describe_event(e: Event) -> str:
    """One line saying what an event did."""
    p = e.payload
    match e.action:
        case "add":
            return f"added: {p.get('text', '')}"
        case "supersede":
            return f"changed: {p.get('old_text', '')} → {p.get('text', '')}"
        case "forget":
            return f"forgot: {p.get('text', '')}"
        case "set_profile":
            weights = p.get("weights") or {}
            return "weights set: " + ", ".join(f"{k} {v:.2f}" for k, v in weights.items())
        case "feedback":
            return f"feedback: {p.get('kind', '')}"
        case "prune":
            return f"pruned {p.get('deleted', 0)} raw turns (retention)"
        case "refuse" | "refuse_request":
            return "refused by the boundary"
    return e.action


def _recent(events: list[Event], *, n: int, as_of: datetime | None) -> list[Change]:
    kept = [
        e
        for e in events
        if (as_of is None or e.at <= as_of)
        and not (e.action == "add" and e.payload.get("kind") == "episode")
    ]
    return [
        Change(
            at=e.at,
            action=e.action,
            actor=e.actor,
            record_id=e.record_id,
            reason=e.reason,
            what=describe_event(e),
        )
        for e in reversed(kept[-n:] if n else [])
    ]


def summarize(
    store: MemoryStore, *, user: str, as_of: datetime | None = None, recent: int = 10
) -> ProfileSummary:
    """The user's profile summary (see the module doc); ``recent``: how many changes."""
    check_user(user)
    records = store.list(user=user, kinds=list(PREFERENCE_KINDS), as_of=as_of)
    topics: dict[str, list[SummaryItem]] = {}
    for rec in records:
        items, _ = constraint_edits.current(rec)
        topics.setdefault(topic_of(rec, items), []).append(
            SummaryItem(
                id=rec.id,
                text=rec.text,
                kind=rec.kind,
                since=rec.valid_from,
                constraints=[constraint_edits.short(c) for c in items],
            )
        )
    applied, _, _ = constraints_of(records)
    profiles = [p for p in store.profile_history(user=user) if as_of is None or p.at <= as_of]
    return ProfileSummary(
        user=user,
        as_of=as_of,
        topics=dict(sorted(topics.items())),
        constraints=constraint_edits.as_dicts(list(applied)),
        weights=profiles[-1] if profiles else None,
        recent_changes=_recent(store.events(user=user), n=max(recent, 0), as_of=as_of),
        preferences=len(records),
    )
