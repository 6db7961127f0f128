"""``ScopedStore``: a MemoryStore seen through one API principal.

The service never hands routes a raw store: it wraps it so that every verb maps the caller's
``user`` to the stored user id the principal may touch, or raises. An application key sees its
own users under its namespace (``<app>:<user>``); a user token sees one user only; an admin key
sees every user. Isolation is therefore enforced below the routes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from personalign.backends.stores.base import MemoryStore, Names
from personalign.backends.stores.delegating import DelegatingStore
from personalign.errors import PermissionDeniedError
from personalign.types import check_user

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


class ScopedStore(DelegatingStore):
    """Delegates every verb to ``inner`` with ``user`` mapped by ``principal``."""

    def __init__(self, inner: MemoryStore, principal: Principal) -> None:
        super().__init__(inner)
        self.principal = principal

    def _u(self, user: str) -> str:
        return self.principal.resolve(user)

    def users(self) -> Names:
        return [u for u in self.inner.users() if self.principal.owns(u)]
