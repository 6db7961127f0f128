"""``GuardedStore``: every memory write passes the boundary first.

Wraps any :class:`MemoryStore`. ``add_many`` and ``update`` check each new text with a checker
(the :class:`~personalign.safety.checkers.Boundary`): a refused text is not stored, the
refusal and its reason go to the user's event log (action ``refuse``), and
:class:`~personalign.errors.RefusedError` tells the caller (with the verdict). An admitted text
flagged as injection-like is stored with the ``injection`` flag, so it is rendered neutralized.
Reads pass through unchanged. Wrapping the store (not the routes) means chat ingestion, the
API, the CLI, feedback and imports all go through the same door.
"""

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
from personalign.errors import RefusedError
from personalign.safety.checkers import Checker
from personalign.safety.injection import INJECTION_FLAG
from personalign.safety.verdict import Verdict
from personalign.types import (
    Exchange,
    Feedback,
    FeedbackIn,
    Kind,
    Preference,
    PreferenceIn,
    Profile,
)


def _pin(item: PreferenceIn | str) -> PreferenceIn:
    return PreferenceIn(text=item) if isinstance(item, str) else item


class GuardedStore(MemoryStore):
    """A store whose writes are admitted by ``checker`` first (see the module doc)."""

    def __init__(self, inner: MemoryStore, checker: Checker) -> None:
        self.inner = inner
        self.checker = checker

    @property
    def embedder(self) -> Any:
        """The inner store's embedder (the pipeline tags topics with it)."""
        return getattr(self.inner, "embedder", None)

    def admit(
        self, items: Sequence[PreferenceIn | str], *, user: str, actor: str
    ) -> list[PreferenceIn]:
        """Check ``items``; record and raise on a refusal; flag injection-like texts."""
        pins = [_pin(i) for i in items]
        verdicts: list[Verdict] = self.checker.check([p.text for p in pins])
        refused = [(p, v) for p, v in zip(pins, verdicts, strict=True) if not v.admitted]
        for p, v in refused:
            self.inner.record_event(
                user=user,
                action="refuse",
                actor=actor,
                reason=f"{v.category}: {v.reason}",
                payload={"text": p.text, "kind": p.kind, "verdict": v.model_dump(mode="json")},
            )
        if refused:
            v = refused[0][1]
            msg = v.user_message or f"refused ({v.category}): {v.reason}"
            if len(refused) > 1:
                msg += f" (and {len(refused) - 1} more refused; nothing was stored)"
            raise RefusedError(msg, v)
        out = []
        for p, v in zip(pins, verdicts, strict=True):
            if INJECTION_FLAG in v.flags and INJECTION_FLAG not in p.flags:
                p = p.model_copy(update={"flags": [*p.flags, INJECTION_FLAG]})
            out.append(p)
        return out

    # -- writes ---------------------------------------------------------------------------

    def add_many(
        self,
        items: Sequence[PreferenceIn | str],
        *,
        user: str,
        actor: str = "user",
        reason: str | None = None,
    ) -> Records:
        if not items:
            return []
        pins = self.admit(items, user=user, actor=actor)
        return self.inner.add_many(pins, user=user, actor=actor, reason=reason)

    def update(
        self,
        record_id: str,
        new: PreferenceIn | str,
        *,
        user: str,
        actor: str = "user",
        reason: str | None = None,
    ) -> Preference:
        if isinstance(new, str):
            new = self.inner.get(record_id, user=user).revised(new)
        new = self.admit([new], user=user, actor=actor)[0]
        return self.inner.update(record_id, new, user=user, actor=actor, reason=reason)

    # -- everything else passes through ----------------------------------------------------

    def get(self, record_id: str, *, user: str) -> Preference:
        return self.inner.get(record_id, user=user)

    def list(
        self,
        *,
        user: str,
        include_history: bool = False,
        kinds: Sequence[Kind] | None = None,
        limit: int | None = None,
    ) -> Records:
        return self.inner.list(user=user, include_history=include_history, kinds=kinds, limit=limit)

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
        return self.inner.search(query, user=user, k=k, kinds=kinds, config=config, as_of=as_of)

    def forget(
        self, record_id: str, *, user: str, actor: str = "user", reason: str | None = None
    ) -> Preference:
        return self.inner.forget(record_id, user=user, actor=actor, reason=reason)

    def history(self, record_id: str, *, user: str) -> Records:
        return self.inner.history(record_id, user=user)

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
            user=user, action=action, actor=actor, reason=reason, payload=payload
        )

    def events(self, *, user: str, limit: int | None = None) -> Events:
        return self.inner.events(user=user, limit=limit)

    def export(self, *, user: str) -> dict[str, Any]:
        return self.inner.export(user=user)

    def erase_user(self, *, user: str) -> int:
        return self.inner.erase_user(user=user)

    def has_user(self, *, user: str) -> bool:
        return self.inner.has_user(user=user)

    def users(self) -> Names:
        return self.inner.users()

    def log_exchange(self, exchange: Exchange, *, user: str) -> None:
        self.inner.log_exchange(exchange, user=user)

    def exchanges(self, *, user: str, limit: int | None = None) -> Exchanges:
        return self.inner.exchanges(user=user, limit=limit)

    def get_exchange(self, exchange_id: str, *, user: str) -> Exchange:
        return self.inner.get_exchange(exchange_id, user=user)

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
            weights, user=user, uncertainty=uncertainty, source=source, reason=reason
        )

    def profile_history(self, *, user: str) -> Profiles:
        return self.inner.profile_history(user=user)

    def add_feedback(self, fb: FeedbackIn, *, user: str) -> Feedback:
        """Stored as given, like exchanges: what it teaches the memory goes through
        :meth:`add_many`, and so through the boundary."""
        return self.inner.add_feedback(fb, user=user)

    def feedback(self, *, user: str, limit: int | None = None) -> Feedbacks:
        return self.inner.feedback(user=user, limit=limit)

    def close(self) -> None:
        self.inner.close()
