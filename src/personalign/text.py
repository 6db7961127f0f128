"""Plain-text helpers that every layer may use (no personalign imports: low in the import graph).

:func:`split_sentences` is the one sentence splitter of the package: the memory's extractor,
the reward models, the constraint verifier and repairs, the reply picker, the quality floor
and the injection detector all cut text with it (each with the options it was built with).
"""

from __future__ import annotations

import re
from functools import lru_cache

SENTENCE_ENDS = ".!?"
"""The marks that end a sentence (when white space follows them)."""
SENTENCE_OPENERS = "\"'(A-Z0-9"
"""What a sentence opens with, as a regex character class body (a capital, a digit, a quote or
an opening parenthesis): with ``opens=SENTENCE_OPENERS`` "e.g. this" stays one sentence."""


@lru_cache(maxsize=32)
def _splitter(ends: str, opens: str, lines: bool) -> re.Pattern[str]:
    pattern = rf"(?<=[{re.escape(ends)}])\s+"
    if opens:
        pattern += rf"(?=[{opens}])"
    if lines:
        pattern += r"|\n+"
    return re.compile(pattern)


def split_sentences(
    text: str,
    *,
    ends: str = SENTENCE_ENDS,
    opens: str = "",
    lines: bool = True,
    strip: str | None = None,
) -> list[str]:
    """The sentences of ``text``, in order, each stripped (of white space, or of the characters
    ``strip``), the empty ones dropped.

    A sentence ends at white space that follows one of ``ends`` and, when ``opens`` is given
    (a regex character class body such as :data:`SENTENCE_OPENERS`), comes before one of
    those characters; with ``lines`` every line break ends one too.
    """
    out: list[str] = []
    for part in _splitter(ends, opens, lines).split(text):
        part = part.strip(strip)
        if part:
            out.append(part)
    return out
