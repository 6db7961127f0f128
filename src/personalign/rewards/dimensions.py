"""Style dimensions: measurable scores in [0, 1] that user weights range over.

Each dimension is a pure function ``str -> float`` in [0, 1], higher meaning *more* of the
dimension, defined below. They follow Personalized Soups' idea of a few named axes
(expertise, informativeness, style) on which users differ; a user's reward is the weighted
sum :func:`weighted_reward`.

==============  ================================================================================
conciseness     ``100 / (100 + words)``: 1 for an empty reply, 0.5 at 100 words, 0.2 at 400.
readability     Flesch reading ease (``textstat``, syllables from the bundled CMU dictionary)
                clipped to [0, 100] and divided by 100: high for short sentences of short words
                (a low reading grade), low for dense technical prose. 0 for a text with no word.
warmth          VADER sentiment (``vaderSentiment``): ``(compound + 1) / 2``, 0.5 is neutral.
structure       ``min(1, (list_items + 2 * headings) / 6)``: list items are lines starting with
                ``-``, ``*``, ``+``, ``•`` or ``1.``/``1)``; headings are Markdown ``#`` lines,
                lines that are all bold (``**Title**``) and short lines ending with ``:``.
formality       ``sigmoid(10 * (long_words - 0.22) - 25 * informal)``: ``long_words`` is the
                share of words of 7+ letters, ``informal`` the share of informal markers among
                words (contractions, exclamation marks, emoji, chat words such as ``hey``,
                ``gonna``, ``lol``, ``awesome``).
==============  ================================================================================
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping
from functools import lru_cache
from typing import Any, Literal, get_args

from personalign.errors import ValidationError

Dimension = Literal["conciseness", "readability", "warmth", "structure", "formality"]
DIMENSION_NAMES: tuple[Dimension, ...] = get_args(Dimension)

_WORD = re.compile(r"[A-Za-z][A-Za-z'’-]*|\d+")
_LIST_ITEM = re.compile(r"^\s*(?:[-*+•]|\d{1,3}[.)])\s+\S")
_MD_HEADING = re.compile(r"^\s{0,3}#{1,6}\s+\S")
_BOLD_LINE = re.compile(r"^\s*\*\*[^*]{1,80}\*\*:?\s*$")
_CONTRACTION = re.compile(r"\b\w+(?:n't|'m|'re|'ll|'ve|'d|’m|’re|’ll|’ve|’d|n’t)\b", re.I)
_EMOJI = re.compile("[\U0001f300-\U0001faff\u2600-\u27bf]")
_CHAT_WORDS = frozenset(
    {"hey", "hi", "hello", "yeah", "yep", "nope", "gonna", "wanna", "gotta", "kinda", "sorta"}
    | {"lol", "omg", "btw", "cool", "awesome", "ok", "okay", "stuff", "guys", "dude", "wow"}
    | {"haha", "super", "totally", "pretty", "yay", "oops", "ugh"}
)


def _words(text: str) -> list[str]:
    return _WORD.findall(text)


def conciseness(text: str) -> float:
    """``100 / (100 + words)``: shorter replies score higher (1 for an empty reply)."""
    return 100.0 / (100.0 + len(_words(text)))


@lru_cache(maxsize=1)
def _textstat() -> Any:
    import textstat

    return textstat


def readability(text: str) -> float:
    """Flesch reading ease / 100, clipped to [0, 1]; 0 when the text has no word."""
    if not _words(text):
        return 0.0
    ease = float(_textstat().flesch_reading_ease(text))
    return min(1.0, max(0.0, ease / 100.0))


@lru_cache(maxsize=1)
def _vader() -> Any:
    from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

    return SentimentIntensityAnalyzer()


def warmth(text: str) -> float:
    """VADER compound sentiment mapped to [0, 1]: ``(compound + 1) / 2`` (0.5 is neutral)."""
    compound = float(_vader().polarity_scores(text)["compound"])
    return min(1.0, max(0.0, (compound + 1.0) / 2.0))


def _is_heading(line: str) -> bool:
    s = line.strip()
    if _MD_HEADING.match(line) or _BOLD_LINE.match(line):
        return True
    return 0 < len(s) <= 60 and s.endswith(":") and not _LIST_ITEM.match(line)


def structure(text: str) -> float:
    """``min(1, (list_items + 2 * headings) / 6)`` over the lines of ``text``."""
    lines = text.splitlines()
    items = sum(1 for ln in lines if _LIST_ITEM.match(ln))
    headings = sum(1 for ln in lines if _is_heading(ln))
    return min(1.0, (items + 2 * headings) / 6.0)


def formality(text: str) -> float:
    """``sigmoid(10 * (long_words - 0.22) - 25 * informal)`` (see the module table)."""
    words = _words(text)
    if not words:
        return 0.5
    n = len(words)
    long_share = sum(1 for w in words if len(w) >= 7) / n
    informal = (
        len(_CONTRACTION.findall(text))
        + text.count("!")
        + len(_EMOJI.findall(text))
        + sum(1 for w in words if w.lower() in _CHAT_WORDS)
    ) / n
    return 1.0 / (1.0 + math.exp(-(10.0 * (long_share - 0.22) - 25.0 * informal)))


DIMENSIONS: Mapping[Dimension, Callable[[str], float]] = {
    "conciseness": conciseness,
    "readability": readability,
    "warmth": warmth,
    "structure": structure,
    "formality": formality,
}
"""Every dimension's scoring function, keyed by name."""


def dimension_scores(text: str) -> dict[Dimension, float]:
    """All dimension scores of ``text``, each in [0, 1]."""
    return {name: fn(text) for name, fn in DIMENSIONS.items()}


def weighted_reward(
    text: str,
    weights: Mapping[str, float],
    *,
    floors: Mapping[str, float] | None = None,
    extra: Mapping[str, float] | None = None,
) -> float:
    """The user's reward for ``text``: ``sum_k w[k] * score[k]`` in [0, 1].

    ``weights`` range over dimension names; ``w`` is :func:`normalize_weights` of them with
    ``floors``. ``extra`` holds scores in [0, 1] of objectives that are not dimensions (a
    safety score, later), named in ``weights`` or ``floors``.
    """
    from personalign.rewards.weights import normalize_weights

    w = normalize_weights(weights, floors)
    extra = dict(extra or {})
    total = 0.0
    for name, wk in w.items():
        if name in extra:
            score = extra[name]
        elif name in DIMENSIONS:
            score = DIMENSIONS[name](text)  # type: ignore[index]
        else:
            raise ValidationError(
                f"unknown objective {name!r}: use one of {DIMENSION_NAMES} or give its score "
                "in extra="
            )
        total += wk * score
    return total
