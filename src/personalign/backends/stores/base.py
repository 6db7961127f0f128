"""The ``MemoryStore`` interface: every verb is scoped by a keyword-only ``user``.

``MemoryStore`` is the composition of small protocols (records, revisions, search, events,
exchanges, profiles, feedback, users); a caller that needs one part may ask for just that one.

Stores keep every version of every memory (nothing is overwritten), an append-only event log
of every change, and answer hybrid searches. Contract tests in ``tests/test_store_contract.py``
run against every implementation.
"""

from __future__ import annotations

import abc
from collections.abc import Sequence
from datetime import datetime
from typing import Any, Protocol

from personalign.config import RetrievalConfig
from personalign.types import (
    Conflict,
    Event,
    Exchange,
    Feedback,
    FeedbackIn,
    Kind,
    Preference,
    PreferenceIn,
    Profile,
    SearchHit,
    check_user,
    utcnow,
)

# Aliases for result types: inside the store classes the name ``list`` is the ``list`` verb.
Records = list[Preference]
Hits = list[SearchHit]
Events = list[Event]
Exchanges = list[Exchange]
Profiles = list[Profile]
Feedbacks = list[Feedback]
Names = list[str]
Conflicts = list[Conflict]


class RecordStore(Protocol):
    """Memories in: add; and out: one by id, or the user's (active) ones."""

    @abc.abstractmethod
    def add_many(
        self,
        items: Sequence[PreferenceIn | str],
        *,
        user: str,
        actor: str = "user",
        reason: str | None = None,
    ) -> Records:
        """Store new memories (embedded in one batch) and return them, in input order."""

    def add(
        self,
        item: PreferenceIn | str,
        *,
        user: str,
        actor: str = "user",
        reason: str | None = None,
    ) -> Preference:
        """Store one new memory."""
        return self.add_many([item], user=user, actor=actor, reason=reason)[0]

    @abc.abstractmethod
    def get(self, record_id: str, *, user: str) -> Preference:
        """Return one version by id."""

    @abc.abstractmethod
    def list(
        self,
        *,
        user: str,
        include_history: bool = False,
        kinds: Sequence[Kind] | None = None,
        limit: int | None = None,
        as_of: datetime | None = None,
    ) -> Records:
        """Active memories (all versions with ``include_history``), newest first.

        ``as_of`` (timezone-aware): the versions active at that moment instead, as
        :meth:`SearchStore.search` sees them: recorded by then, valid then (``valid_from <=
        as_of < valid_to``) and not yet superseded. Erased rows are gone and never come back.
        ``as_of`` with ``include_history`` is a :class:`~personalign.errors.ValidationError`.
        """


class RevisionStore(Protocol):
    """New versions of a memory, its end, and its history."""

    @abc.abstractmethod
    def update(
        self,
        record_id: str,
        new: PreferenceIn | str,
        *,
        user: str,
        actor: str = "user",
        reason: str | None = None,
    ) -> Preference:
        """Write a new version that supersedes ``record_id`` (which must be active).

        The old version keeps its text; it gets ``superseded_at``/``superseded_by`` and its
        world-time validity ends where the new version's begins.
        """

    @abc.abstractmethod
    def forget(
        self, record_id: str, *, user: str, actor: str = "user", reason: str | None = None
    ) -> Preference:
        """End the validity of an active memory now; it stays in history."""

    @abc.abstractmethod
    def history(self, record_id: str, *, user: str) -> Records:
        """Every version of the memory ``record_id`` belongs to, oldest first."""


class SearchStore(Protocol):
    """Hybrid (vector, full-text, recency) search over a user's memories."""

    @abc.abstractmethod
    def search(
        self,
        query: str,
        *,
        user: str,
        k: int = 10,
        kinds: Sequence[Kind] | None = None,
        config: RetrievalConfig | None = None,
        as_of: datetime | None = None,
    ) -> Hits:
        """Hybrid search over the user's memories active at ``as_of`` (default: now).

        Signals: dense cosine, FTS BM25, recency; fused as ``config.fusion`` says. Results are
        sorted by fused score, best first (see :class:`~personalign.types.SearchHit`).
        """


class EventLog(Protocol):
    """The append-only log of every change (and of what changed nothing)."""

    @abc.abstractmethod
    def record_event(
        self,
        *,
        user: str,
        action: str,
        actor: str = "system",
        reason: str | None = None,
        payload: dict[str, Any] | None = None,
    ) -> None:
        """Append an event that changes no memory (a refusal, say) to the user's log."""

    @abc.abstractmethod
    def events(self, *, user: str, limit: int | None = None) -> Events:
        """The user's event log, oldest first."""


class ExchangeLog(Protocol):
    """The log of requests and replies."""

    @abc.abstractmethod
    def log_exchange(self, exchange: Exchange, *, user: str) -> None:
        """Append one request/reply to the user's exchange log."""

    @abc.abstractmethod
    def exchanges(self, *, user: str, limit: int | None = None) -> Exchanges:
        """The user's logged exchanges, oldest first (the newest ``limit`` if given)."""

    @abc.abstractmethod
    def get_exchange(self, exchange_id: str, *, user: str) -> Exchange:
        """One logged exchange by id."""


