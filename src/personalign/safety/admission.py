"""``GuardedStore``: every memory write passes the boundary first.

Wraps any :class:`MemoryStore`. ``add_many`` and ``update`` check each new text with a checker
(the :class:`~personalign.safety.checkers.Boundary`): a refused text is not stored, the
refusal and its reason go to the user's event log (action ``refuse``), and
:class:`~personalign.errors.RefusedError` tells the caller (with the verdict). An admitted text
flagged as injection-like is stored with the ``injection`` flag, so it is rendered neutralized,
unless it only asks for answer style (:func:`asks_only_answer_style`: "answer me in lowercase"
is the user's wish, applied through compiled constraints, not an attack). Each admitted text's
constraints are compiled into ``meta["constraints"]`` (:mod:`personalign.constraints`), and
a preference's context ("when I cook for my kids") into ``meta["context"]``
(:mod:`personalign.constraints.context`).
A refused text that only asks for answer style gets a second look (:func:`second_look`): it is
admitted when what it would add to a reply is. Reads pass through unchanged. Wrapping the
store (not the routes) means chat ingestion, the API, the CLI, feedback and imports all go
through the same door.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from personalign.backends.stores.base import MemoryStore, Records
from personalign.backends.stores.delegating import DelegatingStore
from personalign.constraints import Constraint, compile_text, from_meta, to_meta
from personalign.constraints.context import context_meta
from personalign.errors import RefusedError
from personalign.safety.checkers import Checker
from personalign.safety.injection import INJECTION_FLAG, pattern_signals
from personalign.safety.verdict import Verdict
from personalign.types import Preference, PreferenceIn

ANSWER_STYLE_CUES = frozenset({"addresses_output"})
"""The weak injection cues a wish about the user's own answers shows by nature ("in your
answers"); any other cue (a URL, "new instructions:", an encoded payload) keeps the flag."""


def asks_only_answer_style(text: str, constraints: Sequence[Constraint]) -> bool:
    """Whether ``text`` is a user's wish about how their answers are written (it compiles to
    constraints, every one about answer style or words to avoid) and nothing aimed at the
    system: no strong injection cue (rules, roles, secrets, prompts, exfiltration) and no weak
    cue beyond addressing the answers. Such a text is applied as constraints, so it is not
    flagged as injection; its text is still only ever quoted as data."""
    if not constraints:
        return False
    strong, weak = pattern_signals(text)
    return not strong and set(weak) <= ANSWER_STYLE_CUES


def residue(text: str, constraints: Sequence[Constraint]) -> str:
    """``text`` without the spans its constraints were compiled from (what else it says)."""
    out = text
    for c in constraints:
        for span in (c.phrase or "").split("; "):
            if span:
                out = out.replace(span, " ")
    return " ".join(out.split())


def second_look(text: str, constraints: Sequence[Constraint]) -> list[str] | None:
    """For a refused text that only asks for answer style: the texts that carry everything it
    would add to a reply (what it says besides the constraints, and each start or end phrase
    it would put in every answer), to check again; ``None`` when it asks for more than style
    (then the refusal stands). A harmful phrase or request survives in one of them."""
    if not asks_only_answer_style(text, constraints):
        return None
    phrases = [str(c.value) for c in constraints if c.kind in ("start_phrase", "end_phrase")]
    return [residue(text, constraints) or ".", *phrases]


def recheck_style_wish(
    text: str, constraints: Sequence[Constraint], check: Callable[[list[str]], list[Verdict]]
) -> Verdict | None:
    """The second look of a refused ``text``: when it only asks for answer style and ``check``
    admits everything it would add to a reply (:func:`second_look`), the first of those
    admitting verdicts; else None (the refusal stands)."""
    parts = second_look(text, constraints)
    if parts is None:
        return None
    again = check(parts)
    return again[0] if all(a.admitted for a in again) else None


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
        for i, (p, v) in enumerate(zip(pins, verdicts, strict=True)):
            if v.admitted:
                continue
            compiled = from_meta(p.meta, text=p.text) or compile_text(p.text)
            again = recheck_style_wish(p.text, compiled, self.checker.check)
            if again is not None:
                # the wording of a style wish ("sign off every message with ...") read as
                # harm; what it would put in a reply is harmless
                verdicts[i] = again
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
            constraints = from_meta(p.meta, text=p.text)
            if constraints is None:
                constraints = compile_text(p.text)
                meta = {**p.meta, "constraints": to_meta(constraints, text=p.text)}
                p = p.model_copy(update={"meta": meta})
            ctx = p.meta.get("context")
            fresh = isinstance(ctx, dict) and (ctx.get("read_from") == p.text or ctx.get("edited"))
            if p.kind != "episode" and not fresh:
                p = p.model_copy(update={"meta": {**p.meta, "context": context_meta(p.text)}})
            if (
                INJECTION_FLAG in v.flags
                and INJECTION_FLAG not in p.flags
                and not asks_only_answer_style(p.text, constraints)
            ):
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
