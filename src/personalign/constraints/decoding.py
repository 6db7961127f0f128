"""What a decoding loop can enforce token by token: :func:`decoding_form` (characters and
words no token may produce, a token budget)."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from personalign.constraints.core import Constraint


@dataclass(frozen=True)
class DecodingForm:
    """Token-level limits a local decoding loop applies: no token may contain a character of
    ``banned_chars`` or spell a word of ``banned_words`` (a whole token, case and leading
    space ignored); ``max_new_tokens`` caps the reply (``None``: unchanged)."""

    banned_chars: str = ""
    banned_words: tuple[str, ...] = ()
    max_new_tokens: int | None = None

    def __bool__(self) -> bool:
        return bool(self.banned_chars or self.banned_words or self.max_new_tokens)


def decoding_form(constraints: Iterable[Constraint]) -> DecodingForm:
    """The part of ``constraints`` a decoding loop enforces (the rest is verified and
    repaired after): commas, words to avoid, and a token budget for word limits (about two
    tokens a word, so that a reply is never cut before its sentence ends)."""
    chars, words, budget = "", [], None
    for c in constraints:
        if c.kind == "no_commas":
            chars += ","
        elif c.kind == "avoid_words":
            for w in c.value or []:  # type: ignore[union-attr]
                words += [w, w + "s"] if not w.endswith("s") else [w]
        elif c.kind == "max_words":
            budget = int(2 * int(c.value) + 16)  # type: ignore[arg-type]
        elif c.kind == "max_sentences":
            budget = min(budget or 10**6, 48 * int(c.value) + 16)  # type: ignore[arg-type]
    return DecodingForm(chars, tuple(dict.fromkeys(words)), budget)
