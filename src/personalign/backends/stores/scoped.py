"""``ScopedStore``: a MemoryStore seen through one API principal.

The service never hands routes a raw store: it wraps it so that every verb maps the caller's
``user`` to the stored user id the principal may touch, or raises. An application key sees its
own users under its namespace (``<app>:<user>``); a user token sees one user only; an admin key
sees every user. Isolation is therefore enforced below the routes.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

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
from personalign.errors import PermissionDeniedError
from personalign.types import (
    Exchange,
    Feedback,
    FeedbackIn,
    Kind,
    Preference,
    PreferenceIn,
    Profile,
    check_user,
)

Scope = Literal["admin", "app", "user"]


@dataclass(frozen=True)
class Principal:
    """Who is calling. ``app`` is set for app and user principals; ``user`` for user tokens."""

    scope: Scope
    app: str | None = None
    user: str | None = None
    key_id: str | None = None

    def resolve(self, user: str) -> str:
        """The stored user id for the caller's ``user``, or PermissionDeniedError."""
        check_user(user)
        if self.scope == "admin":
            return user
        if self.scope == "app":
            return f"{self.app}:{user}"
        if user != self.user:
            raise PermissionDeniedError("this user token may only access its own user's data")
        return f"{self.app}:{user}" if self.app else user

    def owns(self, stored_user: str) -> bool:
        """Whether a stored user id is visible to this principal."""
        if self.scope == "admin":
            return True
        if self.scope == "app":
            return stored_user.startswith(f"{self.app}:")
        return stored_user == (f"{self.app}:{self.user}" if self.app else self.user)


class ScopedStore(MemoryStore):
    """Delegates every verb to ``inner`` with ``user`` mapped by ``principal``."""

    def __init__(self, inner: MemoryStore, principal: Principal) -> None:
        self.inner = inner
        self.principal = principal

    def _u(self, user: str) -> str:
        return self.principal.resolve(user)

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
        return [u for u in self.inner.users() if self.principal.owns(u)]

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
