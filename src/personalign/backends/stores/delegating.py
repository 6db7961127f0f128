"""``DelegatingStore``: the base of store wrappers (see ``scoped`` and ``safety.admission``)."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from personalign.backends.stores.base import (
    Events,
    Exchanges,
    Feedbacks,
    Hits,
    MemoryStore,
    Names,
    Profiles,
    Records,
)
from personalign.config import RetrievalConfig
from personalign.types import (
    Exchange,
    Feedback,
    FeedbackIn,
    Kind,
    Preference,
    PreferenceIn,
    Profile,
)


class DelegatingStore(MemoryStore):
    """Forwards every verb to ``inner``, the user mapped by :meth:`_u` (identity here).

    Wrappers (scoping, the safety guard) subclass it and override only what they change.
    ``close`` does nothing: a wrapper does not own the store it wraps unless it says so.
    """

    def __init__(self, inner: MemoryStore) -> None:
        self.inner = inner

    @property
    def embedder(self) -> Any:
        """The wrapped store's embedder, if it has one."""
        return getattr(self.inner, "embedder", None)

    def _u(self, user: str) -> str:
        """The stored user id for ``user``."""
        return user

    def add_many(
        self,
        items: Sequence[PreferenceIn | str],
        *,
        user: str,
        actor: str = "user",
        reason: str | None = None,
    ) -> Records:
        return self.inner.add_many(items, user=self._u(user), actor=actor, reason=reason)

    def get(self, record_id: str, *, user: str) -> Preference:
        return self.inner.get(record_id, user=self._u(user))

    def list(
        self,
        *,
        user: str,
        include_history: bool = False,
        kinds: Sequence[Kind] | None = None,
        limit: int | None = None,
    ) -> Records:
        return self.inner.list(
            user=self._u(user), include_history=include_history, kinds=kinds, limit=limit
        )

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
        return self.inner.search(
            query, user=self._u(user), k=k, kinds=kinds, config=config, as_of=as_of
        )

    def update(
        self,
        record_id: str,
        new: PreferenceIn | str,
        *,
        user: str,
        actor: str = "user",
        reason: str | None = None,
    ) -> Preference:
        return self.inner.update(record_id, new, user=self._u(user), actor=actor, reason=reason)

    def forget(
        self, record_id: str, *, user: str, actor: str = "user", reason: str | None = None
    ) -> Preference:
        return self.inner.forget(record_id, user=self._u(user), actor=actor, reason=reason)

    def history(self, record_id: str, *, user: str) -> Records:
        return self.inner.history(record_id, user=self._u(user))

    def record_event(
        self,
        *,
        user: str,
        action: str,
        actor: str = "system",
        reason: str | None = None,
        payload: dict[str, Any] | None = None,
    ) -> None:
        self.inner.record_event(
            user=self._u(user), action=action, actor=actor, reason=reason, payload=payload
        )

    def events(self, *, user: str, limit: int | None = None) -> Events:
        return self.inner.events(user=self._u(user), limit=limit)

    def export(self, *, user: str) -> dict[str, Any]:
        return self.inner.export(user=self._u(user))

    def erase_user(self, *, user: str) -> int:
        return self.inner.erase_user(user=self._u(user))

    def has_user(self, *, user: str) -> bool:
        return self.inner.has_user(user=self._u(user))

    def users(self) -> Names:
        return self.inner.users()

    def log_exchange(self, exchange: Exchange, *, user: str) -> None:
        self.inner.log_exchange(exchange, user=self._u(user))

    def exchanges(self, *, user: str, limit: int | None = None) -> Exchanges:
        return self.inner.exchanges(user=self._u(user), limit=limit)

    def get_exchange(self, exchange_id: str, *, user: str) -> Exchange:
        return self.inner.get_exchange(exchange_id, user=self._u(user))

    def set_profile(
        self,
        weights: dict[str, float],
        *,
        user: str,
        uncertainty: dict[str, float] | None = None,
        source: str = "user",
        reason: str | None = None,
    ) -> Profile:
        return self.inner.set_profile(
            weights, user=self._u(user), uncertainty=uncertainty, source=source, reason=reason
        )

    def profile_history(self, *, user: str) -> Profiles:
        return self.inner.profile_history(user=self._u(user))

    def add_feedback(self, fb: FeedbackIn, *, user: str) -> Feedback:
        return self.inner.add_feedback(fb, user=self._u(user))

    def feedback(self, *, user: str, limit: int | None = None) -> Feedbacks:
        return self.inner.feedback(user=self._u(user), limit=limit)

    def close(self) -> None:
        """Wrappers do not own ``inner``; see the class doc."""
