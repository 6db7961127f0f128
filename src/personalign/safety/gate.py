"""The boundary's two-stage gate: a second look (a guard model with a ``band``) decides the
verdicts that lie close to the classifier's threshold, both ways; the clear cases, and pattern
refusals, keep the first stage's verdict. :class:`~personalign.safety.checkers.Boundary`
applies it after its other checkers."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from personalign.safety.verdict import Verdict


def second_look_of(checkers: Sequence[Any]) -> Any | None:
    """The last checker when it has a ``band`` (a guard asked about uncertain verdicts only),
    else None (every checker asked in turn)."""
    last = checkers[-1] if checkers else None
    return last if len(checkers) > 1 and getattr(last, "band", None) is not None else None


def apply_second_look(
    second: Any,
    items: list[str],
    verdicts: list[Verdict | None],
    best: list[Verdict | None],
    pending: list[int],
) -> list[int]:
    """Let ``second`` decide every text whose first-stage verdict (a refusal in
    ``verdicts``, else the admitting ``best``) lies within ``second.band`` of the threshold it
    was compared with; updates both lists in place and returns the admitted indices."""
    band = float(getattr(second, "band", 0.0))
    admitted = set(pending)

    def first(i: int) -> Verdict | None:
        return best[i] if i in admitted else verdicts[i]

    unsure = [
        i
        for i in range(len(items))
        if (v := first(i)) is not None
        and v.threshold is not None
        and abs(v.score - v.threshold) < band
    ]
    if not unsure:
        return pending
    for i, v in zip(unsure, second.check([items[i] for i in unsure]), strict=True):
        old = first(i)
        assert old is not None and old.threshold is not None
        note = (
            f"; second look ({second.name}) because the classifier's score "
            f"{old.score:.2f} is within {band:.2f} of its threshold {old.threshold:.2f}"
        )
        if v.refused:
            verdicts[i] = v.model_copy(update={"reason": v.reason + note})
            admitted.discard(i)
        else:
            verdicts[i] = None
            best[i] = v.model_copy(update={"reason": v.reason + note})
            admitted.add(i)
    return sorted(admitted)