class ProfileStore(Protocol):
    """Versions of a user's dimension weights."""

    @abc.abstractmethod
    def set_profile(
        self,
        weights: dict[str, float],
        *,
        user: str,
        uncertainty: dict[str, float] | None = None,
        source: str = "user",
        reason: str | None = None,
    ) -> Profile:
        """Append a new version of the user's dimension weights (each in [0, 1])."""

    @abc.abstractmethod
    def profile_history(self, *, user: str) -> Profiles:
        """Every version of the user's weights, oldest first."""

    def get_profile(self, *, user: str) -> Profile | None:
        """The user's current weights, or None if never set."""
        history = self.profile_history(user=user)
        return history[-1] if history else None


class FeedbackStore(Protocol):
    """Append-only feedback, linked to exchanges."""

    @abc.abstractmethod
    def add_feedback(self, fb: FeedbackIn, *, user: str) -> Feedback:
        """Append one feedback record (its ``exchange_id``, if set, must be one of the user's
        exchanges, else :class:`~personalign.errors.NotFoundError`) and log a ``feedback``
        event. Feedback is never updated; only :meth:`erase_user` deletes it."""

    @abc.abstractmethod
    def feedback(self, *, user: str, limit: int | None = None) -> Feedbacks:
        """The user's feedback, oldest first (the newest ``limit`` if given)."""


class RetentionStore(Protocol):
    """Time-to-live of raw turns (``episode`` records): pruned as completely as an erasure."""

    @abc.abstractmethod
    def prune(self, *, user: str, before: datetime, dry_run: bool = False) -> Records:
        """Hard-delete the user's raw turns recorded before ``before`` (timezone-aware), the
        ``add`` events that carried their text, and the refusals of raw turns logged before
        then (a turn refused for storage or as a request); log one ``prune`` event (counts
        only).
        Returns the records deleted (with ``dry_run``: that would be, nothing deleted).
        On SQLite the freed bytes are then zeroed and the file vacuumed, as by
        :meth:`UserStore.erase_user`. Preferences (explicit, implicit) are never pruned."""


class ConflictLog(Protocol):
    """Pairs of active preferences that contradict, kept until the user resolves them."""

    @abc.abstractmethod
    def add_conflict(
        self,
        older_id: str,
        newer_id: str,
        *,
        user: str,
        score: float | None = None,
        reason: str | None = None,
        actor: str = "extractor",
    ) -> Conflict:
        """Record that two active preferences of the user contradict (event ``conflict``).
        Both must be active (else :class:`~personalign.errors.ConflictError`)."""

    @abc.abstractmethod
    def conflicts(self, *, user: str, include_closed: bool = False) -> Conflicts:
        """The user's open conflicts (with ``include_closed``, also resolved and moot ones),
        oldest first."""

    @abc.abstractmethod
    def get_conflict(self, conflict_id: str, *, user: str) -> Conflict:
        """One conflict by id (:class:`~personalign.errors.NotFoundError` if not the user's)."""

    @abc.abstractmethod
    def resolve_conflict(
        self,
        conflict_id: str,
        *,
        user: str,
        keep: str | None,
        actor: str = "user",
        reason: str | None = None,
    ) -> Conflict:
        """Resolve an open conflict: ``keep`` is the id of the preference to keep (the other
        one is superseded by it: it stays in history, ``superseded_by`` naming the kept one)
        or ``None`` to keep both. Logs a ``resolve_conflict`` event. A conflict that is not
        open raises :class:`~personalign.errors.ConflictError`; an id that is neither side,
        :class:`~personalign.errors.ValidationError`."""


class UserStore(Protocol):
    """Who has data; the user's erasure."""

    @abc.abstractmethod
    def users(self) -> Names:
        """Every user with data, sorted."""

    @abc.abstractmethod
    def has_user(self, *, user: str) -> bool:
        """Whether the user has any data."""

    @abc.abstractmethod
    def erase_user(self, *, user: str) -> int:
        """Hard-delete everything of the user (history and logs too). Returns rows deleted."""


class MemoryStore(
    RecordStore,
    RevisionStore,
    SearchStore,
    EventLog,
    ExchangeLog,
    ProfileStore,
    FeedbackStore,
    RetentionStore,
    ConflictLog,
    UserStore,
):
    """Preference and episodic memory for many users.

    Errors: :class:`~personalign.errors.ValidationError` for bad input,
    :class:`~personalign.errors.NotFoundError` for an id that does not exist *for that user*
    (another user's id is indistinguishable from a missing one),
    :class:`~personalign.errors.ConflictError` when updating or forgetting an inactive version.
    """

    def export(self, *, user: str) -> dict[str, Any]:
        """All of the user's data as a JSON-serializable dict (built from the read verbs)."""
        check_user(user)
        return {
            "user": user,
            "exported_at": utcnow().isoformat(),
            "memories": [
                m.model_dump(mode="json") for m in self.list(user=user, include_history=True)
            ],
            "events": [e.model_dump(mode="json") for e in self.events(user=user)],
            "exchanges": [x.model_dump(mode="json") for x in self.exchanges(user=user)],
            "profile": [p.model_dump(mode="json") for p in self.profile_history(user=user)],
            "feedback": [f.model_dump(mode="json") for f in self.feedback(user=user)],
            "conflicts": [
                c.model_dump(mode="json") for c in self.conflicts(user=user, include_closed=True)
            ],
        }

    def close(self) -> None:
        """Release connections."""
