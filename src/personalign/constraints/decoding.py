"""What a decoding loop can enforce token by token: :func:`decoding_form` (characters and
words no token may produce, a token budget, a JSON Schema)."""

from __future__ import annotations

import json
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
    json_schema: str | None = None
    """A JSON answer: the constraint's schema (an API's response_format), else any object."""

    def __bool__(self) -> bool:
        return bool(
            self.banned_chars or self.banned_words or self.max_new_tokens or self.json_schema
        )


def decoding_form(constraints: Iterable[Constraint]) -> DecodingForm:
    """The part of ``constraints`` a decoding loop enforces (the rest is verified and
    repaired after): commas, words to avoid, a JSON answer (masked by the grammar of
    :attr:`GenerationOptions.json_schema`), and a token budget for word limits (about two
    tokens a word, so that a reply is never cut before its sentence ends)."""
    chars, words, budget, schema = "", [], None, None
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
        elif c.kind == "json":
            schema = json.dumps(c.value) if isinstance(c.value, dict) else '{"type": "object"}'
    return DecodingForm(chars, tuple(dict.fromkeys(words)), budget, schema)
