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

from personalign.backends.stores.base import MemoryStore, Records
from personalign.backends.stores.delegating import DelegatingStore
from personalign.errors import RefusedError
from personalign.safety.checkers import Checker
from personalign.safety.injection import INJECTION_FLAG
from personalign.safety.verdict import Verdict
from personalign.types import Preference, PreferenceIn


def _pin(item: PreferenceIn | str) -> PreferenceIn:
    return PreferenceIn(text=item) if isinstance(item, str) else item


class GuardedStore(DelegatingStore):
    """A store whose writes are admitted by ``checker`` first (see the module doc). It owns
    the store it wraps: ``close`` closes it. Feedback and exchanges are stored as given: what
    feedback teaches the memory goes through :meth:`add_many`, and so through the boundary."""

    def __init__(self, inner: MemoryStore, checker: Checker) -> None:
        super().__init__(inner)
        self.checker = checker

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

    def close(self) -> None:
        self.inner.close()
