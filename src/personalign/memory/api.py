"""``Memory``: the user-facing memory API, composed of a store and an embedder.

It exposes the store's verbs unchanged (same keyword-only ``user`` on every verb) and is the
place where extraction, reconciliation and the safety boundary plug in.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import TYPE_CHECKING

from personalign.backends.embedders import Embedder
from personalign.backends.stores import MemoryStore, open_store
from personalign.config import Settings, load_settings
from personalign.errors import ConfigError, UnknownUserError
from personalign.types import Message, Preference, SearchHit

if TYPE_CHECKING:
    from personalign.memory.extract import Extractor
    from personalign.memory.ingest import IngestResult
    from personalign.memory.profile import ProfileSummary


class Memory:
    """Preference memory for many users. ``store`` does the persistence."""

    def __init__(
        self, store: MemoryStore, settings: Settings, extractor: Extractor | None = None
    ) -> None:
        """``extractor`` defaults to the offline :class:`EmbeddedExtractor` over the store's
        embedder, built at the first :meth:`add_messages`."""
        self.store = store
        self.settings = settings
        self.extractor = extractor
        # the store's verbs, unchanged
        self.add = store.add
        self.add_many = store.add_many
        self.get = store.get
        self.list = store.list
        self.update = store.update
        self.forget = store.forget
        self.history = store.history
        self.events = store.events
        self.export = store.export
        self.erase_user = store.erase_user
        self.has_user = store.has_user
        self.users = store.users
        self.conflicts = store.conflicts
        self.get_conflict = store.get_conflict
        self.resolve_conflict = store.resolve_conflict

    def search(
        self, query: str, *, user: str, k: int = 10, as_of: datetime | None = None
    ) -> list[SearchHit]:
        """Hybrid search with the configured retrieval settings, over what was active at
        ``as_of`` (default: now)."""
        return self.store.search(query, user=user, k=k, config=self.settings.retrieval, as_of=as_of)

    def summary(
        self, *, user: str, as_of: datetime | None = None, recent: int = 10
    ) -> ProfileSummary:
        """The user's preferences by topic, constraints, weights and recent changes
        (:func:`personalign.memory.profile.summarize`)."""
        from personalign.memory.profile import summarize

        return summarize(self.store, user=user, as_of=as_of, recent=recent)

    def prune(
        self,
        *,
        user: str,
        days: float | None = None,
        now: datetime | None = None,
        dry_run: bool = False,
    ) -> list[Preference]:
        """Hard-delete the user's raw turns older than ``days`` (default: the configured
        ``[retention] turns_days``); see :mod:`personalign.memory.timeline`."""
        from personalign.memory.timeline import prune

        return prune(
            self.store, self.settings.retention, user=user, days=days, now=now, dry_run=dry_run
        )

    def add_messages(self, messages: Sequence[Message], *, user: str) -> IngestResult:
        """Extract and reconcile the preferences in a conversation; keep every user turn as an
        episode (see :func:`personalign.memory.ingest.add_messages`)."""
        from personalign.memory.ingest import add_messages

        if self.extractor is None:
            from personalign.memory.extract import EmbeddedExtractor

            embedder = getattr(self.store, "embedder", None)
            if embedder is None:
                raise ConfigError(
                    "Memory.add_messages: the store has no embedder; pass extractor=... to Memory"
                )
            self.extractor = EmbeddedExtractor(embedder)
        return add_messages(self, messages, user=user, extractor=self.extractor)

    def require_user(self, *, user: str) -> None:
        """Raise :class:`UnknownUserError` unless ``user`` has data."""
        if not self.store.has_user(user=user):
            raise UnknownUserError(f"unknown user {user!r}: no memories stored for this user")

    def close(self) -> None:
        self.store.close()


def open_memory(
    settings: Settings | None = None,
    embedder: Embedder | None = None,
    *,
    extractor: Extractor | None = None,
) -> Memory:
    """Open the memory that ``settings`` (default: :func:`load_settings`) points to."""
    settings = settings or load_settings()
    if embedder is None:
        from personalign.backends.embedders import load_embedder

        embedder = load_embedder(settings.embedder, settings.cache_dir)
    if extractor is None and settings.extractor.model:
        # the configured LLM extractor, the offline one behind it (memory.llm_extract)
        from personalign.memory.llm_extract import extractor_from_settings

        extractor = extractor_from_settings(settings, embedder)
    if extractor is None and settings.embedder == "hashing":
        # the embedded extractor's classifier needs MiniLM vectors; the fake embedder pairs
        # with the fake, rule-only extractor
        from personalign.memory.extract import CueExtractor

        extractor = CueExtractor()
    return Memory(open_store(settings, embedder), settings, extractor)
