"""Requests and replies through the boundary: the request screen and the output check.

Every request is screened with the boundary's *request* thresholds (:func:`screen_text`: a
request that merely mentions a sensitive subject is answered; intent to harm is refused), and
every reply passes the *reply* check (:func:`check_reply`) before it is returned or stored,
whatever method or adapter produced it: a reply that would carry harmful instructions becomes
a refusal. :class:`CheckedStream` does the same for a streamed reply: deltas are held back
until the window they end has been checked (the last ``window`` characters, every ``step``
new characters), so no unchecked text is ever sent; when a window trips, the stream stops and
the refusal is sent instead of the rest.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterable, Iterator

from personalign.safety.scoring import REPLY, REQUEST
from personalign.safety.verdict import Verdict


def _decide(checker: object, text: str, decision: str) -> Verdict | None:
    """The checker's verdict on ``text`` for ``decision`` (a checker without decisions, e.g.
    a bare guard, checks it as it checks everything); None without a checker."""
    if checker is None:
        return None
    check: Callable[..., list[Verdict]] = checker.check  # type: ignore[attr-defined]
    if "decision" in inspect.signature(check).parameters:
        return check([text], decision=decision)[0]
    return check([text])[0]


def screen_text(checker: object, text: str) -> Verdict | None:
    """The refusal verdict of a request, or None when it may be answered. A refused request
    that only asks for answer style ("keep answers under 100 words") gets the second look
    that stored preferences get (:func:`personalign.safety.admission.recheck_style_wish`): it
    is answered when what it would add to a reply passes the request screen."""
    v = _decide(checker, text, REQUEST)
    if v is None or v.admitted:
        return None
    from personalign.constraints import compile_text
    from personalign.safety.admission import recheck_style_wish

    def check(parts: list[str]) -> list[Verdict]:
        return [a for part in parts if (a := _decide(checker, part, REQUEST)) is not None]

    return v if recheck_style_wish(text, compile_text(text), check) is None else None


def check_reply(checker: object, text: str) -> Verdict | None:
    """The refusal verdict of a reply about to be returned or stored, or None when it passes."""
    if not text.strip():
        return None
    v = _decide(checker, text, REPLY)
    return v if v is not None and not v.admitted else None


def refusal_of(verdict: Verdict, stage: str) -> dict[str, object]:
    """What the exchange records about a refusal at ``stage`` (``request`` or ``reply``)."""
    return {"category": verdict.category, "reason": verdict.reason, "stage": stage}


class CheckedStream:
    """Yields the deltas of ``deltas`` once checked (see the module doc); ``tripped`` holds
    the verdict that stopped it, else None; ``text`` is what was sent."""

    def __init__(
        self, deltas: Iterable[str], checker: object, *, window: int = 600, step: int = 160
    ) -> None:
        self.deltas = deltas
        self.checker = checker
        self.window = window
        self.step = step
        self.tripped: Verdict | None = None
        self.text = ""

    def _ok(self, upto: str) -> bool:
        v = check_reply(self.checker, upto[-self.window :])
        if v is not None:
            self.tripped = v
        return v is None

    def __iter__(self) -> Iterator[str]:
        held: list[str] = []
        pending = 0
        for delta in self.deltas:
            held.append(delta)
            pending += len(delta)
            if pending >= self.step:
                if not self._ok(self.text + "".join(held)):
                    return
                out = "".join(held)
                self.text += out
                held, pending = [], 0
                yield out
        rest = "".join(held)
        if rest and not self._ok(self.text + rest):
            return
        self.text += rest
        if rest:
            yield rest
