"""The constraint types: the kinds and their slots, :class:`Constraint`, a user's
:class:`ConstraintSet` (one per slot, the newest wins), :func:`describe` (what a constraint
asks, in the system's words) and how constraints are kept in a preference's ``meta``
(:func:`to_meta`, :func:`from_meta`)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, get_args

from pydantic import BaseModel, ConfigDict, Field

from personalign.errors import ValidationError

Kind = Literal[
    "lowercase",
    "uppercase",
    "no_commas",
    "max_words",
    "max_sentences",
    "bullets",
    "numbered",
    "title",
    "start_phrase",
    "end_phrase",
    "postscript",
    "json",
    "quotation",
    "language",
    "avoid_words",
]
KINDS: tuple[Kind, ...] = get_args(Kind)

SLOTS: dict[Kind, str] = {
    "lowercase": "case",
    "uppercase": "case",
    "no_commas": "commas",
    "max_words": "length",
    "max_sentences": "sentences",
    "bullets": "layout",
    "numbered": "layout",
    "json": "wrap",
    "quotation": "wrap",
    "title": "title",
    "start_phrase": "start",
    "end_phrase": "end",
    "postscript": "postscript",
    "language": "language",
    "avoid_words": "avoid",
}
"""Constraints in one slot exclude each other: the newest preference's wins."""

LANGUAGES: dict[str, str] = {
    "english": "en",
    "french": "fr",
    "spanish": "es",
    "german": "de",
    "italian": "it",
    "portuguese": "pt",
    "dutch": "nl",
    "swedish": "sv",
    "polish": "pl",
    "turkish": "tr",
    "russian": "ru",
    "japanese": "ja",
    "korean": "ko",
    "chinese": "zh",
    "hindi": "hi",
    "arabic": "ar",
    "finnish": "fi",
    "danish": "da",
    "norwegian": "no",
    "greek": "el",
    "czech": "cs",
    "indonesian": "id",
    "vietnamese": "vi",
}
LANGUAGE_NAMES = {code: name.title() for name, code in LANGUAGES.items()}


class Constraint(BaseModel):
    """One checkable requirement on a reply.

    ``value``: the limit for ``max_words``/``max_sentences`` (the most allowed), the item count
    for ``bullets``/``numbered`` (exact), the phrase for ``start_phrase``/``end_phrase``, the
    marker for ``postscript`` ("P.S."), the ISO 639-1 code for ``language``, the words for
    ``avoid_words``; ``None`` for the others. ``phrase``: the words it was compiled from.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: Kind
    value: int | str | list[str] | None = None
    phrase: str = ""
    source_id: str | None = Field(default=None, description="the preference it came from")

    @property
    def slot(self) -> str:
        return SLOTS[self.kind]


STYLE_KINDS = frozenset(k for k in KINDS if k != "avoid_words")
"""Constraints on how an answer is written (not on what it may contain)."""


# --------------------------------------------------------------------------------------------
# sets of constraints: one per slot
# --------------------------------------------------------------------------------------------


@dataclass
class ConstraintSet:
    """The constraints that apply to a reply: one per slot, the newest wins; words to avoid
    from every preference. Build with :meth:`from_lists` (oldest first)."""

    items: list[Constraint] = field(default_factory=list)

    @classmethod
    def from_lists(cls, lists: Iterable[Sequence[Constraint]]) -> ConstraintSet:
        by_slot: dict[str, Constraint] = {}
        avoid: dict[str, None] = {}
        sources: list[str] = []
        phrases: list[str] = []
        for group in lists:  # oldest first: later ones replace earlier ones in their slot
            for c in group:
                if c.kind == "avoid_words":
                    avoid.update(dict.fromkeys(c.value or []))  # type: ignore[arg-type]
                    if c.source_id:
                        sources.append(c.source_id)
                    phrases.append(c.phrase)
                else:
                    by_slot[c.slot] = c
        items = list(by_slot.values())
        if "wrap" in by_slot and by_slot["wrap"].kind == "json":
            items = [c for c in items if c.slot not in ("layout", "title")]
        if avoid:
            items.append(
                Constraint(
                    kind="avoid_words",
                    value=list(avoid),
                    phrase="; ".join(p for p in phrases if p)[:200],
                    source_id=",".join(dict.fromkeys(sources)) or None,
                )
            )
        return cls(items)

    def __bool__(self) -> bool:
        return bool(self.items)

    def __iter__(self) -> Any:
        return iter(self.items)

    def get(self, kind: Kind) -> Constraint | None:
        return next((c for c in self.items if c.kind == kind), None)

    def describe(self) -> list[str]:
        return [describe(c) for c in self.items]


def describe(c: Constraint) -> str:
    """What ``c`` asks, in one line written by the system (for the prompt and ``/why``)."""
    v = c.value
    match c.kind:
        case "lowercase":
            return "Write the whole answer in lowercase letters only."
        case "uppercase":
            return "Write the whole answer in CAPITAL LETTERS only."
        case "no_commas":
            return "Do not use any commas."
        case "max_words":
            return f"Keep the answer under {int(v) + 1} words."  # type: ignore[arg-type]
        case "max_sentences":
            return f"Answer in at most {v} sentence{'s' if v != 1 else ''}."
        case "bullets":
            return f"Answer as exactly {v} bullet points, each line starting with '* '."
        case "numbered":
            return f"Answer as a numbered list of exactly {v} items."
        case "title":
            return "Start with a title in double angular brackets, like <<Title>>."
        case "start_phrase":
            return f'Start the answer with "{v}".'
        case "end_phrase":
            return f'End the answer with the exact phrase "{v}".'
        case "postscript":
            return f"Add a postscript at the end starting with {v}"
        case "json":  # value: a JSON Schema (an API's response_format), when one is set
            return (
                f"Answer in valid JSON matching this JSON Schema: {v}"
                if v
                else ("Answer in valid JSON.")
            )
        case "quotation":
            return "Wrap the whole answer in double quotation marks."
        case "language":
            return f"Answer in {LANGUAGE_NAMES.get(str(v), str(v))} only."
        case "avoid_words":
            words = list(v or [])  # type: ignore[arg-type]
            shown = ", ".join(words[:8]) + (", ..." if len(words) > 8 else "")
            return f"Never mention or suggest: {shown}."
    raise ValidationError(f"unknown constraint kind {c.kind!r}")  # pragma: no cover


def to_meta(constraints: Sequence[Constraint], *, text: str) -> dict[str, Any]:
    """How compiled constraints are kept in a preference's ``meta["constraints"]``: the items,
    and the text they were compiled from (a new text is compiled again, an edit is kept)."""
    return {
        "compiled_from": text,
        "items": [c.model_dump(mode="json", exclude={"source_id"}) for c in constraints],
    }


def from_meta(meta: dict[str, Any] | None, *, text: str) -> list[Constraint] | None:
    """The constraints stored in ``meta`` for ``text``; ``None`` when there are none for this
    text (never compiled, or compiled from an older text and not edited by the user)."""
    entry = (meta or {}).get("constraints")
    if not isinstance(entry, dict):
        return None
    if entry.get("compiled_from") != text and not entry.get("edited"):
        return None
    try:
        return [Constraint.model_validate(x) for x in entry.get("items", [])]
    except ValueError:
        return None
